"""A cohort of customers acquired in one quarter who buy till they die, as the job's input events.

The purchases follow the BG/NBD model (Fader, Hardie and Lee, 2005) with Gamma-Gamma spend, the
assumptions that ``segstream backtest``'s BG/NBD baseline makes, so the cohort shows what those
assumptions are worth against the stream's models:

- each customer makes a first purchase at a uniform time of the acquisition window
  (``acquisition_days`` from ``start_ms``, default one quarter);
- while alive, they buy as a Poisson process of rate ``λ ~ Gamma(shape r, rate alpha)`` per day;
- after each *repeat* purchase they drop out for good with probability ``p ~ Beta(a, b)``;
- each order is worth ``Gamma(shape spend_p, rate ν)`` with ``ν ~ Gamma(shape spend_q, rate
  spend_gamma)`` per customer (mean order value over customers ``spend_p * spend_gamma / (spend_q - 1)``).

Each purchase ends a short session of the customer: a page view, one to three product views and an
add to cart in the twenty minutes before it. The log runs ``days`` from ``start_ms`` (default 456:
a quarter of acquisition from 2025-01-01, nine months to a cutoff on 2026-01-01, then the 90 days of
labels and one more, so the last label day is complete). Deterministic for a seed; nothing reads
the wall clock. Lines come out in event-time order.

>>> from transforms.timestamps import parse_event_time
>>> config = CohortConfig(customers=30, seed=3)
>>> lines = list(cohort_lines(config))
>>> lines == list(cohort_lines(config))
True
>>> purchases = [json.loads(line) for line in lines if '"purchase"' in line]
>>> firsts = {}
>>> for p in purchases:
...     _ = firsts.setdefault(p["user_id"], parse_event_time(p["ts"]))
>>> len(firsts), all(config.start_ms <= t < config.start_ms + 90 * DAY for t in firsts.values())
(30, True)
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from transforms.currencies import normalize_currency
from transforms.timestamps import MIN_TS_MS

MINUTE = 60_000
DAY = 86_400_000
COHORT_START_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: acquired in Q1 2025, cutoff 2026-01-01
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CATEGORIES = ("shoes", "shirts", "bags", "books", "toys", "kitchen", "garden", "audio")
_PRODUCTS = 200
_SESSION_MS = 20 * MINUTE  # the session before a purchase starts at most this long before it


@dataclass(frozen=True)
class CohortConfig:
    """What to generate: the cohort, its time span and the BG/NBD and Gamma-Gamma parameters (days)."""

    customers: int = 2000
    start_ms: int = COHORT_START_MS
    acquisition_days: int = 90
    days: int = 456
    seed: int = 7
    r: float = 0.25  # purchase rate λ ~ Gamma(r, alpha): mean r / alpha purchases a day
    alpha: float = 20.0
    a: float = 0.8  # dropout probability p ~ Beta(a, b) after each repeat purchase
    b: float = 2.5
    spend_p: float = 6.0  # order value ~ Gamma(spend_p, ν), ν ~ Gamma(spend_q, spend_gamma)
    spend_q: float = 4.0
    spend_gamma: float = 20.0
    currency: str = "EUR"

    def __post_init__(self) -> None:
        for name in ("customers", "acquisition_days", "days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
        if self.acquisition_days > self.days:
            raise ValueError("--acquisition-days must not exceed --days")
        if self.start_ms < MIN_TS_MS:
            raise ValueError("--start must not be before 2000-01-01 (the job rejects older events)")
        for spec in fields(self):
            if spec.type == "float" and not getattr(self, spec.name) > 0:
                raise ValueError(f"--{spec.name.replace('_', '-')} must be positive, not {getattr(self, spec.name)!r}")
        if self.spend_q <= 1:
            raise ValueError("--spend-q must be above 1 (the mean order value is p * gamma / (q - 1))")
        if normalize_currency(self.currency) != self.currency:
            raise ValueError(f"--currency must be an upper-case ISO 4217 code, not {self.currency!r}")

    @property
    def end_ms(self) -> int:
        """The end of the log (exclusive)."""
        return self.start_ms + self.days * DAY


def purchase_plan(config: CohortConfig) -> list[list[tuple[int, float]]]:
    """Per customer, in order, the (time, amount) of each purchase before the end of the log.

    >>> plan = purchase_plan(CohortConfig(customers=5, seed=1))
    >>> len(plan), all(len(orders) >= 1 for orders in plan)
    (5, True)
    """
    rng = random.Random(config.seed)
    window = config.acquisition_days * DAY
    plan = []
    for _ in range(config.customers):
        rate = rng.gammavariate(config.r, 1 / config.alpha) / DAY  # purchases per ms
        dropout = rng.betavariate(config.a, config.b)
        nu = rng.gammavariate(config.spend_q, 1 / config.spend_gamma)
        t = config.start_ms + _SESSION_MS + int(rng.random() * (window - _SESSION_MS))
        orders = []
        while t < config.end_ms:
            orders.append((t, max(0.01, round(rng.gammavariate(config.spend_p, 1 / nu), 2))))
            if len(orders) > 1 and rng.random() < dropout:
                break
            t += int(rng.expovariate(rate)) + 1 if rate > 0 else config.end_ms
        plan.append(orders)
    return plan


def _rfc3339(ts: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ts)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _session(rng: random.Random, user: str, number: int, ts: int, amount: float, currency: str) -> list[dict]:
    """The events of a customer's purchase session ending in the purchase at ``ts``."""
    product = rng.randrange(_PRODUCTS)
    ids = {"user_id": user, "anonymous_id": f"anon-{user}", "session_id": f"{user}-s{number}"}
    item = {"product_id": f"sku-{product:04d}", "category": _CATEGORIES[product % len(_CATEGORIES)]}
    start = ts - rng.randrange(2 * MINUTE, _SESSION_MS)
    steps = ["page_view"] + ["product_view"] * rng.randint(1, 3) + ["add_to_cart"]
    gap = (ts - start) // (len(steps) + 1)
    events: list[dict[str, Any]] = [
        {"type": kind, "ts": start + i * gap, **ids, **({} if kind == "page_view" else item)}
        for i, kind in enumerate(steps)
    ]
    order = {"order_id": f"{user}-o{number}", "amount": amount, "currency": currency, "price": amount, "quantity": 1}
    events.append({"type": "purchase", "ts": ts, **ids, **item, **order})
    return events


def cohort_lines(config: CohortConfig) -> Iterator[str]:
    """The cohort's events as JSON lines of the input contract, in event-time order."""
    rng = random.Random(f"{config.seed}-sessions")
    events = []
    for index, orders in enumerate(purchase_plan(config)):
        user = f"c-{index + 1:06d}"
        for number, (ts, amount) in enumerate(orders, start=1):
            events += _session(rng, user, number, ts, amount, config.currency)
    events.sort(key=lambda e: (e["ts"], e["user_id"]))
    for n, event in enumerate(events, start=1):
        yield json.dumps({"event_id": f"e-{n:08d}", **event, "ts": _rfc3339(event["ts"])})
