"""The cleaning step and the file sources against the input contract (docs/architecture.md).

Every reason code the cleaning step and the sources produce (all but ``late``, which the keyed step
owns) is driven by a table of records; accepted records are checked for their exact normalized
form; property tests check that cleaning never raises and that every input line is accounted for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.job import clean_record
from pipelines.sources import RawRecord, decode_json, read_records
from transforms.cleaning import DAY_MS, KNOWN_FIELDS, MAX_AMOUNT_CEILING, MAX_QUANTITY_CEILING, Cleaner, CleaningConfig
from transforms.config import ConfigError, parse_config
from transforms.currencies import iso4217_codes
from transforms.dead_letters import DeadLetter, Reason
from transforms.events import EVENT_TYPES, Event
from transforms.timestamps import MIN_TS_MS

SALT = "test-salt"
SOURCE = "test-source"
POSITION = "7"
NOW_MS = 1_710_000_000_000  # 2024-03-09T16:00:00Z, the fixed processing clock of every test
TS_MS = 1_698_832_800_000  # 2023-11-01T10:00:00Z
MAX_BYTES = 1024
CLEANER = Cleaner(CleaningConfig(email_salt=SALT, max_record_bytes=MAX_BYTES))
DROP = object()  # marks a field to remove from a base record
CLEAR_EMAIL = "Ann.Smith@Example.COM"


def page_view(**fields: object) -> dict[str, Any]:
    """A valid clickstream record with ``fields`` replaced (``DROP`` removes one)."""
    return _with({"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1"}, fields)


def purchase(**fields: object) -> dict[str, Any]:
    """A valid transaction record with ``fields`` replaced (``DROP`` removes one)."""
    base = {
        "event_id": "p1",
        "type": "purchase",
        "ts": TS_MS,
        "user_id": "u1",
        "order_id": "o1",
        "amount": 10.0,
        "currency": "EUR",
    }
    return _with(base, fields)


def refund(**fields: object) -> dict[str, Any]:
    return purchase(event_id="r1", type="refund", **fields)


def _with(base: dict[str, Any], fields: dict[str, object]) -> dict[str, Any]:
    record = {**base, **fields}
    return {k: v for k, v in record.items() if v is not DROP}


def clean(record: object, cleaner: Cleaner = CLEANER) -> Event | DeadLetter:
    return cleaner.clean(record, SOURCE, POSITION, NOW_MS)


def accepted(record: object, cleaner: Cleaner = CLEANER) -> Event:
    result = clean(record, cleaner)
    assert isinstance(result, Event), f"expected an Event, got {result}"
    return result


def rejected(record: object) -> DeadLetter:
    result = clean(record)
    assert isinstance(result, DeadLetter), f"expected a DeadLetter, got {result}"
    return result


def expected_hash(address: str, salt: str = SALT) -> str:
    """HMAC-SHA256 of the normalized address, computed here independently of the code under test."""
    return hmac.new(salt.encode(), address.strip().lower().encode(), hashlib.sha256).hexdigest()


def write_lines(path: Path, lines: Iterable[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def read_and_clean(path: Path, cleaner: Cleaner = CLEANER) -> list[tuple[RawRecord, Event | DeadLetter]]:
    return [(raw, clean_record(cleaner, raw, NOW_MS)) for raw in read_records(path, cleaner.config.max_record_bytes)]


# --------------------------------------------------------------------------------------------------
# Rejections by the cleaning step: reason and field
# --------------------------------------------------------------------------------------------------

REJECTIONS = [
    # malformed: not an object
    pytest.param(["e1", "page_view"], Reason.MALFORMED, None, id="malformed-list"),
    pytest.param("a string", Reason.MALFORMED, None, id="malformed-str"),
    pytest.param(42, Reason.MALFORMED, None, id="malformed-int"),
    pytest.param(None, Reason.MALFORMED, None, id="malformed-none"),
    # missing_field
    pytest.param(page_view(event_id=DROP), Reason.MISSING_FIELD, "event_id", id="missing-event_id"),
    pytest.param(page_view(event_id=None), Reason.MISSING_FIELD, "event_id", id="missing-event_id-null"),
    pytest.param(page_view(event_id=""), Reason.MISSING_FIELD, "event_id", id="missing-event_id-empty"),
    pytest.param(page_view(event_id="   "), Reason.MISSING_FIELD, "event_id", id="missing-event_id-blank"),
    pytest.param(page_view(type=DROP), Reason.MISSING_FIELD, "type", id="missing-type"),
    pytest.param(page_view(type=""), Reason.MISSING_FIELD, "type", id="missing-type-empty"),
    pytest.param(page_view(ts=DROP), Reason.MISSING_FIELD, "ts", id="missing-ts"),
    pytest.param(page_view(ts=None), Reason.MISSING_FIELD, "ts", id="missing-ts-null"),
    pytest.param(purchase(order_id=DROP), Reason.MISSING_FIELD, "order_id", id="missing-purchase-order_id"),
    pytest.param(purchase(order_id=" "), Reason.MISSING_FIELD, "order_id", id="missing-purchase-order_id-blank"),
    pytest.param(purchase(amount=DROP), Reason.MISSING_FIELD, "amount", id="missing-purchase-amount"),
    pytest.param(purchase(amount=""), Reason.MISSING_FIELD, "amount", id="missing-purchase-amount-empty"),
    pytest.param(purchase(currency=DROP), Reason.MISSING_FIELD, "currency", id="missing-purchase-currency"),
    pytest.param(purchase(currency=""), Reason.MISSING_FIELD, "currency", id="missing-purchase-currency-empty"),
    pytest.param(refund(order_id=DROP), Reason.MISSING_FIELD, "order_id", id="missing-refund-order_id"),
    pytest.param(refund(amount=DROP), Reason.MISSING_FIELD, "amount", id="missing-refund-amount"),
    pytest.param(refund(currency=DROP), Reason.MISSING_FIELD, "currency", id="missing-refund-currency"),
    # wrong_type
    pytest.param(page_view(event_id=["e1"]), Reason.WRONG_TYPE, "event_id", id="wrong-event_id-list"),
    pytest.param(page_view(event_id={"id": 1}), Reason.WRONG_TYPE, "event_id", id="wrong-event_id-object"),
    pytest.param(page_view(event_id=True), Reason.WRONG_TYPE, "event_id", id="wrong-event_id-bool"),
    pytest.param(page_view(event_id=1.5), Reason.WRONG_TYPE, "event_id", id="wrong-event_id-float"),
    pytest.param(page_view(type=["page_view"]), Reason.WRONG_TYPE, "type", id="wrong-type-list"),
    pytest.param(page_view(ts=True), Reason.WRONG_TYPE, "ts", id="wrong-ts-bool"),
    pytest.param(page_view(ts=[TS_MS]), Reason.WRONG_TYPE, "ts", id="wrong-ts-list"),
    pytest.param(page_view(ts={"ms": TS_MS}), Reason.WRONG_TYPE, "ts", id="wrong-ts-object"),
    pytest.param(page_view(user_id=["u1"]), Reason.WRONG_TYPE, "user_id", id="wrong-user_id-list"),
    pytest.param(page_view(anonymous_id=False), Reason.WRONG_TYPE, "anonymous_id", id="wrong-anonymous_id-bool"),
    pytest.param(page_view(email={"a": "b"}), Reason.WRONG_TYPE, "email", id="wrong-email-object"),
    pytest.param(page_view(session_id={"s": 1}), Reason.WRONG_TYPE, "session_id", id="wrong-session_id-object"),
    pytest.param(page_view(price=[1.0]), Reason.WRONG_TYPE, "price", id="wrong-price-list"),
    pytest.param(page_view(quantity=True), Reason.WRONG_TYPE, "quantity", id="wrong-quantity-bool"),
    pytest.param(purchase(amount=True), Reason.WRONG_TYPE, "amount", id="wrong-amount-bool"),
    pytest.param(purchase(currency=["EUR"]), Reason.WRONG_TYPE, "currency", id="wrong-currency-list"),
    pytest.param(page_view(consent=True), Reason.WRONG_TYPE, "consent", id="wrong-consent-bool"),
    pytest.param(page_view(consent=["personalization"]), Reason.WRONG_TYPE, "consent", id="wrong-consent-list"),
    pytest.param(
        page_view(consent={"personalization": "no"}), Reason.WRONG_TYPE, "consent", id="wrong-consent-str-value"
    ),
    pytest.param(page_view(consent={"personalization": 0}), Reason.WRONG_TYPE, "consent", id="wrong-consent-int"),
    pytest.param(page_view(properties=["a"]), Reason.WRONG_TYPE, "properties", id="wrong-properties-list"),
    pytest.param(page_view(properties="a=b"), Reason.WRONG_TYPE, "properties", id="wrong-properties-str"),
    # unknown_event_type
    pytest.param(page_view(type="teleport"), Reason.UNKNOWN_EVENT_TYPE, "type", id="unknown-type"),
    pytest.param(page_view(type="PageView"), Reason.UNKNOWN_EVENT_TYPE, "type", id="unknown-type-camel"),
    pytest.param(page_view(type=7), Reason.UNKNOWN_EVENT_TYPE, "type", id="unknown-type-number"),
    # invalid_timestamp
    pytest.param(page_view(ts="yesterday"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-word"),
    pytest.param(page_view(ts=""), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-empty"),
    pytest.param(page_view(ts="2023-13-01T10:00:00Z"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-month-13"),
    pytest.param(page_view(ts="2023-02-30T10:00:00Z"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-feb-30"),
    pytest.param(page_view(ts="2023-11-01T10:00:00+25:00"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-offset"),
    pytest.param(page_view(ts="-1698832800000"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-negative-str"),
    pytest.param(page_view(ts="1698832800000.5"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-fraction-str"),
    pytest.param(page_view(ts=1_698_832_800_000.5), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-fraction"),
    pytest.param(page_view(ts=math.nan), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-nan"),
    pytest.param(page_view(ts=math.inf), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-inf"),
    pytest.param(page_view(ts="²"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-superscript-digit"),
    pytest.param(page_view(ts="١٦٩٨٨٣٢٨٠٠٠٠٠"), Reason.INVALID_TIMESTAMP, "ts", id="invalid-ts-arabic-digits"),
    # naive_timestamp
    pytest.param(page_view(ts="2023-11-01T10:00:00"), Reason.NAIVE_TIMESTAMP, "ts", id="naive-ts"),
    pytest.param(page_view(ts="2023-11-01 10:00:00.123"), Reason.NAIVE_TIMESTAMP, "ts", id="naive-ts-space"),
    pytest.param(page_view(ts="2023-11-01"), Reason.NAIVE_TIMESTAMP, "ts", id="naive-ts-date-only"),
    # future_timestamp (more than max_future_ms = 1 day after NOW_MS)
    pytest.param(page_view(ts=NOW_MS + DAY_MS + 1), Reason.FUTURE_TIMESTAMP, "ts", id="future-ts-1ms-over"),
    pytest.param(page_view(ts="2030-01-01T00:00:00Z"), Reason.FUTURE_TIMESTAMP, "ts", id="future-ts-rfc3339"),
    pytest.param(page_view(ts="99999999999999999999999"), Reason.FUTURE_TIMESTAMP, "ts", id="future-ts-huge-str"),
    # timestamp_too_old (before 2000-01-01)
    pytest.param(page_view(ts="1999-12-31T23:59:59.999Z"), Reason.TIMESTAMP_TOO_OLD, "ts", id="too-old-rfc3339"),
    pytest.param(page_view(ts=MIN_TS_MS - 1), Reason.TIMESTAMP_TOO_OLD, "ts", id="too-old-1ms"),
    pytest.param(page_view(ts=0), Reason.TIMESTAMP_TOO_OLD, "ts", id="too-old-zero"),
    pytest.param(page_view(ts=1_710_000_000), Reason.TIMESTAMP_TOO_OLD, "ts", id="too-old-epoch-seconds"),
    pytest.param(page_view(ts=-5), Reason.TIMESTAMP_TOO_OLD, "ts", id="too-old-negative"),
    pytest.param(page_view(ts="2000-01-01T00:30:00+01:00"), Reason.TIMESTAMP_TOO_OLD, "ts", id="too-old-by-offset"),
    # missing_identifier
    pytest.param(page_view(user_id=DROP), Reason.MISSING_IDENTIFIER, None, id="no-identifier"),
    pytest.param(page_view(user_id=None), Reason.MISSING_IDENTIFIER, None, id="no-identifier-null"),
    *[
        pytest.param(page_view(user_id=DROP, anonymous_id=value), Reason.MISSING_IDENTIFIER, None, id=f"anon-{name}")
        for name, value in [
            ("empty", ""),
            ("blank", "   "),
            ("null", "null"),
            ("NULL-padded", "  NULL "),
            ("undefined", "undefined"),
            ("zero", "0"),
            ("zero-int", 0),
            ("guest", "guest"),
            ("Guest", "Guest"),
            ("minus-one", "-1"),
            ("object-object", "[object Object]"),
            ("uuid-zero", "00000000-0000-0000-0000-000000000000"),
            ("too-long", "a" * 257),
        ]
    ],
    pytest.param(
        page_view(user_id="undefined", anonymous_id="null", email=""),
        Reason.MISSING_IDENTIFIER,
        None,
        id="all-placeholders",
    ),
    pytest.param(page_view(user_id=DROP, email="not-an-email"), Reason.MISSING_IDENTIFIER, None, id="email-invalid"),
    pytest.param(page_view(user_id=DROP, email="ann@example"), Reason.MISSING_IDENTIFIER, None, id="email-no-dot"),
    pytest.param(page_view(user_id=DROP, email="a b@c.de"), Reason.MISSING_IDENTIFIER, None, id="email-space"),
    pytest.param(page_view(user_id="guest", email="@@"), Reason.MISSING_IDENTIFIER, None, id="email-invalid-guest"),
    # invalid_number
    pytest.param(purchase(amount="abc"), Reason.INVALID_NUMBER, "amount", id="invalid-amount-word"),
    pytest.param(purchase(amount=math.nan), Reason.INVALID_NUMBER, "amount", id="invalid-amount-nan"),
    pytest.param(purchase(amount="NaN"), Reason.INVALID_NUMBER, "amount", id="invalid-amount-nan-str"),
    pytest.param(purchase(amount=math.inf), Reason.INVALID_NUMBER, "amount", id="invalid-amount-inf"),
    pytest.param(purchase(amount="-inf"), Reason.INVALID_NUMBER, "amount", id="invalid-amount-minus-inf-str"),
    pytest.param(purchase(amount="1e400"), Reason.INVALID_NUMBER, "amount", id="invalid-amount-overflow-str"),
    pytest.param(page_view(price="abc"), Reason.INVALID_NUMBER, "price", id="invalid-price-word"),
    pytest.param(page_view(price=10**400), Reason.INVALID_NUMBER, "price", id="invalid-price-huge-int"),
    pytest.param(page_view(quantity=1.5), Reason.INVALID_NUMBER, "quantity", id="invalid-quantity-fraction"),
    pytest.param(page_view(quantity="2.5"), Reason.INVALID_NUMBER, "quantity", id="invalid-quantity-fraction-str"),
    pytest.param(page_view(quantity="three"), Reason.INVALID_NUMBER, "quantity", id="invalid-quantity-word"),
    # out_of_range
    pytest.param(purchase(amount=-0.01), Reason.OUT_OF_RANGE, "amount", id="negative-amount"),
    pytest.param(refund(amount="-5"), Reason.OUT_OF_RANGE, "amount", id="negative-refund-amount-str"),
    pytest.param(page_view(price=-1), Reason.OUT_OF_RANGE, "price", id="negative-price"),
    pytest.param(page_view(quantity=0), Reason.OUT_OF_RANGE, "quantity", id="quantity-zero"),
    pytest.param(page_view(quantity=-1), Reason.OUT_OF_RANGE, "quantity", id="quantity-negative"),
    pytest.param(page_view(quantity="0"), Reason.OUT_OF_RANGE, "quantity", id="quantity-zero-str"),
    pytest.param(purchase(amount=1e308), Reason.OUT_OF_RANGE, "amount", id="amount-1e308"),
    pytest.param(purchase(amount="1e308"), Reason.OUT_OF_RANGE, "amount", id="amount-1e308-str"),
    pytest.param(purchase(amount=10**300), Reason.OUT_OF_RANGE, "amount", id="amount-huge-int"),
    pytest.param(purchase(amount=math.nextafter(1e9, math.inf)), Reason.OUT_OF_RANGE, "amount", id="amount-above-max"),
    pytest.param(refund(amount=-1e308), Reason.OUT_OF_RANGE, "amount", id="refund-amount-minus-1e308"),
    pytest.param(page_view(price=1e300, quantity=1e20), Reason.OUT_OF_RANGE, "price", id="price-1e300"),
    pytest.param(page_view(price=1e9 + 0.01), Reason.OUT_OF_RANGE, "price", id="price-above-max"),
    pytest.param(page_view(quantity=1e20), Reason.OUT_OF_RANGE, "quantity", id="quantity-1e20"),
    pytest.param(page_view(quantity=1_000_001), Reason.OUT_OF_RANGE, "quantity", id="quantity-above-max"),
    pytest.param(page_view(price=1e5, quantity=10_001), Reason.OUT_OF_RANGE, "price", id="line-value-above-max"),
    # invalid_currency
    pytest.param(purchase(currency="XYZ"), Reason.INVALID_CURRENCY, "currency", id="currency-unknown-code"),
    pytest.param(purchase(currency="euro"), Reason.INVALID_CURRENCY, "currency", id="currency-name"),
    pytest.param(purchase(currency="€"), Reason.INVALID_CURRENCY, "currency", id="currency-symbol"),
    pytest.param(purchase(currency="EU"), Reason.INVALID_CURRENCY, "currency", id="currency-two-letters"),
    pytest.param(purchase(currency=978), Reason.INVALID_CURRENCY, "currency", id="currency-numeric-code"),
    pytest.param(page_view(currency="ABC"), Reason.INVALID_CURRENCY, "currency", id="currency-on-page-view"),
]


@pytest.mark.parametrize(("record", "reason", "field"), REJECTIONS)
def test_rejection_reason_and_field(record: object, reason: Reason, field: str | None) -> None:
    letter = rejected(record)
    assert (letter.reason, letter.field) == (str(reason), field)
    assert letter.message
    assert (letter.source, letter.position) == (SOURCE, POSITION)


def test_every_cleaning_and_source_reason_is_covered() -> None:
    """The tables above and the source tests below reach every reason code except ``late``."""
    from_cleaning = {str(param.values[1]) for param in REJECTIONS}
    from_sources = {str(Reason.MALFORMED), str(Reason.OVERSIZED)}
    assert from_cleaning | from_sources == {str(r) for r in Reason} - {str(Reason.LATE)}


# --------------------------------------------------------------------------------------------------
# Rejections by the sources: lines that are not JSON objects, lines above max_record_bytes
# --------------------------------------------------------------------------------------------------

SOURCE_LINES = [
    pytest.param("{not json", Reason.MALFORMED, id="not-json"),
    pytest.param('{"event_id": "e1", "type": "page_view"', Reason.MALFORMED, id="truncated-object"),
    pytest.param('{"event_id": "e1", "ts": NaN}', Reason.MALFORMED, id="nan-literal"),
    pytest.param("{'event_id': 'e1'}", Reason.MALFORMED, id="single-quotes"),
    pytest.param(b'{"event_id": "\xff\xfe"}', Reason.MALFORMED, id="invalid-utf8"),
    pytest.param('["e1", "page_view"]', Reason.MALFORMED, id="json-array"),
    pytest.param('"just a string"', Reason.MALFORMED, id="json-string"),
    pytest.param("12345", Reason.MALFORMED, id="json-number"),
    pytest.param("null", Reason.MALFORMED, id="json-null"),
    pytest.param(json.dumps(page_view(padding="x" * MAX_BYTES)), Reason.OVERSIZED, id="oversized"),
]


@pytest.mark.parametrize(("line", "reason"), SOURCE_LINES)
def test_source_line_rejections(tmp_path: Path, line: str | bytes, reason: Reason) -> None:
    path = write_lines(tmp_path / "in.jsonl", [json.dumps(page_view()), line])
    results = read_and_clean(path)
    assert len(results) == 2
    assert isinstance(results[0][1], Event)
    raw, letter = results[1]
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.field) == (str(reason), None)
    assert (letter.source, letter.position) == (str(path), "2")
    assert raw.position == "2"


def test_oversized_boundary(tmp_path: Path) -> None:
    """A line of exactly max_record_bytes is read; one byte more is a dead letter."""
    record = page_view(padding="")
    short = json.dumps(record, separators=(",", ":"))
    exact = json.dumps({**record, "padding": "x" * (MAX_BYTES - len(short))}, separators=(",", ":"))
    over = json.dumps({**record, "padding": "x" * (MAX_BYTES - len(short) + 1)}, separators=(",", ":"))
    assert (len(exact.encode()), len(over.encode())) == (MAX_BYTES, MAX_BYTES + 1)
    results = read_and_clean(write_lines(tmp_path / "in.jsonl", [exact, over]))
    assert isinstance(results[0][1], Event)
    assert isinstance(results[1][1], DeadLetter)
    assert results[1][1].reason == str(Reason.OVERSIZED)
    assert len(results[1][1].payload) <= 256  # only the head of an oversized line is kept


def test_blank_lines_are_skipped_and_positions_are_line_numbers(tmp_path: Path) -> None:
    lines = [json.dumps(page_view(event_id="a")), "", "   ", json.dumps(page_view(event_id="b")), "{bad"]
    results = read_and_clean(write_lines(tmp_path / "in.jsonl", lines))
    assert [raw.position for raw, _ in results] == ["1", "4", "5"]
    assert [type(result).__name__ for _, result in results] == ["Event", "Event", "DeadLetter"]


def test_gzipped_jsonl_reads_like_plain(tmp_path: Path) -> None:
    import gzip

    lines = [json.dumps(page_view(event_id="a")), "{bad", json.dumps(purchase())]
    plain = write_lines(tmp_path / "in.jsonl", lines)
    zipped = tmp_path / "in.jsonl.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    summarize = [(raw.position, raw.payload, raw.error) for raw in read_records(zipped, MAX_BYTES)]
    assert summarize == [(raw.position, raw.payload, raw.error) for raw in read_records(plain, MAX_BYTES)]
    assert len(summarize) == 3


# --------------------------------------------------------------------------------------------------
# Accepted records: exact normalized form
# --------------------------------------------------------------------------------------------------

TIMESTAMPS = [
    pytest.param("2023-11-01T10:00:00Z", TS_MS, id="utc-z"),
    pytest.param("2023-11-01T10:00:00+00:00", TS_MS, id="utc-offset"),
    pytest.param("2023-11-01T10:00:00-00:00", TS_MS, id="unknown-local-offset"),
    pytest.param("2023-11-01T15:30:00+05:30", TS_MS, id="plus-0530"),
    pytest.param("2023-11-01T02:00:00-08:00", TS_MS, id="minus-0800"),
    pytest.param("2023-11-02T00:00:00+14:00", TS_MS, id="plus-1400-next-day"),
    pytest.param("2023-10-31T22:00:00-12:00", TS_MS, id="minus-1200-previous-day"),
    pytest.param("2023-11-01 10:00:00Z", TS_MS, id="space-separator"),
    pytest.param("2023-11-01t10:00:00z", TS_MS, id="lower-case-t-z"),
    pytest.param("  2023-11-01T10:00:00Z ", TS_MS, id="padded"),
    pytest.param("2023-11-01T10:00:00.123Z", TS_MS + 123, id="millis"),
    pytest.param("2023-11-01T11:00:00.5+01:00", TS_MS + 500, id="tenths-offset"),
    pytest.param("2023-11-01T10:00:00.999999Z", TS_MS + 999, id="micros-truncated"),
    pytest.param("2024-01-01T00:30:00+01:00", 1_704_065_400_000, id="offset-crosses-year"),
    pytest.param("2024-02-29T23:59:59.999-05:00", 1_709_269_199_999, id="leap-day"),
    pytest.param("2000-01-01T00:00:00Z", MIN_TS_MS, id="oldest-allowed"),
    pytest.param(TS_MS, TS_MS, id="epoch-ms-int"),
    pytest.param(str(TS_MS), TS_MS, id="epoch-ms-str"),
    pytest.param(f" {TS_MS} ", TS_MS, id="epoch-ms-str-padded"),
    pytest.param(float(TS_MS), TS_MS, id="epoch-ms-whole-float"),
    pytest.param(NOW_MS + DAY_MS, NOW_MS + DAY_MS, id="newest-allowed"),
]


@pytest.mark.parametrize(("ts", "expected_ms"), TIMESTAMPS)
def test_timestamps_become_utc_epoch_ms(ts: object, expected_ms: int) -> None:
    event = accepted(page_view(ts=ts))
    assert event.ts == expected_ms
    assert type(event.ts) is int


IDENTIFIERS = [
    pytest.param({"user_id": " u1 "}, ("u1", None, None), id="user-trimmed"),
    pytest.param({"user_id": DROP, "anonymous_id": "\ta-1\n"}, (None, "a-1", None), id="anon-trimmed"),
    pytest.param({"user_id": 12345}, ("12345", None, None), id="user-int"),
    pytest.param({"user_id": "u1", "anonymous_id": "undefined"}, ("u1", None, None), id="anon-placeholder-dropped"),
    pytest.param({"user_id": "0", "anonymous_id": "a1"}, (None, "a1", None), id="user-zero-dropped"),
    pytest.param({"user_id": "guest", "anonymous_id": " a1 "}, (None, "a1", None), id="user-guest-dropped"),
    pytest.param(
        {"user_id": "00000000-0000-0000-0000-000000000000", "anonymous_id": "a1"}, (None, "a1", None), id="uuid-zero"
    ),
    pytest.param({"user_id": "u1", "email": "not-an-email"}, ("u1", None, None), id="invalid-email-dropped"),
    pytest.param(
        {"user_id": "null", "email": " Ann@Example.com "},
        (None, None, expected_hash("ann@example.com")),
        id="email-only-remains",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), IDENTIFIERS)
def test_identifiers(fields: dict[str, object], expected: tuple[str | None, str | None, str | None]) -> None:
    event = accepted(page_view(**fields))
    assert (event.user_id, event.anonymous_id, event.email) == expected


def test_email_is_normalized_then_hmac_sha256_with_the_salt() -> None:
    event = accepted(page_view(email=f"  {CLEAR_EMAIL}  "))
    assert event.email == expected_hash("ann.smith@example.com")
    assert event.email == hmac.new(b"test-salt", b"ann.smith@example.com", hashlib.sha256).hexdigest()
    assert accepted(page_view(email="ann.smith@example.com")).email == event.email


def test_email_hash_depends_on_the_salt() -> None:
    other = Cleaner(CleaningConfig(email_salt="another-salt"))
    first = accepted(page_view(email=CLEAR_EMAIL)).email
    second = accepted(page_view(email=CLEAR_EMAIL), other).email
    assert first is not None and second is not None
    assert first != second
    assert second == expected_hash(CLEAR_EMAIL, "another-salt")


def test_email_only_customer_is_keyed_by_the_hash() -> None:
    event = accepted(page_view(user_id=DROP, email=CLEAR_EMAIL))
    assert event.customer_key == f"email:{expected_hash(CLEAR_EMAIL)}"


def _contains_clear_email(text: str) -> bool:
    return CLEAR_EMAIL in text or CLEAR_EMAIL.lower() in text or "ann.smith" in text.lower()


def test_clear_email_is_nowhere_in_the_event() -> None:
    event = accepted(page_view(email=CLEAR_EMAIL))
    assert not _contains_clear_email(json.dumps(asdict(event)))
    assert not _contains_clear_email(json.dumps(event.to_record()))


PHONE, IP = "+44 20 7946 0958", "203.0.113.7"


def test_pii_properties_are_hashed_on_entry_wherever_they_sit() -> None:
    event = accepted(page_view(Phone=PHONE, properties={"ip": IP, "name": {"first": "Ann"}, "utm": "x"}))
    assert event.properties == {
        "Phone": expected_hash(PHONE),
        "ip": expected_hash(IP),
        "name": "<redacted>",
        "utm": "x",
    }
    text = json.dumps(event.to_record())
    assert PHONE not in text and IP not in text and "Ann" not in text


def test_pii_properties_are_hashed_in_dead_letters() -> None:
    letter = rejected(page_view(phone=PHONE, type="teleport", properties={"ip_address": IP}))
    payload = json.loads(letter.payload)
    assert payload["phone"] == expected_hash(PHONE) and payload["properties"]["ip_address"] == expected_hash(IP)


def test_the_pii_list_is_configurable() -> None:
    cleaner = Cleaner(CleaningConfig(email_salt="test-salt", pii_properties=frozenset({"loyalty_card"})))
    event = accepted(page_view(loyalty_card=1234, phone=PHONE), cleaner)
    assert event.properties == {"loyalty_card": expected_hash("1234"), "phone": PHONE}


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(page_view(email=CLEAR_EMAIL, type="teleport"), id="unknown-type"),
        pytest.param(page_view(email=f" {CLEAR_EMAIL} ", ts="2023-11-01T10:00:00"), id="naive-ts"),
        pytest.param(page_view(email=CLEAR_EMAIL, user_id=DROP, quantity=0), id="email-only-out-of-range"),
        pytest.param(page_view(email=[CLEAR_EMAIL]), id="email-in-a-list"),
        pytest.param({"email": {"address": CLEAR_EMAIL}}, id="email-in-an-object"),
        pytest.param([CLEAR_EMAIL], id="not-an-object"),
        pytest.param(f'{{"event_id": "e1", "email": "{CLEAR_EMAIL}", ', id="raw-text"),
    ],
)
def test_clear_email_is_nowhere_in_a_dead_letter(record: object) -> None:
    letter = rejected(record)
    assert not _contains_clear_email(json.dumps(letter.to_dict()))


def test_dead_letter_keeps_the_hash_of_a_string_email() -> None:
    letter = rejected(page_view(email=f" {CLEAR_EMAIL} ", type="teleport"))
    assert json.loads(letter.payload)["email"] == expected_hash(CLEAR_EMAIL)


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(f'{{"event_id": "e1", "type": "page_view", "email": "{CLEAR_EMAIL}"', id="not-json"),
        pytest.param(json.dumps([CLEAR_EMAIL, "x"]), id="json-array"),
        pytest.param(json.dumps(CLEAR_EMAIL), id="json-string"),
        pytest.param(json.dumps(page_view(email=CLEAR_EMAIL, padding="x" * MAX_BYTES)), id="oversized"),
    ],
)
def test_clear_email_is_nowhere_in_a_source_dead_letter(tmp_path: Path, line: str) -> None:
    results = read_and_clean(write_lines(tmp_path / "in.jsonl", [line]))
    assert len(results) == 1
    letter = results[0][1]
    assert isinstance(letter, DeadLetter)
    assert not _contains_clear_email(json.dumps(letter.to_dict()))
    assert expected_hash(CLEAR_EMAIL) in letter.payload  # hashed, so replays can still join on it


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"currency": "eur"}, "EUR", id="lower"),
        pytest.param({"currency": " usd "}, "USD", id="padded"),
        pytest.param({"currency": "JpY"}, "JPY", id="mixed"),
    ],
)
def test_currency_is_upper_cased(fields: dict[str, object], expected: str) -> None:
    assert accepted(purchase(**fields)).currency == expected


@pytest.mark.parametrize(
    ("fields", "attribute", "expected", "kind"),
    [
        pytest.param({"amount": "12.50"}, "amount", 12.5, float, id="amount-str"),
        pytest.param({"amount": 7}, "amount", 7.0, float, id="amount-int"),
        pytest.param({"amount": " 0 "}, "amount", 0.0, float, id="amount-zero-padded"),
        pytest.param({"price": "3.99"}, "price", 3.99, float, id="price-str"),
        pytest.param({"price": 0}, "price", 0.0, float, id="price-zero"),
        pytest.param({"quantity": "3"}, "quantity", 3, int, id="quantity-str"),
        pytest.param({"quantity": 2.0}, "quantity", 2, int, id="quantity-whole-float"),
    ],
)
def test_numeric_strings_are_coerced(fields: dict[str, object], attribute: str, expected: object, kind: type) -> None:
    value = getattr(accepted(purchase(**fields)), attribute)
    assert value == expected
    assert type(value) is kind


def test_transaction_fields_are_kept() -> None:
    event = accepted(refund(order_id=" o-9 ", amount="99.5", currency="gbp", product_id="sku", category="shoes"))
    assert (event.type, event.order_id, event.amount, event.currency) == ("refund", "o-9", 99.5, "GBP")
    assert (event.product_id, event.category) == ("sku", "shoes")


def test_unknown_fields_are_kept_in_properties() -> None:
    event = accepted(page_view(utm_source="news", nested={"a": [1, 2]}, flag=None))
    assert event.properties == {"utm_source": "news", "nested": {"a": [1, 2]}, "flag": None}


def test_unknown_fields_merge_with_given_properties() -> None:
    event = accepted(page_view(properties={"a": 1, "b": "given"}, b="top-level", c=3))
    assert event.properties == {"a": 1, "b": "top-level", "c": 3}


def test_known_fields_stay_out_of_properties() -> None:
    record = purchase(session_id="s1", product_id="p", category="c", price=1, quantity=1, consent={"x": True})
    assert accepted(record).properties == {}


@pytest.mark.parametrize(
    ("consent", "expected"),
    [
        pytest.param({"personalization": False}, {"personalization": False}, id="denied"),
        pytest.param({"personalization": True, "ads": False}, {"personalization": True, "ads": False}, id="mixed"),
        pytest.param({}, {}, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_consent(consent: dict[str, bool] | None, expected: dict[str, bool] | None) -> None:
    assert accepted(page_view(consent=consent)).consent == expected


def test_event_carries_source_and_position() -> None:
    event = accepted(page_view(session_id=" s1 "))
    assert (event.source, event.position, event.session_id, event.event_id) == (SOURCE, POSITION, "s1", "e1")


def test_input_record_is_not_mutated() -> None:
    record = page_view(email=CLEAR_EMAIL, type="teleport", extra=1)
    snapshot = json.dumps(record)
    rejected(record)
    accepted({**record, "type": "login"})
    assert json.dumps(record) == snapshot


# --------------------------------------------------------------------------------------------------
# Dead-letter metadata
# --------------------------------------------------------------------------------------------------

DEAD_LETTER_METADATA = [
    pytest.param(page_view(type="teleport"), "e1", TS_MS, id="int-ts"),
    pytest.param(page_view(type="teleport", ts="2023-11-01T11:00:00.250+01:00"), "e1", TS_MS + 250, id="rfc3339-ts"),
    pytest.param(page_view(ts="2030-01-01T00:00:00Z"), "e1", 1_893_456_000_000, id="future-ts-kept"),
    pytest.param(page_view(ts="1999-12-31T23:59:59Z"), "e1", 946_684_799_000, id="old-ts-kept"),
    pytest.param(page_view(ts="not a time"), "e1", None, id="unparseable-ts"),
    pytest.param(page_view(ts="2023-11-01T10:00:00"), "e1", None, id="naive-ts"),
    pytest.param(page_view(ts=DROP, event_id=42), "42", None, id="int-event-id"),
    pytest.param(page_view(event_id=["e1"]), None, TS_MS, id="list-event-id"),
    pytest.param(page_view(event_id=True), None, TS_MS, id="bool-event-id"),
    pytest.param(page_view(ts="99999999999999999999999"), "e1", None, id="ts-beyond-avro-long"),
    pytest.param("not an object", None, None, id="not-an-object"),
]


@pytest.mark.parametrize(("record", "event_id", "event_time"), DEAD_LETTER_METADATA)
def test_dead_letter_metadata(record: object, event_id: str | None, event_time: int | None) -> None:
    letter = rejected(record)
    assert (letter.source, letter.position) == (SOURCE, POSITION)
    assert (letter.event_id, letter.event_time) == (event_id, event_time)


def test_dead_letter_payload_is_the_original_record_as_json() -> None:
    record = page_view(type="teleport", extra={"n": [1, 2.5, None]}, price="1.5")
    letter = rejected(record)
    assert json.loads(letter.payload) == record
    assert letter.to_dict()["payload"] == letter.payload


def test_dead_letter_payload_of_raw_text_is_the_text(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", ["{not json at all"])
    ((raw, letter),) = read_and_clean(path)
    assert isinstance(letter, DeadLetter)
    assert letter.payload == raw.payload == "{not json at all"
    assert (letter.event_id, letter.event_time) == (None, None)


# --------------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------------

CONTRACT_FIELDS = sorted(KNOWN_FIELDS)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
    | st.sampled_from([2**63, -(2**63) - 1, 10**400, -(10**400)])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
PLAUSIBLE = st.one_of(
    st.sampled_from(sorted(EVENT_TYPES)),
    st.integers(min_value=MIN_TS_MS - 10, max_value=NOW_MS + 2 * DAY_MS),
    st.sampled_from(["2023-11-01T10:00:00Z", "2023-11-01T10:00:00", "1999-01-01T00:00:00+00:00", str(TS_MS), "²"]),
    st.sampled_from(["eur", "USD", "XYZ", " gbp ", "", "12.50", "-1", "0", "1.5", "NaN", "inf", "1e400"]),
    st.sampled_from(["ann@example.com", " A@B.CO ", "undefined", "guest", "null", "0", "u-1", "  "]),
    st.dictionaries(TEXT, st.booleans(), max_size=3),
)
FIELD_VALUES = PLAUSIBLE | JSON_VALUES
CONTRACT_RECORDS = st.dictionaries(
    st.sampled_from([*CONTRACT_FIELDS, "utm", "extra"]) | TEXT, FIELD_VALUES, max_size=len(CONTRACT_FIELDS) + 2
)


@st.composite
def valid_records(draw: st.DrawFn) -> dict[str, Any]:
    """Records the contract accepts, in the many shapes it allows."""
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    ts_ms = draw(st.integers(min_value=MIN_TS_MS, max_value=NOW_MS + DAY_MS))
    record: dict[str, Any] = {
        "event_id": draw(st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12).filter(str.strip)),
        "type": kind,
        "ts": draw(st.sampled_from([ts_ms, str(ts_ms), "2023-11-01T15:30:00.25+05:30"])),
    }
    identifiers = {
        "user_id": st.sampled_from(["u1", " u-2 ", "42"]),
        "anonymous_id": st.sampled_from(["a1", "anon-7"]),
        "email": st.sampled_from(["ann@example.com", " Bob@Example.ORG "]),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(identifiers)), min_size=1, max_size=3, unique=True))
    record.update({name: draw(identifiers[name]) for name in chosen})
    if kind in {"purchase", "refund"}:
        record["order_id"] = draw(st.sampled_from(["o1", "order-2"]))
        record["amount"] = draw(st.one_of(st.floats(min_value=0, max_value=1e9), st.sampled_from(["12.50", "0"])))
        record["currency"] = draw(st.sampled_from(["EUR", "usd", " gbp "]))
    if draw(st.booleans()):
        record["quantity"] = draw(st.integers(min_value=1, max_value=1000))
    if draw(st.booleans()):
        record["consent"] = draw(st.dictionaries(st.sampled_from(["personalization", "ads"]), st.booleans()))
    if draw(st.booleans()):
        record["utm"] = draw(TEXT)
    return record


def _check_event(event: Event) -> None:
    assert MIN_TS_MS <= event.ts <= NOW_MS + DAY_MS
    assert event.type in EVENT_TYPES
    assert event.event_id.strip() == event.event_id != ""
    assert event.identifiers(), "an accepted event has at least one identifier"
    assert event.email is None or (len(event.email) == 64 and set(event.email) <= set("0123456789abcdef"))
    assert event.currency is None or event.currency in iso4217_codes()
    for number in (event.amount, event.price):
        assert number is None or (math.isfinite(number) and number >= 0)
    assert event.quantity is None or (type(event.quantity) is int and event.quantity > 0)
    if event.type in {"purchase", "refund"}:
        assert None not in (event.order_id, event.amount, event.currency)


def _check_dead_letter(letter: DeadLetter) -> None:
    assert letter.reason in {str(r) for r in Reason} - {str(Reason.LATE)}
    assert isinstance(letter.payload, str) and letter.message
    assert (letter.source, letter.position) == (SOURCE, POSITION)
    assert letter.event_time is None or -(2**63) <= letter.event_time < 2**63


@settings(max_examples=200, deadline=None)
@given(record=JSON_VALUES | CONTRACT_RECORDS)
def test_clean_never_raises_and_returns_one_result(record: object) -> None:
    result = clean(record)
    assert type(result) in (Event, DeadLetter)
    if isinstance(result, Event):
        _check_event(result)
    else:
        _check_dead_letter(result)
    assert clean(record) == result  # deterministic: no hidden clock or state


@settings(max_examples=200, deadline=None)
@given(record=valid_records())
def test_valid_records_are_accepted(record: dict[str, Any]) -> None:
    event = accepted(record)
    _check_event(event)
    assert event.event_id == record["event_id"]


@settings(max_examples=200, deadline=None)
@given(record=CONTRACT_RECORDS, email=st.emails())
def test_clear_email_never_leaves_cleaning(record: dict[str, Any], email: str) -> None:
    record = {**record, "email": email}
    others = json.dumps({k: v for k, v in record.items() if k != "email"}, default=repr)
    result = clean(record)
    text = json.dumps(asdict(result), default=repr)
    if email.strip() not in others and email.strip().lower() not in others.lower():
        assert email.strip() not in text
        assert email.strip().lower() not in text


NON_JSON_LINES = (
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), min_size=1, max_size=40)
    .map(lambda text: "{" + text)
    .filter(lambda line: line.encode().strip() != b"" and not _is_json(line.encode()))
)


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


LINES = st.one_of(
    valid_records().map(lambda record: ("valid", json.dumps(record))),
    CONTRACT_RECORDS.map(lambda record: ("any", json.dumps(record, default=repr))),
    JSON_VALUES.map(lambda value: ("any", json.dumps(value))),
    NON_JSON_LINES.map(lambda line: ("not-json", line)),
    st.just(("oversized", json.dumps(page_view(padding="x" * MAX_BYTES)))),
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(LINES, max_size=25))
def test_every_line_is_accounted_for(lines: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write_lines(Path(directory) / "stream.jsonl", [line for _, line in lines])
        results = read_and_clean(path)
    events = [result for _, result in results if isinstance(result, Event)]
    letters = [result for _, result in results if isinstance(result, DeadLetter)]
    assert len(lines) == len(results) == len(events) + len(letters)
    assert [raw.position for raw, _ in results] == [str(n) for n in range(1, len(lines) + 1)]
    for (kind, _), (_, result) in zip(lines, results, strict=True):
        if kind == "valid":
            assert isinstance(result, Event)
        elif kind == "not-json":
            assert isinstance(result, DeadLetter) and result.reason == str(Reason.MALFORMED)
        elif kind == "oversized":
            assert isinstance(result, DeadLetter) and result.reason == str(Reason.OVERSIZED)


# --------------------------------------------------------------------------------------------------
# Bounded numbers: cleaning.max_amount and cleaning.max_quantity
# --------------------------------------------------------------------------------------------------

LIMITS = CleaningConfig(email_salt=SALT)  # the defaults: max_amount 1e9, max_quantity 1,000,000


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(purchase(amount=1e9), id="amount-at-max"),
        pytest.param(purchase(amount="1000000000"), id="amount-at-max-str"),
        pytest.param(purchase(amount=1e-308), id="amount-tiny"),
        pytest.param(purchase(amount=5e-324), id="amount-subnormal"),
        pytest.param(page_view(price=1e9), id="price-at-max"),
        pytest.param(page_view(quantity=1_000_000), id="quantity-at-max"),
        pytest.param(page_view(price=1_000.0, quantity=1_000_000), id="line-value-at-max"),
        pytest.param(page_view(price=1e-308, quantity=1_000_000), id="line-value-tiny"),
    ],
)
def test_numbers_at_the_limits_are_accepted(record: dict[str, Any]) -> None:
    event = accepted(record)
    json.dumps(event.to_record(), allow_nan=False)  # strict JSON


def test_limits_are_configurable_and_named_in_the_message() -> None:
    cleaner = Cleaner(CleaningConfig(email_salt=SALT, max_amount=100.0, max_quantity=3))
    assert accepted(purchase(amount=100), cleaner).amount == 100.0
    letter = clean(purchase(amount=100.5), cleaner)
    assert isinstance(letter, DeadLetter) and (letter.reason, letter.field) == ("out_of_range", "amount")
    assert letter.message == "amount exceeds cleaning.max_amount (100)"
    letter = clean(page_view(quantity=4), cleaner)
    assert isinstance(letter, DeadLetter) and letter.message == "quantity exceeds cleaning.max_quantity (3)"
    letter = clean(page_view(price=40, quantity=3), cleaner)
    assert isinstance(letter, DeadLetter) and letter.message == "price x quantity exceeds cleaning.max_amount (100)"


EXTREME_MONEY = st.sampled_from(
    [0.0, 5e-324, 1e-308, 0.01, 1e9, math.nextafter(1e9, math.inf), 1e15, 1e300, 1e308, 1.7976931348623157e308]
)
MONEY = st.floats(min_value=0, max_value=2e9) | st.floats(min_value=0, allow_infinity=False) | EXTREME_MONEY
QUANTITIES = st.integers(1, 2_000_000) | st.sampled_from([1_000_000, 1_000_001, 2**53, 10**20, 10**300])


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["purchase", "refund", "add_to_cart"]),
    amount=MONEY,
    price=st.none() | MONEY,
    quantity=st.none() | QUANTITIES,
    as_text=st.booleans(),
)
def test_numbers_inside_the_limits_are_accepted_all_others_are_out_of_range(
    kind: str, amount: float, price: float | None, quantity: int | None, as_text: bool
) -> None:
    """Any finite amount, price and quantity (as numbers or as text): accepted exactly when each is
    within the limits and so is price x quantity; otherwise an out_of_range dead letter."""
    fields = {"amount": amount, "price": price, "quantity": quantity}
    given = {k: (repr(v) if as_text else v) for k, v in fields.items() if v is not None}
    result = clean(purchase(type=kind, **given))
    line_value = None if price is None or quantity is None else price * float(quantity)
    inside = (
        amount <= 1e9
        and (price is None or price <= 1e9)
        and (quantity is None or quantity <= 1_000_000)
        and (line_value is None or line_value <= 1e9)
    )
    if inside:
        assert isinstance(result, Event) and result.amount == amount
        json.dumps(result.to_record(), allow_nan=False)
    else:
        assert isinstance(result, DeadLetter) and result.reason == str(Reason.OUT_OF_RANGE)
        assert result.field in ("amount", "price", "quantity") and "cleaning.max_" in result.message
        json.dumps(result.to_dict(), allow_nan=False)


def _config(**cleaning: object) -> CleaningConfig:
    return parse_config({"segments": {"big": {"feature": "spend", ">=": 1}}, "cleaning": cleaning}, env={}).cleaning


def test_limits_from_the_config_file() -> None:
    assert (_config().max_amount, _config().max_quantity) == (1e9, 1_000_000)
    config = _config(max_amount="1e6", max_quantity=5.0)  # YAML reads 1e6 (no dot) as text
    assert (config.max_amount, config.max_quantity) == (1e6, 5)
    assert _config(max_amount=MAX_AMOUNT_CEILING, max_quantity=MAX_QUANTITY_CEILING).max_amount == 1e15


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_amount", 0),
        ("max_amount", -5),
        ("max_amount", 1e16),
        ("max_amount", math.inf),
        ("max_amount", math.nan),
        ("max_amount", "nan"),
        ("max_amount", "lots"),
        ("max_amount", True),
        ("max_quantity", 0),
        ("max_quantity", 1.5),
        ("max_quantity", 2**53 + 1),
        ("max_quantity", [10]),
    ],
)
def test_limits_out_of_bounds_are_config_errors(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"cleaning\.{key} must be a (whole )?number above 0 and at most"):
        _config(**{key: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["top", "properties", "nested"])
def test_a_non_finite_number_outside_the_number_fields_is_a_dead_letter(value: float, where: str) -> None:
    """JSON has no NaN, but Avro doubles do (extra fields, maps): they would reach every output."""
    record = {
        "top": page_view(score=value),
        "properties": page_view(properties={"score": value}),
        "nested": page_view(extra={"list": [1.0, value]}),
    }[where]
    letter = rejected(record)
    assert (letter.reason, letter.field) == (
        "invalid_number",
        {"top": "score", "nested": "extra"}.get(where, "properties"),
    )
    payload = json.loads(letter.payload, parse_constant=_refuse)  # strict JSON: the number as text
    assert json.dumps(payload).count({math.inf: '"Infinity"', -math.inf: '"-Infinity"'}.get(value, '"NaN"')) == 1


def test_a_non_finite_pii_property_is_hashed_not_rejected() -> None:
    assert accepted(page_view(phone=math.nan)).properties == {"phone": expected_hash("nan")}


def test_dead_letter_payloads_are_strict_json() -> None:
    letter = rejected(purchase(amount=math.inf, price=math.nan, extra={"a": -math.inf}))
    assert json.loads(letter.payload, parse_constant=_refuse) == purchase(
        amount="Infinity", price="NaN", extra={"a": "-Infinity"}
    )


def _refuse(literal: str) -> None:
    raise AssertionError(f"not strict JSON: {literal}")


# --------------------------------------------------------------------------------------------------
# Truncated payloads: an oversized line's head keeps no fragment of an address cut at its end
# --------------------------------------------------------------------------------------------------

HEAD_BYTES = 256  # what a dead letter keeps of an oversized line (pipelines/sources.py)
# No hex digit in the local part: a fragment of it can then never be part of a 64-hex-digit hash.
LOCAL_CHARS = "ghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ._%+-éøñß"


def _fragments(text: str, shortest: int = 3) -> set[str]:
    return {text[i:j] for i in range(len(text)) for j in range(i + shortest, len(text) + 1)}


@settings(max_examples=80, deadline=None)
@given(
    local=st.text(LOCAL_CHARS, min_size=3, max_size=30),
    domain=st.text("ghijklmnopqrstuvwxyz", min_size=1, max_size=12).map(lambda d: f"{d}.example"),
    field=st.sampled_from(["email", "contact", "note"]),
)
def test_an_oversized_line_cut_anywhere_in_an_address_keeps_no_fragment_of_it(
    local: str, domain: str, field: str
) -> None:
    """For every byte at which the head can end, from before the address to after it: no run of 3 or
    more characters of the local part that the rest of the line does not hold is in the dead letter."""
    address = f"{local}@{domain}"
    before = f'{{"event_id":"e1","type":"page_view","ts":{TS_MS},"user_id":"u1","pad":"'
    between = f'","{field}":"'
    after = '","tail":"' + "t" * MAX_BYTES + '"}'
    for cut in range(-1, len(address.encode()) + 2):  # the head ends ``cut`` bytes into the address
        pad = "p" * (HEAD_BYTES - cut - len(before) - len(between))
        line = before + pad + between + address + after
        letter = clean_record(CLEANER, decode_json(line.encode(), SOURCE, POSITION, MAX_BYTES), NOW_MS)
        assert isinstance(letter, DeadLetter) and letter.reason == str(Reason.OVERSIZED)
        assert letter.payload.startswith(before + pad)  # the head is kept up to the address
        elsewhere = before + pad + between + after
        leaked = {f for f in _fragments(local) if f in letter.payload and f not in elsewhere}
        assert not leaked, (cut, letter.payload)


@pytest.mark.parametrize(
    ("head_end", "kept"),
    [
        pytest.param('"email":"ann.lee@', '"email":"', id="after-at"),
        pytest.param('"email":"ann.l', '"email":"', id="inside-local-part"),
        pytest.param('"email":"ann.lee@exa', '"email":"', id="inside-domain"),
        pytest.param('"email":"ann.lee@example.com"', None, id="whole-address-hashed"),
        pytest.param('"n":1}', '"n":1}', id="not-in-a-token"),
    ],
)
def test_the_cut_token_of_an_oversized_head_is_dropped(head_end: str, kept: str | None) -> None:
    start = '{"event_id":"e1","pad":"'
    pad = "p" * (HEAD_BYTES - len(start) - len('",') - len(head_end))
    head = start + pad + '",' + head_end  # the head ends where head_end does
    letter = clean_record(CLEANER, decode_json((head + "x" * MAX_BYTES).encode(), SOURCE, POSITION, MAX_BYTES), NOW_MS)
    assert isinstance(letter, DeadLetter) and len(head.encode()) == HEAD_BYTES
    address = expected_hash("ann.lee@example.com")
    assert letter.payload == start + pad + '",' + (f'"email":"{address}"' if kept is None else kept)


def test_an_address_with_its_domain_cut_off_is_hashed_in_raw_text() -> None:
    """A line that is not JSON, cut by its producer right after the '@': the local part is hashed too."""
    letter = rejected('{"event_id": "e1", "email": "ann.lee@')
    assert letter.payload == '{"event_id": "e1", "email": "' + expected_hash("ann.lee@")
