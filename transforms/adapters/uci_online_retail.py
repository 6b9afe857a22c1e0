"""UCI Online Retail transaction lines -> purchase / refund events.

Every CSV data row becomes exactly one event; nothing is cleaned or dropped:

* Invoices starting with ``C`` are cancellations and become ``refund`` events whose
  ``quantity`` and ``amount`` are the absolute values of the line (the sign is carried
  by the event type). All other lines are ``purchase`` events with quantity, price and
  ``amount = round(quantity * price, 2)`` exactly as given, so zero or negative
  quantities, prices and amounts (e.g. the ``A`` "Adjust bad debt" invoices) stay dirty.
* ``CustomerID`` "17850.0" becomes ``user_id`` "17850"; a blank one leaves ``user_id``
  out, so such rows carry no identity at all and are for the cleaning step to judge.
* ``InvoiceDate`` ("2010-12-01 08:26:00" or the original "12/1/2010 8:26", month first)
  is shop-local Europe/London time and is written as RFC 3339 with its UTC offset; a
  date that cannot be parsed is passed through unchanged in ``ts``.
* A numeric field that cannot be parsed is passed through as its raw string (and then
  no ``amount`` is computed).
* ``event_id`` hashes the row's field values, so byte-identical lines (true duplicates
  in this dataset) share an id, while the 1-based data row number is kept in
  ``properties["line"]``.

The file may be gzip-compressed or plain; each line is decoded as UTF-8, falling back
to cp1252 and then latin-1, so no byte sequence can stop the stream.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import IO
from zoneinfo import ZoneInfo

LONDON = ZoneInfo("Europe/London")
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")
COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)


def iter_events(path: Path) -> Iterator[dict]:
    """Yield one purchase or refund event per data row of the UCI CSV at ``path``."""
    with _open_binary(path) as stream:
        rows = csv.reader(_decode(line) for line in stream)
        header = next(rows, [])
        for number, row in enumerate(rows, start=1):
            yield _to_event(dict(zip(header, row, strict=False)), row, number)


def _open_binary(path: Path) -> IO[bytes]:
    """Open ``path`` for binary reading, transparently un-gzipping it."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _decode(line: bytes) -> str:
    """Decode one raw line as UTF-8, else cp1252, else latin-1 (which never fails)."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return line.decode(encoding)
        except UnicodeDecodeError:
            pass
    return line.decode("latin-1")


def _to_event(fields: dict[str, str], row: list[str], number: int) -> dict:
    """Map one parsed row to an event dict."""
    value = {name: fields.get(name, "") for name in COLUMNS}
    invoice = value["InvoiceNo"]
    quantity = _parse(value["Quantity"], int)
    price = _parse(value["UnitPrice"], float)
    refund = invoice.startswith("C")
    event: dict = {
        "event_id": "uci-" + hashlib.sha1("\x1f".join(row).encode("utf-8")).hexdigest()[:20],
        "type": "refund" if refund else "purchase",
        "ts": _london_rfc3339(value["InvoiceDate"]),
    }
    user_id = _customer_id(value["CustomerID"])
    if user_id is not None:
        event["user_id"] = user_id
    event.update(
        order_id=invoice,
        product_id=value["StockCode"],
        price=price,
        quantity=abs(quantity) if refund and isinstance(quantity, int) else quantity,
    )
    amount = _amount(quantity, price)
    if amount is not None:
        event["amount"] = abs(amount) if refund else amount
    event["currency"] = "GBP"
    event["properties"] = {
        "description": value["Description"],
        "country": value["Country"],
        "line": number,
    }
    return event


def _parse(raw: str, kind: Callable[[str], float]) -> float | str:
    """Parse a finite number of ``kind`` from ``raw``, else return ``raw`` unchanged."""
    try:
        number = kind(raw)
    except ValueError:
        return raw
    return number if math.isfinite(number) else raw


def _amount(quantity: float | str, price: float | str) -> float | None:
    """Line total rounded to pence, or None when either operand is not numeric."""
    if isinstance(quantity, str) or isinstance(price, str):
        return None
    return round(quantity * price, 2)


def _customer_id(raw: str) -> str | None:
    """Normalize "17850.0" to "17850"; None for a blank id; other values unchanged."""
    text = raw.strip()
    if not text:
        return None
    whole, dot, fraction = text.partition(".")
    if dot and whole.isdigit() and fraction.strip("0") == "":
        return whole
    return text


@lru_cache(maxsize=65536)
def _london_rfc3339(raw: str) -> str:
    """Read a Europe/London wall-clock time and write it as RFC 3339 with offset."""
    for fmt in DATE_FORMATS:
        try:
            local = datetime.strptime(raw.strip(), fmt)  # noqa: DTZ007 - London wall time, zone set below
        except ValueError:
            continue
        return local.replace(tzinfo=LONDON).isoformat()
    return raw
