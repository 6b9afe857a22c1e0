"""Run counts that always add up: events in = accepted + duplicates + dead letters.

>>> counts = RunCounts()
>>> counts.add("events_in", 3); counts.add("accepted"); counts.add("duplicates")
>>> counts.add_dead_letter("late")
>>> counts.balanced()
True
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RunCounts:
    """Mergeable counters of one run (or one worker)."""

    totals: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.totals[name] += n

    def add_dead_letter(self, reason: str, n: int = 1) -> None:
        self.dead_letters[reason] += n

    def add_change(self, segment: str, change: str, n: int = 1) -> None:
        self.changes[(segment, change)] += n

    def merge(self, other: RunCounts) -> None:
        self.totals.update(other.totals)
        self.dead_letters.update(other.dead_letters)
        self.changes.update(other.changes)

    def minus(self, earlier: RunCounts) -> RunCounts:
        """What was counted since ``earlier`` (a snapshot of the same counters)."""
        return RunCounts(
            self.totals - earlier.totals, self.dead_letters - earlier.dead_letters, self.changes - earlier.changes
        )

    def balanced(self) -> bool:
        """Whether every event is accounted for."""
        out = self.totals["accepted"] + self.totals["duplicates"] + sum(self.dead_letters.values())
        return self.totals["events_in"] == out

    def summary(
        self,
        seconds: float,
        engine: str,
        rules_version: str,
        models: dict[str, Any] | None = None,
        model_updates: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """The run summary (Avro ``RunSummary``); ``models``: per task, the model and its validation;
        ``model_updates``: labels learnt per task over every worker (by default ``models``' own)."""
        by_segment: dict[str, dict[str, int]] = {}
        for (segment, change), n in sorted(self.changes.items()):
            by_segment.setdefault(segment, {"entered": 0, "exited": 0})[change] = n
        events_in = self.totals["events_in"]
        return {
            "events_in": events_in,
            "accepted": self.totals["accepted"],
            "duplicates": self.totals["duplicates"],
            "no_consent": self.totals["no_consent"],  # of the accepted: not profiled (transforms.privacy)
            "forgets": self.totals["forgets"],
            "consent_revocations": self.totals["consent_revocations"],
            "dead_letters": dict(sorted(self.dead_letters.items())),
            "customers": self.totals["customers"],
            "segment_changes": by_segment,
            "seconds": round(seconds, 3),
            "events_per_second": round(events_in / seconds, 1) if seconds > 0 else 0.0,
            "engine": engine,
            "rules_version": rules_version,
            "models": models,
            "model_updates": model_updates
            if model_updates is not None
            else {task: figures["n_updates"] for task, figures in (models or {}).items()},
        }
