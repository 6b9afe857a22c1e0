"""A deterministic sample stream for the demo and tests: shoppers with sessions, carts, purchases,
plus the dirt real streams carry (duplicates, placeholder ids, bad timestamps, broken JSON).

>>> lines = list(sample_lines(customers=5, start_ms=1_750_000_000_000, seed=1))
>>> len(lines) > 5 and all(isinstance(line, str) for line in lines)
True
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

MINUTE = 60_000
_PRODUCTS = [(f"p{n:03d}", f"cat{n % 7}", round(5 + (n * 7.3) % 120, 2)) for n in range(60)]


def _shopper_events(rng: random.Random, number: int, start_ms: int) -> Iterator[dict[str, object]]:
    anonymous_id = f"anon-{number:05d}"
    user_id = f"user-{number:05d}" if rng.random() < 0.6 else None
    ts = start_ms + rng.randrange(0, 6 * 60) * MINUTE
    for session in range(rng.randint(1, 4)):
        session_id = f"s-{number:05d}-{session}"
        base: dict[str, object] = {"anonymous_id": anonymous_id, "session_id": session_id}
        if user_id:
            base["user_id"] = user_id
            if rng.random() < 0.3:
                base["email"] = f" User{number}@Example.com "
        yield {**base, "type": "page_view", "ts": ts, "page": "/"}
        carted: list[tuple[str, str, float]] = []
        for _ in range(rng.randint(1, 6)):
            ts += rng.randint(10, 120) * 1000
            product = rng.choice(_PRODUCTS)
            yield {
                **base,
                "type": "product_view",
                "ts": ts,
                "product_id": product[0],
                "category": product[1],
                "price": product[2],
            }
            if rng.random() < 0.35:
                ts += rng.randint(5, 60) * 1000
                carted.append(product)
                yield {
                    **base,
                    "type": "add_to_cart",
                    "ts": ts,
                    "product_id": product[0],
                    "price": str(product[2]),
                    "quantity": rng.randint(1, 3),
                }
        if carted and rng.random() < 0.5:
            ts += rng.randint(1, 10) * MINUTE
            amount = round(sum(p[2] for p in carted), 2)
            yield {
                **base,
                "type": "purchase",
                "ts": ts,
                "order_id": f"o-{session_id}",
                "amount": amount,
                "currency": rng.choice(["eur", "EUR", "usd"]),
            }
        ts += rng.randint(2, 72) * 60 * MINUTE


def _dirt(rng: random.Random, n: int, start_ms: int) -> object:
    bad: list[object] = [
        {"type": "page_view", "ts": start_ms, "anonymous_id": "a-no-id"},
        {"event_id": f"bad-{n}-1", "type": "page_view", "ts": "2025-06-01T10:00:00", "anonymous_id": "a1"},
        {"event_id": f"bad-{n}-2", "type": "page_view", "ts": start_ms, "anonymous_id": "undefined"},
        {
            "event_id": f"bad-{n}-3",
            "type": "purchase",
            "ts": start_ms,
            "user_id": "u-x",
            "order_id": "o",
            "amount": -5,
            "currency": "EUR",
        },
        {
            "event_id": f"bad-{n}-4",
            "type": "purchase",
            "ts": start_ms,
            "user_id": "u-x",
            "order_id": "o",
            "amount": 5,
            "currency": "XXY",
        },
        {"event_id": f"bad-{n}-5", "type": "teleport", "ts": start_ms, "user_id": "u-x"},
        {"event_id": f"bad-{n}-6", "type": "page_view", "ts": "1999-12-31T23:59:59Z", "user_id": "u-x"},
        "{not json",
    ]
    return rng.choice(bad)


def sample_lines(
    customers: int = 500, start_ms: int = 1_748_736_000_000, seed: int = 7, arrival_gap_ms: int = 0
) -> Iterator[str]:
    """JSON lines of a sample stream, roughly in event-time order (start: 2025-06-01 UTC).

    Every shopper starts within six hours of ``start_ms``, plus ``arrival_gap_ms`` times their number:
    a gap makes an endless-looking stream of new customers, each active for a few hours.
    """
    rng = random.Random(seed)
    events: list[dict[str, object]] = []
    for number in range(customers):
        events.extend(_shopper_events(rng, number, start_ms + number * arrival_gap_ms))
    events.sort(key=lambda e: int(e["ts"]))  # type: ignore[call-overload]
    for index, event in enumerate(events):
        event = {"event_id": f"ev-{index:07d}", **event}
        yield json.dumps(event)
        if rng.random() < 0.02:
            yield json.dumps(event)  # an at-least-once delivery repeat
        if rng.random() < 0.01:
            dirt = _dirt(rng, index, int(event["ts"]))  # type: ignore[call-overload]
            yield dirt if isinstance(dirt, str) else json.dumps(dirt)
