"""OTTO RecSys 2022 session JSONL -> input events.

Each line is ``{"session": int, "events": [{"aid": int, "ts": int, "type": str}]}``;
every inner event becomes one event: ``clicks`` -> product_view, ``carts`` ->
add_to_cart, ``orders`` -> purchase (an unknown type is passed through unchanged).
``ts`` stays the integer epoch milliseconds, which the input contract allows.

Sessions are anonymous: ``anonymous_id`` is "otto-<session>". A purchase has
``order_id`` "<session>:<aid>:<ts>", ``quantity`` 1 and ``currency`` EUR; the dataset has
no prices, so ``amount`` is 0.0 with ``properties["amount_unknown"]`` true.
``event_id`` is "otto-<session>-<n>" with n the 1-based position in the session.
The file is read one session line at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

EVENT_TYPES = {"clicks": "product_view", "carts": "add_to_cart", "orders": "purchase"}


def iter_events(path: Path) -> Iterator[dict]:
    """Yield one event per inner event of every session line in the file at ``path``."""
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield from _session_events(json.loads(line))


def _session_events(record: dict) -> Iterator[dict]:
    """Map the events of one session record."""
    session = record["session"]
    for position, raw in enumerate(record["events"], start=1):
        yield _to_event(session, position, raw)


def _to_event(session: int, position: int, raw: dict) -> dict:
    """Map one inner OTTO event to an event dict."""
    kind = EVENT_TYPES.get(raw["type"], raw["type"])
    event: dict = {
        "event_id": f"otto-{session}-{position}",
        "type": kind,
        "ts": raw["ts"],
        "anonymous_id": f"otto-{session}",
        "session_id": str(session),
        "product_id": str(raw["aid"]),
    }
    if kind == "purchase":
        event.update(
            order_id=f"{session}:{raw['aid']}:{raw['ts']}",
            quantity=1,
            amount=0.0,
            currency="EUR",
            properties={"amount_unknown": True},
        )
    return event
