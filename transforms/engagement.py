"""The engagement score: recent, weighty activity on a 0..100 scale.

Each event adds its type's weight ``w``; every weight halves each ``half_life`` after its event::

    points(now) = sum(w_e * 2 ** (-(now - ts_e) / half_life))        over the customer's events
    score(now)  = 100 * (1 - exp(-points(now) / saturation))

So a customer with ``saturation`` points scores 63, one with none scores 0, and with no new events
the score falls smoothly. State is two numbers (points at a reference time), whatever the history.
Points are capped at :data:`MAX_POINTS` (the largest double; the score there is 100): with finite
weights they never overflow to infinity, and decay never turns them into NaN.

>>> engagement = EngagementModel(EngagementConfig(weights={"purchase": 10.0}, half_life_ms=1000, saturation=10.0))
>>> points = engagement.create()
>>> engagement.add(points, "purchase", ts=0)
>>> round(engagement.score(points, now=0), 1), round(engagement.score(points, now=1000), 1)
(63.2, 39.3)
>>> engagement.falls_below(points, 50.0, now=0)  # the first millisecond with a score under 50
529
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

DEFAULT_WEIGHTS = {
    "page_view": 1.0,
    "product_view": 2.0,
    "add_to_cart": 5.0,
    "remove_from_cart": 0.0,
    "checkout": 8.0,
    "login": 2.0,
    "identify": 1.0,
    "purchase": 10.0,
    "refund": 0.0,
}
MAX_POINTS = sys.float_info.max  # points never exceed it (a sum past it would be infinite)


@dataclass(frozen=True)
class EngagementConfig:
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    half_life_ms: int = 7 * 86_400_000
    saturation: float = 25.0


@dataclass(slots=True)
class Points:
    """Decayed points as of ``at`` (None: no weighted event yet)."""

    value: float = 0.0
    at: int | None = None


class EngagementModel:
    """The score's formula over :class:`Points` values: create, add, merge, score."""

    def __init__(self, config: EngagementConfig) -> None:
        self.config = config

    def create(self) -> Points:
        return Points()

    def _decay(self, points: Points, to: int) -> float:
        if points.at is None:
            return 0.0
        return points.value * 2.0 ** (-(to - points.at) / self.config.half_life_ms)

    def add(self, points: Points, kind: str, ts: int) -> None:
        """Add one event of type ``kind`` at ``ts`` (any order; the reference time only moves forward)."""
        weight = self.config.weights.get(kind, 0.0)
        if not weight:
            return
        if points.at is None or ts >= points.at:
            points.value, points.at = min(self._decay(points, ts) + weight, MAX_POINTS), ts
        else:
            points.value = min(
                points.value + weight * 2.0 ** (-(points.at - ts) / self.config.half_life_ms), MAX_POINTS
            )

    def merge(self, into: Points, other: Points) -> Points:
        if other.at is None:
            return into
        if into.at is None:
            into.value, into.at = other.value, other.at
            return into
        at = max(into.at, other.at)
        into.value, into.at = min(self._decay(into, at) + self._decay(other, at), MAX_POINTS), at
        return into

    def points(self, points: Points, now: int) -> float:
        """Points at ``now`` (no later than events already added: the score of the past is not kept)."""
        return self._decay(points, max(now, points.at or now))

    def score(self, points: Points, now: int) -> float:
        return 100.0 * (1.0 - math.exp(-self.points(points, now) / self.config.saturation))

    def falls_below(self, points: Points, threshold: float, now: int) -> int | None:
        """The first millisecond after ``now`` at which the score is under ``threshold``; None when it
        already is (with no new event it only falls) or never will be.

        The formula gives an estimate; a bracketing search around it makes the answer exact for the
        floating-point score (the score never rises with time, so the search is sound)."""
        if points.at is None or threshold <= 0.0 or self.score(points, now) < threshold:
            return None
        estimate = now + 1
        needed = -self.config.saturation * math.log1p(-threshold / 100.0) if threshold < 100.0 else 0.0
        current = self.points(points, now)
        if needed > 0.0 and current > needed:  # points at the threshold, then when they decay to it
            halvings = math.log2(current) - math.log2(needed)  # not log2(current / needed): that may overflow
            estimate = max(now + 1, math.floor(now + self.config.half_life_ms * halvings))
        low = estimate - 1 if estimate - 1 > now and self.score(points, estimate - 1) >= threshold else now
        step, high = 1, estimate
        while self.score(points, high) >= threshold:  # widen until the score is under the threshold
            low, high, step = high, high + step, step * 2
            if step > 2**62:
                return None
        while high - low > 1:  # invariant: score(low) >= threshold > score(high)
            middle = (low + high) // 2
            if self.score(points, middle) >= threshold:
                low = middle
            else:
                high = middle
        return high
