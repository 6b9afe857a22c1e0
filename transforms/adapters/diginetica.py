"""DIGINETICA (CIKM Cup 2016) item views and purchases -> input events.

Both files are ``;``-separated with a header row. A ``userId`` of "NA" (or blank) marks
an anonymous session: the event then has no ``user_id``, only the session-scoped
``anonymous_id`` "dgn-session-<sessionId>", which both files share so that views and
purchases of one session can be stitched together.

Views become ``product_view`` events timed at ``eventdate`` (UTC midnight) plus
``timeframe`` milliseconds (in the views file, timeframe is at most ~20 minutes).

Purchases become ``purchase`` events (one per order line, ``quantity`` 1, ``currency``
EUR). The file has no prices, so ``amount`` is 0.0 and ``properties["amount_unknown"]``
is true. In this file ``timeframe`` counts milliseconds since the start of the session,
which can be months before the purchase (``eventdate`` is the purchase day), so a
purchase is timed at UTC midnight of ``eventdate`` and its timeframe is kept in
``properties["timeframe_ms"]``.

Event ids are "dgn-view-<row>" / "dgn-purchase-<row>" (1-based data row numbers), so
identical rows stay distinct events. Unparseable dates or timeframes are passed
through as raw strings.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

ANONYMOUS_USER = {"", "NA"}


def iter_views(path: Path) -> Iterator[dict]:
    """Yield one product_view per data row of the item-views file at ``path``."""
    for number, row in _rows(path):
        event = _base(f"dgn-view-{number}", "product_view", row["session_id"], row["user_id"])
        event["ts"] = _utc_time(row["eventdate"], row["timeframe"])
        event["product_id"] = row["item_id"]
        yield event


def iter_purchases(path: Path) -> Iterator[dict]:
    """Yield one purchase per data row (order line) of the purchases file at ``path``."""
    for number, row in _rows(path):
        event = _base(f"dgn-purchase-{number}", "purchase", row["sessionId"], row["userId"])
        event.update(
            ts=_utc_time(row["eventdate"]),
            order_id=row["ordernumber"],
            product_id=row["itemId"],
            quantity=1,
            amount=0.0,
            currency="EUR",
            properties={"amount_unknown": True, "timeframe_ms": _int(row["timeframe"])},
        )
        yield event


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream (1-based row number, row) pairs from a ``;``-separated file."""
    with open(path, newline="", encoding="utf-8", errors="replace") as stream:
        yield from enumerate(csv.DictReader(stream, delimiter=";", restval=""), start=1)


def _base(event_id: str, kind: str, session: str, user: str) -> dict:
    """Common fields: id, type and the session/user identities."""
    event: dict = {"event_id": event_id, "type": kind}
    if session:
        event.update(anonymous_id=f"dgn-session-{session}", session_id=session)
    if user.strip() not in ANONYMOUS_USER:
        event["user_id"] = user
    return event


def _int(raw: str) -> int | str:
    """Parse an integer, else return ``raw`` unchanged."""
    try:
        return int(raw)
    except ValueError:
        return raw


def _utc_time(day: str, millis: str = "0") -> str:
    """RFC 3339 time of UTC midnight of ``day`` plus ``millis``; ``day`` if unparseable."""
    try:
        midnight = datetime.combine(date.fromisoformat(day), time(), UTC)
        moment = midnight + timedelta(milliseconds=int(millis))
    except (ValueError, OverflowError):
        return day
    return moment.isoformat(timespec="milliseconds")
