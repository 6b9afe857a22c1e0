"""Progressive validation: every label is first used to score the prediction made before learning it.

:class:`ProgressiveValidation` keeps the last ``window`` (default 10,000) pairs of (predicted
probability, label) of one model and reports, over that window, the exact ROC AUC (ties count one
half), the log loss (the probability of the observed label clipped to ``[1e-15, 1 - 1e-15]``) and calibration: ``bins``
(default 10) equal-width bins of the predicted probability with their count, mean prediction and
observed positive rate, and the expected calibration error (ECE, the count-weighted mean absolute
gap). Log loss and the bins are maintained incrementally; the AUC is computed when asked
(``O(window log window)``). A plain value: pickles, compares.

>>> v = ProgressiveValidation(window=4)
>>> for p, y in [(0.9, True), (0.8, True), (0.3, False), (0.6, False), (0.5, True)]:
...     v.update(p, y)
>>> v.n, len(v.pairs)
(5, 4)
>>> v.roc_auc()
0.75
>>> round(v.log_loss(), 4)
0.5473
>>> s = v.summary()
>>> s["n"], s["window"], s["positive_rate"], s["roc_auc"]
(5, 4, 0.5, 0.75)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

EPS = 1e-15


def roc_auc(pairs: list[tuple[float, bool]] | deque[tuple[float, bool]]) -> float | None:
    """Exact ROC AUC (Mann-Whitney, average ranks for ties); None without both classes.

    >>> roc_auc([(0.1, False), (0.4, True), (0.4, False), (0.8, True)])
    0.875
    """
    ordered = sorted(pairs, key=lambda pair: pair[0])
    positives = sum(1 for _, y in ordered if y)
    negatives = len(ordered) - positives
    if not positives or not negatives:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][0] == ordered[i][0]:
            j += 1
        average_rank = (i + j) / 2 + 1
        rank_sum += average_rank * sum(1 for k in range(i, j + 1) if ordered[k][1])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _loss(p: float, y: bool) -> float:
    q = p if y else 1 - p  # the probability given to what happened
    return -math.log(min(1 - EPS, max(EPS, q)))


@dataclass(slots=True)
class ProgressiveValidation:
    """Rolling quality of one model's predictions (see the module docstring)."""

    window: int = 10_000
    bins: int = 10
    n: int = 0
    pairs: deque[tuple[float, bool]] = field(default_factory=deque)
    loss_sum: float = 0.0
    bin_count: list[int] = field(default_factory=list)
    bin_predicted: list[float] = field(default_factory=list)
    bin_positive: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.window < 1 or self.bins < 1:
            raise ValueError("window and bins must be positive")
        if not self.bin_count:
            self.bin_count = [0] * self.bins
            self.bin_predicted = [0.0] * self.bins
            self.bin_positive = [0] * self.bins

    def _bin(self, p: float) -> int:
        return min(self.bins - 1, max(0, int(p * self.bins)))

    def _add(self, p: float, y: bool, sign: int) -> None:
        self.loss_sum += sign * _loss(p, y)
        b = self._bin(p)
        self.bin_count[b] += sign
        self.bin_predicted[b] += sign * p
        self.bin_positive[b] += sign * int(y)

    def update(self, y_pred: float, y_true: bool) -> None:
        """Record the probability predicted *before* learning the label ``y_true``."""
        p = float(y_pred)
        if not math.isfinite(p):
            raise ValueError(f"prediction must be a finite probability, got {y_pred!r}")
        p = min(1.0, max(0.0, p))
        y = bool(y_true)
        self.n += 1
        self.pairs.append((p, y))
        self._add(p, y, +1)
        if len(self.pairs) > self.window:
            old_p, old_y = self.pairs.popleft()
            self._add(old_p, old_y, -1)
        if len(self.pairs) == self.window and self.n % self.window == 0:
            self.loss_sum = sum(_loss(q, t) for q, t in self.pairs)  # drop float drift once a window

    def roc_auc(self) -> float | None:
        """ROC AUC over the window, or None until both classes were seen in it."""
        return roc_auc(self.pairs)

    def log_loss(self) -> float | None:
        """Mean log loss over the window, or None when empty."""
        return self.loss_sum / len(self.pairs) if self.pairs else None

    def calibration(self) -> list[dict[str, float | int | None]]:
        """Per probability bin: its bounds, count, mean prediction and observed positive rate."""
        rows: list[dict[str, float | int | None]] = []
        for b in range(self.bins):
            count = self.bin_count[b]
            rows.append(
                {
                    "low": b / self.bins,
                    "high": (b + 1) / self.bins,
                    "count": count,
                    "mean_predicted": self.bin_predicted[b] / count if count else None,
                    "observed_rate": self.bin_positive[b] / count if count else None,
                }
            )
        return rows

    def expected_calibration_error(self) -> float | None:
        """Count-weighted mean of |mean prediction - observed rate| over the bins; None when empty."""
        total = len(self.pairs)
        if not total:
            return None
        gap = sum(
            abs(self.bin_predicted[b] - self.bin_positive[b]) for b in range(self.bins) if self.bin_count[b]
        )  # count * |mean_predicted - observed_rate| == |sum_predicted - positives|
        return gap / total

    def summary(self) -> dict:
        """JSON-ready figures for the run summary and the metrics."""
        total = len(self.pairs)
        positives = sum(1 for _, y in self.pairs if y)
        return {
            "n": self.n,
            "window": total,
            "positive_rate": positives / total if total else None,
            "mean_predicted": sum(p for p, _ in self.pairs) / total if total else None,
            "roc_auc": self.roc_auc(),
            "log_loss": self.log_loss(),
            "expected_calibration_error": self.expected_calibration_error(),
            "calibration": self.calibration(),
        }


@dataclass(slots=True)
class RegressionValidation:
    """Rolling quality of a regression's predictions, each made before the value was learnt.

    >>> v = RegressionValidation(window=2)
    >>> v.update(10.0, 12.0); v.update(0.0, 4.0); v.update(5.0, 5.0)
    >>> v.summary()
    {'n': 3, 'window': 2, 'mean_predicted': 2.5, 'mean_actual': 4.5, 'mean_absolute_error': 2.0}
    """

    window: int = 10_000
    n: int = 0
    pairs: deque[tuple[float, float]] = field(default_factory=deque)

    def update(self, y_pred: float, y_true: float) -> None:
        self.n += 1
        self.pairs.append((float(y_pred), float(y_true)))
        if len(self.pairs) > self.window:
            self.pairs.popleft()

    def summary(self) -> dict[str, Any]:
        count = len(self.pairs)
        if not count:
            return {"n": self.n, "window": 0, "mean_predicted": None, "mean_actual": None, "mean_absolute_error": None}
        return {
            "n": self.n,
            "window": count,
            "mean_predicted": round(sum(p for p, _ in self.pairs) / count, 6),
            "mean_actual": round(sum(y for _, y in self.pairs) / count, 6),
            "mean_absolute_error": round(sum(abs(p - y) for p, y in self.pairs) / count, 6),
        }
