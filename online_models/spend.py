"""Delayed values in event time: feature snapshots waiting for the spend that follows them (lifetime value).

A customer's :class:`PendingSpend` holds feature snapshots taken at event times ``t``; the value of a
snapshot is the customer's net spend in ``(t, t + horizon]`` (purchases less refunds, at least 0),
known once the horizon has passed: :meth:`PendingSpend.due` with a watermark past ``t + horizon``
returns it as an :class:`~online_models.labels.Example` whose ``label`` is that amount. Spend is added
as it happens (:meth:`PendingSpend.on_spend`), to every snapshot whose horizon it falls in.

The bound rule is that of :class:`~online_models.labels.PendingLabels`: at most one snapshot per
bucket of ``snapshot_every_ms`` and ``max_pending`` waiting. To merge two customers (identity
stitching) each side remembers its spend of the last horizon per millisecond, so a snapshot of one
side gets the other side's spend inside its horizon.

>>> DAY = 86_400_000
>>> p = PendingSpend(horizon_ms=30 * DAY, snapshot_every_ms=DAY)
>>> p.take(0, {"orders": 1.0}), p.take(DAY, {"orders": 1.0})
(True, True)
>>> p.on_spend(10 * DAY, 25.0); p.on_spend(30 * DAY + 1, 5.0)
>>> [(e.label, e.snapshot_ts // DAY) for e in p.due(31 * DAY)]
[(25.0, 0)]
>>> [(e.label, e.snapshot_ts // DAY) for e in p.due(32 * DAY)]
[(30.0, 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from online_models.labels import DAY_MS, Example

LTV = "ltv"


@dataclass(slots=True)
class PendingSpend:
    """One customer's snapshots waiting for their horizon's spend (see the module docstring).

    ``snapshots`` holds ``[ts, features, spend so far]`` sorted by ``ts``; ``spent`` the customer's
    net spend per millisecond within the last horizon.
    """

    horizon_ms: int = 90 * DAY_MS
    snapshot_every_ms: int = 7 * DAY_MS
    max_pending: int | None = None
    snapshots: list[list] = field(default_factory=list)
    last_bucket: int | None = None
    spent: dict[int, float] = field(default_factory=dict)
    dropped: int = 0

    def __post_init__(self) -> None:
        if self.snapshot_every_ms <= 0 or self.horizon_ms < self.snapshot_every_ms:
            raise ValueError("the horizon must be at least snapshot_every_ms, which must be positive")
        if self.max_pending is None:
            self.max_pending = self.horizon_ms // self.snapshot_every_ms + 1

    def __len__(self) -> int:
        return len(self.snapshots)

    def wants(self, snapshot_ts: int) -> bool:
        """Whether :meth:`take` at ``snapshot_ts`` would look at the features (a new bucket)."""
        return self.last_bucket is None or snapshot_ts // self.snapshot_every_ms > self.last_bucket

    def take(self, snapshot_ts: int, features: dict[str, float]) -> bool:
        """Keep a copy of ``features`` as of ``snapshot_ts`` if the bound rule allows; True if kept.
        Spend already remembered after ``snapshot_ts`` (an out-of-order snapshot) counts for it."""
        bucket = snapshot_ts // self.snapshot_every_ms
        if self.last_bucket is not None and bucket <= self.last_bucket:
            return False
        assert self.max_pending is not None
        self.last_bucket = bucket
        if len(self.snapshots) >= self.max_pending:
            self.dropped += 1
            return False
        after = sum(v for ts, v in self.spent.items() if snapshot_ts < ts <= snapshot_ts + self.horizon_ms)
        self.snapshots.append([snapshot_ts, dict(features), after])
        return True

    def on_spend(self, ts: int, amount: float) -> None:
        """Net spend ``amount`` at ``ts`` (negative: a refund), for every snapshot whose horizon it is in."""
        if not amount:
            return
        self.spent[ts] = self.spent.get(ts, 0.0) + amount
        for snapshot in self.snapshots:
            if snapshot[0] < ts <= snapshot[0] + self.horizon_ms:
                snapshot[2] += amount
        self._prune(ts)

    def due(self, now: int) -> list[Example]:
        """The snapshots whose horizon ended before ``now`` (the watermark), valued."""
        cut = 0
        while cut < len(self.snapshots) and self.snapshots[cut][0] + self.horizon_ms < now:
            cut += 1
        resolved, self.snapshots = self.snapshots[:cut], self.snapshots[cut:]
        return [Example(LTV, f, max(0.0, value), ts, ts + self.horizon_ms) for ts, f, value in resolved]

    def next_due(self) -> int | None:
        """The smallest ``now`` at which :meth:`due` values something, or None when nothing waits."""
        return self.snapshots[0][0] + self.horizon_ms + 1 if self.snapshots else None

    def merge(self, other: PendingSpend) -> list[Example]:
        """Absorb ``other`` (same settings): each side's snapshots also get the other side's spend
        in their horizon; then per bucket the earliest, then the earliest ``max_pending``."""
        if (other.horizon_ms, other.snapshot_every_ms) != (self.horizon_ms, self.snapshot_every_ms):
            raise ValueError("cannot merge pending spend of different settings")
        combined: dict[int, list] = {}
        for mine, theirs in ((self, other), (other, self)):
            for ts, features, value in mine.snapshots:
                value += sum(v for at, v in theirs.spent.items() if ts < at <= ts + self.horizon_ms)
                bucket = ts // self.snapshot_every_ms
                if bucket not in combined or ts < combined[bucket][0]:
                    combined[bucket] = [ts, features, value]
        assert self.max_pending is not None
        ordered = sorted(combined.values(), key=lambda snapshot: snapshot[0])
        self.dropped += other.dropped + max(0, len(ordered) - self.max_pending)
        self.snapshots = ordered[: self.max_pending]
        buckets = [b for b in (self.last_bucket, other.last_bucket) if b is not None]
        self.last_bucket = max(buckets) if buckets else None
        for ts, value in other.spent.items():
            self.spent[ts] = self.spent.get(ts, 0.0) + value
        if self.spent:
            self._prune(max(self.spent))
        return []

    def _prune(self, latest: int) -> None:
        """Forget spend no snapshot taken from now on can reach (older than a horizon before ``latest``)."""
        horizon = latest - self.horizon_ms
        if min(self.spent) < horizon:
            self.spent = {ts: v for ts, v in self.spent.items() if ts >= horizon}
