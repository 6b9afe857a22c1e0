"""Timing helpers shared by the bench scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(repeat: int, run: Callable[[], None]) -> float:
    """The fastest of ``repeat`` runs of ``run``, in seconds (the least disturbed by a busy machine)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
