"""Exponential backoff with jitter, shared by webhook retries and Redis reconnects.

The random part comes in as an argument, so the policy is a pure function:

>>> policy = Backoff(initial_ms=100, max_ms=1_000)
>>> [policy.delay_ms(n, jitter=1.0) for n in (1, 2, 3, 4, 5)]
[100, 200, 400, 800, 1000]
>>> policy.delay_ms(3, jitter=0.0)
200
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempt ``n`` (from 1) waits between half and all of ``min(max_ms, initial_ms * 2**(n-1))``
    ("equal jitter": retries of many clients spread out, yet never come right back)."""

    initial_ms: int = 500
    max_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.initial_ms <= 0 or self.max_ms < self.initial_ms:
            raise ValueError(f"backoff needs 0 < initial ({self.initial_ms} ms) <= max ({self.max_ms} ms)")

    def delay_ms(self, attempt: int, jitter: float) -> int:
        """The wait after the ``attempt``-th failure; ``jitter`` is uniform in [0, 1]."""
        ceiling = min(self.max_ms, self.initial_ms * 2 ** min(max(attempt, 1) - 1, 40))
        return int(ceiling / 2 + ceiling / 2 * jitter)
