"""Delayed labels in event time: feature snapshots waiting for the future that labels them.

A customer's :class:`PendingLabels` for one task holds feature snapshots taken at event times
``t``. The label of a snapshot depends only on the customer's purchases in ``(t, t + horizon]``:

=============  =======================================  =========================================
task           first purchase in ``(t, t + horizon]``   no purchase by ``t + horizon``
=============  =======================================  =========================================
``propensity`` positive (bought within the horizon)     negative, once ``due(now)`` with
               at that purchase                          ``now > t + horizon``
``churn``      negative (came back) at that purchase    positive (churned), once ``due(now)``
               (default horizon 90 days)                 with ``now > t + horizon``
=============  =======================================  =========================================

(default horizons: ``propensity_days`` 14, ``churn_days`` 90). A purchase at exactly ``t`` does not
label the snapshot at ``t`` (the snapshot is taken after the event that triggered it), one at
exactly ``t + horizon`` does. Each snapshot is labelled exactly once, by :meth:`PendingLabels.on_purchase`,
:meth:`PendingLabels.due` or :meth:`PendingLabels.merge`, and then forgotten.

**Bound rule.** Event time is cut into buckets of ``snapshot_every_ms`` (default one day, bucket
``ts // snapshot_every_ms``). :meth:`~PendingLabels.take` keeps a snapshot only if its bucket is
later than the bucket of every snapshot taken before (so at most one snapshot per bucket, the
first one) and fewer than ``max_pending`` snapshots wait (default ``horizon // snapshot_every + 1``,
what a customer snapshotting every bucket holds when ``due`` runs on time); a snapshot refused
because the customer is full still uses up its bucket and is counted in ``dropped``. A snapshot
older than a purchase already seen inside its horizon is *late* (its label is already decided, but
by a purchase that came first): it is refused and counted in ``late``.
:meth:`~PendingLabels.merge` keeps, per bucket, the earliest snapshot of either side, then the
earliest ``max_pending``: the same snapshots that taking both sides' snapshots into one in time
order would keep.

``due`` must be called with the watermark (no earlier event can still arrive); :meth:`next_due`
gives the event time at which to set a timer. To label late snapshots and merged snapshots
correctly the value also remembers, per bucket of the last horizon, the earliest and latest
purchase (at most ``2 * (horizon // snapshot_every + 3)`` integers).

>>> DAY = 86_400_000
>>> p = PendingLabels("propensity")
>>> p.take(0, {"orders": 1.0}), p.take(3_600_000, {"orders": 1.0}), p.take(DAY, {"orders": 2.0})
(True, False, True)
>>> p.next_due() == 14 * DAY + 1
True
>>> [(e.label, e.snapshot_ts // DAY, e.label_ts // DAY) for e in p.on_purchase(10 * DAY)]
[(True, 0, 10), (True, 1, 10)]
>>> c = PendingLabels("churn")
>>> c.take(0, {"orders": 1.0})
True
>>> c.due(90 * DAY), [(e.label, e.label_ts // DAY) for e in c.due(90 * DAY + 1)]
([], [(True, 90)])
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import NamedTuple

DAY_MS = 86_400_000
DEFAULT_DAYS = {"propensity": 14, "churn": 90}
TASKS = tuple(DEFAULT_DAYS)


class Example(NamedTuple):
    """A labelled example: the features at ``snapshot_ts`` and the label known at ``label_ts``."""

    task: str
    features: dict[str, float]
    label: bool
    snapshot_ts: int
    label_ts: int


@dataclass(slots=True)
class PendingLabels:
    """One customer's unlabelled snapshots for one task (see the module docstring for the rules).

    A plain value: compare, pickle, copy; all times are event-time epoch milliseconds given by the
    caller.
    """

    task: str
    horizon_ms: int | None = None
    snapshot_every_ms: int = DAY_MS
    max_pending: int | None = None
    snapshots: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # sorted by ts
    last_bucket: int | None = None
    purchases: dict[int, tuple[int, int]] = field(default_factory=dict)  # bucket -> (earliest, latest)
    dropped: int = 0
    late: int = 0

    def __post_init__(self) -> None:
        if self.task not in DEFAULT_DAYS:
            raise ValueError(f"unknown task {self.task!r}; known tasks: {', '.join(TASKS)}")
        if self.horizon_ms is None:
            self.horizon_ms = DEFAULT_DAYS[self.task] * DAY_MS
        if self.snapshot_every_ms <= 0:
            raise ValueError("snapshot_every_ms must be positive")
        if self.horizon_ms < self.snapshot_every_ms:
            raise ValueError("the horizon must be at least snapshot_every_ms")
        if self.max_pending is None:
            self.max_pending = self.horizon_ms // self.snapshot_every_ms + 1
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")

    @classmethod
    def for_task(
        cls, task: str, days: float | None = None, snapshot_every_ms: int = DAY_MS, max_pending: int | None = None
    ) -> PendingLabels:
        """Empty pendings for ``task`` with a horizon of ``days`` (default: the task's default)."""
        horizon = None if days is None else round(days * DAY_MS)
        return cls(task, horizon, snapshot_every_ms, max_pending)

    @property
    def _horizon(self) -> int:
        assert self.horizon_ms is not None
        return self.horizon_ms

    def __len__(self) -> int:
        return len(self.snapshots)

    def wants(self, snapshot_ts: int) -> bool:
        """Whether :meth:`take` at ``snapshot_ts`` would look at the features (a new bucket)."""
        return self.last_bucket is None or snapshot_ts // self.snapshot_every_ms > self.last_bucket

    def take(self, snapshot_ts: int, features: dict[str, float]) -> bool:
        """Keep a copy of ``features`` as of ``snapshot_ts`` if the bound rule allows; True if kept."""
        bucket = snapshot_ts // self.snapshot_every_ms
        if self.last_bucket is not None and bucket <= self.last_bucket:
            return False
        if self._first_purchase_in(snapshot_ts, snapshot_ts + self._horizon) is not None:
            self.late += 1
            return False
        assert self.max_pending is not None
        self.last_bucket = bucket
        if len(self.snapshots) >= self.max_pending:
            self.dropped += 1
            return False
        self.snapshots.append((snapshot_ts, dict(features)))
        return True

    def on_purchase(self, ts: int) -> list[Example]:
        """Label the snapshots this purchase at ``ts`` decides (those in ``[ts - horizon, ts)``)."""
        self._remember_purchase(ts)
        if not self.snapshots or self.snapshots[0][0] >= ts:  # sorted: nothing before the purchase waits
            return []
        examples: list[Example] = []
        kept: list[tuple[int, dict[str, float]]] = []
        for snapshot_ts, features in self.snapshots:
            if snapshot_ts < ts <= snapshot_ts + self._horizon:
                examples.append(Example(self.task, features, self.task == "propensity", snapshot_ts, ts))
            else:
                kept.append((snapshot_ts, features))
        self.snapshots = kept
        return examples

    def due(self, now: int) -> list[Example]:
        """Label the snapshots whose horizon ended before ``now`` (the watermark) without a purchase."""
        cut = 0
        while cut < len(self.snapshots) and self.snapshots[cut][0] + self._horizon < now:
            cut += 1
        if not cut:
            return []
        resolved, self.snapshots = self.snapshots[:cut], self.snapshots[cut:]
        label = self.task == "churn"
        return [Example(self.task, f, label, ts, ts + self._horizon) for ts, f in resolved]

    def next_due(self) -> int | None:
        """The smallest ``now`` at which :meth:`due` labels something, or None when nothing waits."""
        return self.snapshots[0][0] + self._horizon + 1 if self.snapshots else None

    def merge(self, other: PendingLabels) -> list[Example]:
        """Absorb ``other`` (same task and settings; e.g. an identity merge) into ``self``.

        Snapshots of one side that a purchase of the other side decides are labelled and returned;
        the rest combine under the bound rule (per bucket the earliest, then the earliest
        ``max_pending``; the ones cut are counted in ``dropped``).
        """
        if (other.task, other.horizon_ms, other.snapshot_every_ms) != (
            self.task,
            self.horizon_ms,
            self.snapshot_every_ms,
        ):
            raise ValueError("cannot merge pending labels of different tasks or settings")
        examples: list[Example] = []
        combined: dict[int, tuple[int, dict[str, float]]] = {}
        for mine, theirs in ((self, other), (other, self)):
            for snapshot_ts, features in mine.snapshots:
                purchase = theirs._first_purchase_in(snapshot_ts, snapshot_ts + self._horizon)
                if purchase is not None:
                    examples.append(Example(self.task, features, self.task == "propensity", snapshot_ts, purchase))
                    continue
                bucket = snapshot_ts // self.snapshot_every_ms
                if bucket not in combined or snapshot_ts < combined[bucket][0]:
                    combined[bucket] = (snapshot_ts, features)
        assert self.max_pending is not None
        ordered = sorted(combined.values(), key=lambda item: item[0])
        self.dropped += other.dropped + max(0, len(ordered) - self.max_pending)
        self.late += other.late
        self.snapshots = ordered[: self.max_pending]
        buckets = [b for b in (self.last_bucket, other.last_bucket) if b is not None]
        self.last_bucket = max(buckets) if buckets else None
        for bucket, (earliest, latest) in other.purchases.items():
            self._remember_bucket(bucket, earliest, latest)
        self._prune_purchases()
        examples.sort(key=lambda e: (e.snapshot_ts, e.label_ts))
        return examples

    def _remember_purchase(self, ts: int) -> None:
        bucket = ts // self.snapshot_every_ms
        known = self.purchases.get(bucket)
        if known is not None and known[0] <= ts <= known[1]:
            return  # inside what the bucket remembers (another line of the same order, say): no change
        self._remember_bucket(bucket, ts, ts)
        self._prune_purchases()

    def _remember_bucket(self, bucket: int, earliest: int, latest: int) -> None:
        known = self.purchases.get(bucket)
        if known is not None:
            earliest, latest = min(earliest, known[0]), max(latest, known[1])
        self.purchases[bucket] = (earliest, latest)

    def _prune_purchases(self) -> None:
        if not self.purchases:
            return
        keep_from = max(self.purchases) - self._horizon // self.snapshot_every_ms - 2
        for bucket in [b for b in self.purchases if b < keep_from]:
            del self.purchases[bucket]

    def _first_purchase_in(self, after: int, until: int) -> int | None:
        """A remembered purchase in ``(after, until]`` (the first one when the buckets tell), else None.

        Exact because the window is at least one bucket long: only its first bucket needs the
        latest purchase and only its last bucket the earliest.
        """
        if not self.purchases:
            return None
        buckets = sorted(self.purchases)
        first, last = after // self.snapshot_every_ms, until // self.snapshot_every_ms
        for index in range(bisect.bisect_left(buckets, first), len(buckets)):
            bucket = buckets[index]
            if bucket > last:
                break
            earliest, latest = self.purchases[bucket]
            if earliest > after and earliest <= until:
                return earliest
            if latest > after and latest <= until:
                return latest
        return None
