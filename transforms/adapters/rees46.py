"""REES46 / Open CDP e-commerce clickstream rows -> input events.

``view`` -> product_view, ``cart`` -> add_to_cart, ``remove_from_cart`` -> remove_from_cart,
``purchase`` -> purchase; an unknown ``event_type`` is passed through unchanged for the
cleaning step to reject. Every row is its own event (``event_id`` "rees46-<row number>"),
even when two rows are identical, because the source logs one line per user action.

A purchase row is one unit of one product: ``order_id`` is "<user_session>:<product_id>",
``amount`` the row's price and ``quantity`` 1. The dataset states no currency; USD is an
assumption. The user session id is both ``session_id`` and ``anonymous_id``; blank
values are left out, unparseable prices and times are passed through as raw strings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

EVENT_TYPES = {
    "view": "product_view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}
CURRENCY = "USD"


def iter_events(path: Path) -> Iterator[dict]:
    """Yield one event per data row of the REES46 CSV at ``path``."""
    with open(path, newline="", encoding="utf-8", errors="replace") as stream:
        for number, row in enumerate(csv.DictReader(stream, restval=""), start=1):
            yield _to_event(row, number)


def _to_event(row: dict[str, str], number: int) -> dict:
    """Map one CSV row to an event dict."""
    kind = EVENT_TYPES.get(row["event_type"], row["event_type"])
    session = row["user_session"]
    price = _price(row["price"])
    event: dict = {
        "event_id": f"rees46-{number}",
        "type": kind,
        "ts": _utc_rfc3339(row["event_time"]),
    }
    optional = {
        "user_id": row["user_id"],
        "anonymous_id": session,
        "session_id": session,
        "product_id": row["product_id"],
        "category": row["category_code"] or row["category_id"],
    }
    event.update((key, value) for key, value in optional.items() if value)
    event["price"] = price
    if kind == "purchase":
        event.update(
            order_id=f"{session}:{row['product_id']}",
            amount=price,
            quantity=1,
            currency=CURRENCY,
        )
    event["properties"] = {"brand": row["brand"], "category_id": row["category_id"]}
    return event


def _price(raw: str) -> float | str:
    """Parse a finite price, else return ``raw`` unchanged."""
    try:
        price = float(raw)
    except ValueError:
        return raw
    return price if math.isfinite(price) else raw


def _utc_rfc3339(raw: str) -> str:
    """Turn "2019-10-01 00:00:00 UTC" into "2019-10-01T00:00:00+00:00"; else keep ``raw``."""
    stamp, _, zone = raw.rpartition(" ")
    if zone != "UTC":
        return raw
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return raw
    return moment.replace(tzinfo=UTC).isoformat()
