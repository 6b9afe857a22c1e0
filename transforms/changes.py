"""Segment-change events and their deterministic ids.

>>> change_id("user:1", "recent_buyer", "entered", 1) == change_id("user:1", "recent_buyer", "entered", 1)
True
"""

from __future__ import annotations

import hashlib
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
