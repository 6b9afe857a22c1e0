"""Event timestamps: RFC 3339 with an offset, or epoch milliseconds, to UTC epoch milliseconds.

>>> parse_event_time("2024-03-01T12:00:00+01:00")
1709290800000
>>> parse_event_time(1709290800000)
1709290800000
>>> try:
...     parse_event_time("2024-03-01T12:00:00")
... except Rejection as rejection:
...     print(rejection.reason)
naive_timestamp
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from transforms.dead_letters import Reason, Rejection

MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _reject(reason: Reason, message: str) -> Rejection:
    return Rejection(reason, "ts", message)


def parse_event_time(value: object) -> int:
    """Return UTC epoch milliseconds, or raise :class:`Rejection` (format only, no range check)."""
    if isinstance(value, bool):
        raise _reject(Reason.WRONG_TYPE, "timestamp is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise _reject(Reason.INVALID_TIMESTAMP, "epoch milliseconds must be a whole finite number")
        return int(value)
    if not isinstance(value, str):
        raise _reject(Reason.WRONG_TYPE, f"timestamp must be a string or integer, got {type(value).__name__}")
    text = value.strip()
    if text.isascii() and text.isdigit():  # str.isdigit alone accepts '²', which int() rejects
        try:
            return int(text)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise _reject(Reason.INVALID_TIMESTAMP, "epoch milliseconds out of range") from None
    try:
        parsed = datetime.fromisoformat(text.upper())  # RFC 3339 allows a lower-case 't' and 'z'
    except ValueError:
        raise _reject(Reason.INVALID_TIMESTAMP, "not RFC 3339 nor epoch milliseconds") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _reject(Reason.NAIVE_TIMESTAMP, "timestamp has no UTC offset")
    return (parsed - _EPOCH) // _MS  # exact: timestamp() * 1000 is a float, 1 ms off for 0.6% of them


def check_event_time(ts: int, now_ms: int, max_future_ms: int) -> int:
    """Reject timestamps before 2000 or more than ``max_future_ms`` after ``now_ms``."""
    if ts < MIN_TS_MS:
        raise _reject(Reason.TIMESTAMP_TOO_OLD, "timestamp is before 2000-01-01")
    if ts > now_ms + max_future_ms:
        raise _reject(Reason.FUTURE_TIMESTAMP, "timestamp is too far in the future")
    return ts
