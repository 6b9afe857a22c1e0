"""RFM: recency, frequency and monetary quintile scores against the current population of buyers.

Each buyer sits in one bucket per dimension: recency by the hour of the last purchase, frequency by
the exact number of orders, monetary by net spend in logarithmic buckets of 1 % relative width (the
bucketing of DDSketch). :class:`Population` counts buyers per bucket. Unlike a classic quantile
sketch it supports removal, so a customer who buys again moves instead of counting twice: the
population is always the buyers' *current* values. A score is the customer's mid-rank in the
population, ``1 + floor(5 * (below + equal / 2) / buyers)``: 5 for the top fifth.

Error: two spends within 1 % of each other may share a bucket (and then a rank); the rank tables
are rebuilt after every ``max(100, 1 % of buyers)`` moves, so a score may miss that many recent
moves. 0 means "never bought". Any spend has a bucket: the largest double's is about 35,500; an
infinite spend (state saved before cleaning bounded amounts) shares it, and NaN counts as no spend.

>>> from transforms.features import Features
>>> population = Population()
>>> keys = [population.move(None, Features(last_at={"purchase": day * 86_400_000}, orders=day, spend=10.0 * day))
...         for day in range(1, 11)]
>>> population.scores(keys[-1]), population.scores(keys[0])
({'recency': 5, 'frequency': 5, 'monetary': 5}, {'recency': 1, 'frequency': 1, 'monetary': 1})
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

from transforms.features import Features

RFM_FEATURES = frozenset({"rfm.recency", "rfm.frequency", "rfm.monetary"})
DIMENSIONS = ("recency", "frequency", "monetary")
RfmKey = tuple[int, int, int]
_GAMMA = math.log((1 + 0.01) / (1 - 0.01))
_HOUR = 3_600_000
_NO_SCORES = dict.fromkeys(DIMENSIONS, 0)
_NO_SPEND = -(2**31)  # the monetary bucket of a spend <= 0
_TOP_SPEND = math.ceil(math.log(sys.float_info.max) / _GAMMA)  # the bucket of the largest double


def rfm_key(features: Features) -> RfmKey | None:
    """The buckets of a customer's current values; None before a first purchase."""
    last = features.last_at.get("purchase")
    if last is None:
        return None
    spend = features.spend
    if not spend > 0:  # also NaN
        monetary = _NO_SPEND
    elif spend == math.inf:  # math.ceil(inf) raises OverflowError
        monetary = _TOP_SPEND
    else:
        monetary = math.ceil(math.log(spend) / _GAMMA)
    return (last // _HOUR, features.orders, monetary)


@dataclass(slots=True)
class _Ranks:
    keys: list[int]
    below: list[int]  # buyers in lower buckets
    counts: list[int]
    total: int


@dataclass(slots=True)
class Population:
    """Buyers per bucket in each dimension; mergeable (counts add) and picklable."""

    counts: tuple[Counter[int], Counter[int], Counter[int]] = field(
        default_factory=lambda: (Counter(), Counter(), Counter())
    )
    buyers: int = 0
    _ranks: list[_Ranks] | None = None
    _moves: int = 0

    def move(self, old: RfmKey | None, features: Features) -> RfmKey | None:
        """Move a customer from ``old`` to its current buckets; returns the new key to keep."""
        new = rfm_key(features)
        if new == old:
            return new
        if old is not None and not all(c.get(b, 0) > 0 for c, b in zip(self.counts, old, strict=True)):
            old = None  # counted by a population this one does not hold (another worker, before a restore)
        for key, step in ((old, -1), (new, 1)):
            if key is not None:
                for counter, bucket in zip(self.counts, key, strict=True):
                    counter[bucket] += step
                    if not counter[bucket]:
                        del counter[bucket]
                self.buyers += step
        self._moves += 1
        return new

    def merge(self, other: Population) -> Population:
        for mine, theirs in zip(self.counts, other.counts, strict=True):
            mine.update(theirs)
        self.buyers += other.buyers
        self._ranks = None
        return self

    def refresh(self) -> None:
        """Rebuild the rank tables now (before final profiles, so they rank against everyone)."""
        self._ranks = None

    def _tables(self) -> list[_Ranks]:
        if self._ranks is None or self._moves >= max(100, self.buyers // 100):
            self._ranks = []
            for counter in self.counts:
                keys = sorted(counter)
                counts = [counter[k] for k in keys]
                below = [0] * len(keys)
                for i in range(1, len(keys)):
                    below[i] = below[i - 1] + counts[i - 1]
                self._ranks.append(_Ranks(keys, below, counts, sum(counts)))
            self._moves = 0
        return self._ranks

    def scores(self, key: RfmKey | None) -> dict[str, int]:
        """Quintile scores 1..5 per dimension (0 for a customer who never bought)."""
        if key is None or self.buyers <= 0:
            return dict(_NO_SCORES)
        scores = {}
        for name, ranks, bucket in zip(DIMENSIONS, self._tables(), key, strict=True):
            i = bisect_left(ranks.keys, bucket)
            present = i < len(ranks.keys) and ranks.keys[i] == bucket
            below = ranks.below[i] if i < len(ranks.keys) else ranks.total
            equal = ranks.counts[i] if present else 0
            scores[name] = min(5, 1 + math.floor(5 * (below + equal / 2) / max(1, ranks.total)))
        return scores
