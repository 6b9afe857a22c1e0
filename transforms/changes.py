"""Segment-change events and their deterministic ids.

>>> change_id("user:1", "recent_buyer", "entered", 1) == change_id("user:1", "recent_buyer", "entered", 1)
True
>>> merge = IdentityMerge.of("user:u1", ["anon:a"], "e7", 1_000)
>>> merge.to_dict()["absorbed"], merge.merge_id == IdentityMerge.of("user:u1", ["anon:a"], "e7", 1_000).merge_id
(['anon:a'], True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def change_id(customer_id: str, segment: str, change: str, seq: int) -> str:
    """Stable id of a change: the same input replayed yields the same id (``seq`` is deterministic)."""
    key = "\x1f".join((customer_id, segment, change, str(seq)))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """A customer entered or exited a segment (Avro ``SegmentChange``)."""

    change_id: str
    customer_id: str
    segment: str
    change: str  # entered | exited
    seq: int
    event_time: int
    reason: str  # rule | model | expiry | merge | forget | consent
    rules_version: str
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "change_id": self.change_id,
            "customer_id": self.customer_id,
            "segment": self.segment,
            "change": self.change,
            "seq": self.seq,
            "event_time": self.event_time,
            "reason": self.reason,
            "rules_version": self.rules_version,
            "scores": dict(self.scores),
        }


@dataclass(frozen=True, slots=True)
class IdentityMerge:
    """Customers ``absorbed`` became part of ``customer_id`` at an event (Avro ``IdentityMerge``).

    In ``--changes-out`` its line carries ``"kind": "identity_merge"`` (change lines have no ``kind``).
    """

    merge_id: str  # deterministic: a replay yields the same id
    customer_id: str  # the survivor
    absorbed: tuple[str, ...]
    event_id: str  # the event whose identifiers linked them
    event_time: int

    @classmethod
    def of(cls, customer_id: str, absorbed: Sequence[str], event_id: str, event_time: int) -> IdentityMerge:
        key = "\x1f".join((customer_id, *absorbed, event_id))
        merge_id = hashlib.sha256(key.encode()).hexdigest()[:32]
        return cls(merge_id, customer_id, tuple(absorbed), event_id, event_time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "merge_id": self.merge_id,
            "customer_id": self.customer_id,
            "absorbed": list(self.absorbed),
            "event_id": self.event_id,
            "event_time": self.event_time,
        }
