"""Hostile input: the decoders and the cleaning step under generated garbage (hypothesis).

Every input ends as exactly one accepted :class:`Event` or one :class:`DeadLetter` with a reason code,
the original payload kept in the dead letter (its email hashed), and no exception escapes; file
decoding accounts for every record. Input classes: random bytes, invalid UTF-8, huge strings and
payloads, deep nesting, wrong types everywhere, NaN and infinities, timestamps at the edges, Avro
written with another schema, truncated and mutated Avro files. ``tests/test_cleaning.py`` has the
contract tables; the long fuzz run (a million inputs) is ``python bench/fuzz.py``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import hmac
import io
import json
import lzma
import math
import pickle
import re
import tempfile
import time
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from pipelines.job import accepted_event_time, clean_record
from pipelines.sources import MAX_AVRO_BLOCK_BYTES, RawRecord, decode_json, read_records
from schemas import load_schema
from transforms.cleaning import DAY_MS, DEFAULT_PII_PROPERTIES, KNOWN_FIELDS, MAX_NESTING, Cleaner, CleaningConfig
from transforms.dead_letters import DeadLetter, Reason
from transforms.events import EVENT_TYPES, TRANSACTION_TYPES, Event
from transforms.identifiers import normalize_email
from transforms.timestamps import MIN_TS_MS, parse_event_time

SALT = "fuzz-salt"
SOURCE = "fuzz"
POSITION = "1"
NOW_MS = 1_710_000_000_000  # 2024-03-09T16:00:00Z
TS_MS = 1_698_832_800_000  # 2023-11-01T10:00:00Z
MAX_BYTES = 512
CLEANER = Cleaner(CleaningConfig(email_salt=SALT, max_record_bytes=MAX_BYTES))
REASONS = {str(reason) for reason in Reason} - {str(Reason.LATE)}  # late is decided after cleaning
DEAD_LETTER_SCHEMA = load_schema("DeadLetter")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
# The address-shaped token of raw text, its domain possibly empty, as cleaning first wrote it (quadratic,
# fine on short texts): an independent oracle for the linear pattern cleaning uses now.
_TOKEN_CHAR = r"[^\s@\"'\\,;:<>()\[\]{}]"
_ADDRESS = re.compile(rf"{_TOKEN_CHAR}+@{_TOKEN_CHAR}*")
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\x80",  # a lone continuation byte
    b"\xc3\x28",  # a lead byte without its continuation
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # an encoded UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf0\x9f\x98",  # a truncated 4-byte sequence
]


# --------------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------------


def hashed(address: str) -> str:
    return hmac.new(SALT.encode(), address.strip().lower().encode(), hashlib.sha256).hexdigest()


def text_payload(text: str) -> str:
    """What a dead letter keeps of raw text: the text, every address-shaped token hashed."""
    return _ADDRESS.sub(lambda m: hashed(m.group()), text) if "@" in text else text


def head_payload(head: str) -> str:
    """What a dead letter keeps of an oversized line's head: its last token (an address cut anywhere,
    perhaps) dropped, character by character, then as :func:`text_payload`."""
    end = len(head)
    while end and (head[end - 1] == "@" or re.fullmatch(_TOKEN_CHAR, head[end - 1])):
        end -= 1
    return text_payload(head[:end])


def pii_hashed(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields with the values of the default PII names hashed: text and numbers as their text,
    null and booleans kept, anything else redacted."""

    def hidden(value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str | float) or (isinstance(value, int) and value.bit_length() <= 14_000):
            return hashed(str(value))
        return "<redacted>"

    return {k: hidden(v) if k.lower() in DEFAULT_PII_PROPERTIES else v for k, v in fields.items()}


def record_payload(record: dict[str, Any]) -> dict[str, Any]:
    """What a dead letter keeps of an object: the object, its email and PII fields hashed (or redacted
    if not text), those of its ``properties`` too."""
    record = pii_hashed(record)
    if isinstance(record.get("properties"), dict):
        record = {**record, "properties": pii_hashed(record["properties"])}
    email = record.get("email")
    if isinstance(email, str):
        return {**record, "email": hashed(email)}
    if email is not None:
        return {**record, "email": "<redacted>"}
    return record


def depth(value: object) -> int:
    """Levels of dicts and lists (iterative)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def strict_form(value: object) -> object:
    """``value`` as a dead letter's payload holds it, strict JSON: NaN and infinities as the text of
    their JSON-like literals (so equal records compare equal)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: strict_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_form(v) for v in value]
    return value


def strict_loads(text: str) -> Any:
    """``json.loads`` refusing the NaN and Infinity literals (not JSON; Python's json takes them)."""

    def refuse(literal: str) -> None:
        raise ValueError(f"not strict JSON: {literal}")

    return json.loads(text, parse_constant=refuse)


def check(result: object, source: str = SOURCE, position: str = POSITION) -> Event | DeadLetter:
    """Exactly one outcome, well formed, and writable by every output (JSON, Avro, pickle for Beam)."""
    assert type(result) in (Event, DeadLetter), f"neither an Event nor a DeadLetter: {result!r}"
    assert (result.source, result.position) == (source, position)
    if isinstance(result, Event):
        assert MIN_TS_MS <= result.ts <= NOW_MS + DAY_MS and result.type in EVENT_TYPES
        assert result.event_id and result.identifiers()
        assert result.email is None or re.fullmatch(r"[0-9a-f]{64}", result.email)
        for number in (result.price, result.amount):
            assert number is None or (math.isfinite(number) and number >= 0)
        assert depth(result.properties) <= MAX_NESTING
        json.dumps(result.to_record(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    else:
        assert result.reason in REASONS and result.message
        assert isinstance(result.payload, str)
        fastavro.validation.validate(result.to_dict(), DEAD_LETTER_SCHEMA, raise_errors=True)  # event_time: long
        json.dumps(result.to_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    pickle.loads(pickle.dumps(result))
    return result


def check_object(record: object, result: object) -> Event | DeadLetter:
    """The outcome of cleaning ``record`` (a decoded value): a dead letter keeps it as its payload."""
    check(result)
    if isinstance(result, DeadLetter):
        if isinstance(record, str):
            assert result.payload == text_payload(record)
        elif isinstance(record, dict) and depth(record) <= 100:
            assert strict_loads(result.payload) == strict_form(record_payload(record))
        elif isinstance(record, dict):  # too deep for json.dumps: cut, still JSON
            assert result.reason == str(Reason.MALFORMED)
            assert "<nested too deep>" in result.payload or strict_loads(result.payload) is not None
        if isinstance(record, dict) and depth(record) > MAX_NESTING:
            assert (result.reason, result.field) == (str(Reason.MALFORMED), None)
    return result


def check_line(data: bytes, result: object, max_bytes: int = MAX_BYTES) -> Event | DeadLetter:
    """The outcome of one JSON-encoded record (a JSONL line without its line end, a stream entry)."""
    check(result)
    if len(data) > max_bytes:
        assert isinstance(result, DeadLetter) and (result.reason, result.field) == (str(Reason.OVERSIZED), None)
        assert result.payload == head_payload(data[:256].decode("utf-8", "replace"))
        assert result.message == f"record of {len(data)} bytes exceeds {max_bytes}"
        return result
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        assert isinstance(result, DeadLetter) and (result.reason, result.field) == (str(Reason.MALFORMED), None)
        assert result.payload == text_payload(data.decode("utf-8", "replace"))
        return result
    if depth(value) > MAX_NESTING:
        assert isinstance(result, DeadLetter) and (result.reason, result.field) == (str(Reason.MALFORMED), None)
        assert result.payload == text_payload(data.decode("utf-8"))  # the text: the object is too deep
        return result
    assert result == CLEANER.clean(value, SOURCE, POSITION, NOW_MS)  # decoding adds nothing to cleaning
    return check_object(value, result)


def line_through(data: bytes, max_bytes: int = MAX_BYTES) -> Event | DeadLetter:
    cleaner = (
        CLEANER if max_bytes == MAX_BYTES else Cleaner(CleaningConfig(email_salt=SALT, max_record_bytes=max_bytes))
    )
    return clean_record(cleaner, decode_json(data, SOURCE, POSITION, max_bytes), NOW_MS)


def clean(record: object) -> Event | DeadLetter:
    return CLEANER.clean(record, SOURCE, POSITION, NOW_MS)


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=16)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.none() | st.booleans() | st.integers() | FLOATS | TEXT
JSON_VALUES = st.recursive(
    SCALARS, lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3), max_leaves=8
)
VALID_TS = st.integers(min_value=MIN_TS_MS, max_value=NOW_MS + DAY_MS)


@st.composite
def valid_records(draw: st.DrawFn) -> dict[str, Any]:
    """A record the contract accepts."""
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    record: dict[str, Any] = {
        "event_id": draw(st.sampled_from(["e1", "evt-2", "3f2a"])),
        "type": kind,
        "ts": draw(VALID_TS | VALID_TS.map(str) | st.just("2023-11-01T10:00:00.123+01:00")),
    }
    name, value = draw(st.sampled_from([("user_id", "u1"), ("anonymous_id", " a-1 "), ("email", "Ann@Example.com")]))
    record[name] = value
    if kind in TRANSACTION_TYPES:
        record |= {"order_id": "o1", "amount": draw(st.floats(0, 1e6) | st.just("12.50")), "currency": "eur"}
    if draw(st.booleans()):
        record |= {"price": 1.5, "quantity": 2, "product_id": "p1", "consent": {"ads": True}, "utm": "x"}
    return record


def dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def nested(levels: int, kind: str, leaf: object = 1) -> object:
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


# --------------------------------------------------------------------------------------------------
# Random bytes, invalid UTF-8, huge strings and payloads
# --------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=MAX_BYTES + 64))
def test_random_bytes(data: bytes) -> None:
    check_line(data, line_through(data))


@FUZZ
@given(record=valid_records(), data=st.data())
def test_valid_json_mutated_bytewise(record: dict[str, Any], data: st.DataObject) -> None:
    line = bytearray(dumps(record))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(line)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip" and at < len(line):
            line[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            line[at:at] = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from(INVALID_UTF8))
        elif action == "delete":
            del line[at : at + data.draw(st.integers(1, 8))]
        else:
            del line[at:]
    check_line(bytes(line), line_through(bytes(line)))


@FUZZ
@given(record=valid_records(), bad=st.sampled_from(INVALID_UTF8), where=st.floats(0, 1))
def test_invalid_utf8_is_a_malformed_dead_letter(record: dict[str, Any], bad: bytes, where: float) -> None:
    good = dumps(record)
    assert isinstance(line_through(good), Event)
    at = int(where * len(good))
    line = good[:at] + bad + good[at:]
    letter = check_line(line, line_through(line))
    assert isinstance(letter, DeadLetter) and letter.reason == str(Reason.MALFORMED)


FILLERS = ["x", "@", ".", "a@", "a.", " ", "0", "9", "é", "😀", "\\", '"', "a@b.", "\u2028", "\x00"]
STRING_FIELDS = ["event_id", "type", "ts", "user_id", "anonymous_id", "email", "device_id", "currency", "utm"]


@FUZZ
@given(
    record=valid_records(),
    field=st.sampled_from(STRING_FIELDS),
    filler=st.sampled_from(FILLERS),
    size=st.integers(0, 3 * MAX_BYTES) | st.sampled_from([MAX_BYTES - 80, MAX_BYTES - 60, MAX_BYTES + 1]),
)
def test_huge_strings_through_the_size_cap(record: dict[str, Any], field: str, filler: str, size: int) -> None:
    """A field of ``size`` repeated characters: under the cap it is cleaned, over it an oversized dead letter."""
    line = dumps({**record, field: "a" + filler * size})
    check_line(line, line_through(line))


@FEW
@given(
    field=st.sampled_from(STRING_FIELDS),
    text=st.sampled_from(["a@" + "." * 40_000 + " b", "a" * 60_000, "a@" * 30_000, "1" * 60_000, "@." * 30_000]),
)
def test_huge_strings_past_the_cap_clean_fast(field: str, text: str) -> None:
    """Records above the cap, handed to the cleaning step directly (no decoder in front): no stall."""
    record = {"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1", field: text}
    started = time.perf_counter()
    check_object(record, clean(record))
    check_object(text, clean(text))  # raw text: scanned for addresses to hash
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("extra", [-1, 0, 1, 2, 10 * MAX_BYTES])
def test_huge_payload_at_the_cap(extra: int) -> None:
    base = dumps({"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1", "pad": ""})
    line = dumps(
        {
            "event_id": "e1",
            "type": "page_view",
            "ts": TS_MS,
            "user_id": "u1",
            "pad": "p" * (MAX_BYTES - len(base) + extra),
        }
    )
    result = check_line(line, line_through(line))
    assert isinstance(result, Event if extra <= 0 else DeadLetter)


# --------------------------------------------------------------------------------------------------
# Deep nesting, wrong types everywhere, NaN and infinities
# --------------------------------------------------------------------------------------------------


@FUZZ
@given(
    levels=st.integers(0, 1100) | st.integers(MAX_NESTING - 3, MAX_NESTING + 3),
    kind=st.sampled_from(["list", "dict"]),
    field=st.sampled_from(["properties", "utm", "consent", "event_id", "ts", None]),
)
def test_deep_nesting(levels: int, kind: str, field: str | None) -> None:
    value = nested(levels, kind)
    record = (
        value if field is None else {"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1", field: value}
    )
    line = dumps(record) if levels < 900 else None  # json.dumps itself recurses
    if line is not None:
        check_line(line, line_through(line))
    else:  # the text, built without recursion: orjson refuses more than 1024 levels
        text = (
            ('{"event_id":"e1","type":"page_view","ts":1,"user_id":"u1","utm":' if field else "")
            + (("[" * levels + "1" + "]" * levels) if kind == "list" else ('{"k":' * levels + "1" + "}" * levels))
            + ("}" if field else "")
        )
        check_line(text.encode(), line_through(text.encode()))
    check_object(record, clean(record))


def test_deep_nesting_past_every_recursion_limit() -> None:
    """Python objects far deeper than json, repr and pickle recurse: a dead letter, still JSON."""
    for kind in ("list", "dict"):
        record = {"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1", "x": nested(50_000, kind)}
        letter = check(clean(record))
        assert isinstance(letter, DeadLetter) and letter.reason == str(Reason.MALFORMED)
        assert '"<nested too deep>"' in letter.payload and json.loads(letter.payload)["event_id"] == "e1"
        assert (letter.event_id, letter.event_time) == ("e1", TS_MS)


WRONG_TYPED = st.booleans() | st.lists(JSON_VALUES, max_size=3)


@FUZZ
@given(record=valid_records(), field=st.sampled_from(sorted(KNOWN_FIELDS)), value=WRONG_TYPED)
def test_wrong_type_in_any_field(record: dict[str, Any], field: str, value: object) -> None:
    """A valid record with one field of a type the contract never allows there: wrong_type, that field."""
    assert isinstance(clean(record), Event)
    bad = {**record, field: value}
    letter = check_object(bad, clean(bad))
    assert isinstance(letter, DeadLetter) and (letter.reason, letter.field) == (str(Reason.WRONG_TYPE), field)
    check_line(dumps(bad), line_through(dumps(bad)))


@FUZZ
@given(
    record=valid_records(),
    changes=st.dictionaries(st.sampled_from(sorted(KNOWN_FIELDS)) | TEXT, JSON_VALUES, min_size=1, max_size=6),
)
def test_wrong_types_everywhere(record: dict[str, Any], changes: dict[str, Any]) -> None:
    bad = {**record, **changes}
    result = check_object(bad, clean(bad))
    assert clean(bad) == result  # deterministic (no NaN in an Event: a non-finite property is a dead letter)
    line = json.dumps(bad).encode()  # NaN and Infinity literals: not JSON, malformed
    check_line(line, line_through(line, max_bytes=1 << 16), max_bytes=1 << 16)


NON_FINITE = [math.nan, math.inf, -math.inf, "NaN", "nan", "Infinity", "-inf", "1e999", "-1e999", 10**400, -(10**400)]


@FUZZ
@given(
    record=valid_records(),
    field=st.sampled_from(["price", "amount", "quantity", "ts"]),
    value=st.sampled_from(NON_FINITE),
)
def test_nan_and_infinities(record: dict[str, Any], field: str, value: object) -> None:
    bad = {**record, field: value}
    letter = check_object(bad, clean(bad))
    assert isinstance(letter, DeadLetter) and letter.field == field
    if field != "ts":
        assert letter.reason == str(Reason.INVALID_NUMBER)
    elif value == 10**400:
        assert (letter.reason, letter.event_time) == (str(Reason.FUTURE_TIMESTAMP), None)  # no Avro long
    elif value == -(10**400):
        assert (letter.reason, letter.event_time) == (str(Reason.TIMESTAMP_TOO_OLD), None)
    else:
        assert letter.reason == str(Reason.INVALID_TIMESTAMP)
    if not isinstance(value, float):  # JSON has no NaN: as text they reach the cleaning step
        check_line(dumps(bad), line_through(dumps(bad)))


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_non_finite_json_numbers_are_malformed(token: bytes) -> None:
    line = (
        b'{"event_id":"e1","type":"page_view","ts":' + str(TS_MS).encode() + b',"user_id":"u1","price":' + token + b"}"
    )
    letter = check_line(line, line_through(line))
    assert isinstance(letter, DeadLetter) and letter.reason == str(Reason.MALFORMED)


# --------------------------------------------------------------------------------------------------
# Timestamps at the edges
# --------------------------------------------------------------------------------------------------

EDGES = [MIN_TS_MS - 1, MIN_TS_MS, MIN_TS_MS + 1, NOW_MS + DAY_MS - 1, NOW_MS + DAY_MS, NOW_MS + DAY_MS + 1]
EXTREMES = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def naive(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC).replace(tzinfo=None)  # hypothesis bounds are naive


def expected_ts_outcome(ms: int) -> str | None:
    if ms < MIN_TS_MS:
        return str(Reason.TIMESTAMP_TOO_OLD)
    if ms > NOW_MS + DAY_MS:
        return str(Reason.FUTURE_TIMESTAMP)
    return None


@FUZZ
@given(
    ms=st.sampled_from(EDGES + EXTREMES) | st.integers(MIN_TS_MS - 5, MIN_TS_MS + 5) | st.integers(),
    form=st.sampled_from(["int", "digits", "zero-padded", "float", "padded"]),
)
def test_epoch_milliseconds_at_the_edges(ms: int, form: str) -> None:
    if form in ("digits", "zero-padded", "padded") and ms < 0:
        form = "int"
    if form == "float" and not (abs(ms) < 2**1000 and float(ms) == ms):
        form = "int"
    ts: object = {
        "int": ms,
        "digits": str(ms),
        "zero-padded": "000" + str(ms),
        "padded": f"  {ms}\t",
        "float": float(ms),
    }[form]
    record = {"event_id": "e1", "type": "page_view", "ts": ts, "user_id": "u1"}
    result = check_object(record, clean(record))
    reason = expected_ts_outcome(ms)
    if reason is None:
        assert isinstance(result, Event) and result.ts == ms
    else:
        assert isinstance(result, DeadLetter) and (result.reason, result.field) == (reason, "ts")
        assert result.event_time == (ms if -(2**63) <= ms < 2**63 else None)


OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@FUZZ
@given(
    moment=st.datetimes(min_value=naive(1, 1, 2), max_value=naive(9999, 12, 30))
    | st.datetimes(min_value=naive(1999, 12, 31), max_value=naive(2000, 1, 2))
    | st.datetimes(min_value=naive(2024, 3, 9), max_value=naive(2024, 3, 12)),
    zone=OFFSETS | st.just(UTC),
    spec=st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    style=st.sampled_from(["iso", "z", "lower", "naive", "space"]),
)
def test_rfc3339_at_the_edges(moment: datetime, zone: timezone, spec: str, style: str) -> None:
    digits = {"seconds": 0, "milliseconds": 3, "microseconds": 6}[spec]
    moment = moment.replace(microsecond=moment.microsecond // 10 ** (6 - digits) * 10 ** (6 - digits))
    aware = moment.replace(tzinfo=zone)
    text = aware.isoformat(timespec=spec)
    if style == "z" and zone is UTC:
        text = text.replace("+00:00", "Z")
    elif style == "lower":
        text = text.lower()
    elif style == "naive":
        text = moment.isoformat(timespec=spec)
    elif style == "space":
        text = f" {text} "
    record = {"event_id": "e1", "type": "page_view", "ts": text, "user_id": "u1"}
    result = check_object(record, clean(record))
    if style == "naive":
        assert isinstance(result, DeadLetter) and result.reason == str(Reason.NAIVE_TIMESTAMP)
        return
    ms = (aware - _EPOCH) // timedelta(milliseconds=1)  # exact integer arithmetic
    reason = expected_ts_outcome(ms)
    if reason is None:
        assert isinstance(result, Event) and result.ts == ms
    else:
        assert isinstance(result, DeadLetter) and result.reason == reason and result.event_time == ms


@pytest.mark.parametrize(
    "text",
    ["2023-02-29T10:00:00Z", "2023-12-31T23:59:60Z", "2023-11-01T24:00:00Z", "2023-11-01T10:00:00+24:00", "10:00:00Z",
     "+2023-11-01T10:00:00Z", "²", "1" * 5000, "", "   ", "T", "Z"],
)  # fmt: skip
def test_invalid_timestamp_texts_are_dead_letters(text: str) -> None:
    record = {"event_id": "e1", "type": "page_view", "ts": text, "user_id": "u1"}
    letter = check_object(record, clean(record))
    assert isinstance(letter, DeadLetter) and (letter.reason, letter.field) == (str(Reason.INVALID_TIMESTAMP), "ts")


# --------------------------------------------------------------------------------------------------
# JSON Lines files: every line is accounted for
# --------------------------------------------------------------------------------------------------

LINE_KINDS = st.one_of(
    valid_records().map(dumps),
    st.binary(max_size=80),  # random bytes: may hold line ends of their own
    st.tuples(valid_records().map(dumps), st.sampled_from(INVALID_UTF8)).map(lambda p: p[0][:5] + p[1] + p[0][5:]),
    st.integers(MAX_BYTES - 3, MAX_BYTES + 3).map(lambda n: b'"' + b"x" * (n - 2) + b'"'),  # around the cap
    st.integers(MAX_BYTES - 3, MAX_BYTES + 3).map(lambda n: b"y" * n),
    st.tuples(st.integers(MAX_BYTES - 2, MAX_BYTES + 3), st.sampled_from([b"\r", b"\r\r", b"\r\r\r"])).map(
        lambda p: b"z" * p[0] + p[1]
    ),  # a line end of several CRs
    st.integers(2, 20).map(lambda n: b"w" * (n * MAX_BYTES)),  # far over the cap
    st.integers(MAX_BYTES, 3 * MAX_BYTES).map(lambda n: b" " * n),  # a long blank line
    st.integers(0, 1100).map(lambda n: b"[" * n + b"]" * n),
    st.just(b""),
)


def model_lines(content: bytes) -> list[tuple[str, bytes]]:
    """(position, line) of every record a JSONL file holds: non-blank lines, line ends removed."""
    return [
        (str(number), line.rstrip(b"\r\n"))
        for number, line in enumerate(content.split(b"\n"), start=1)
        if line.rstrip(b"\r\n").strip()
    ]


@FUZZ
@given(lines=st.lists(LINE_KINDS, max_size=12), zipped=st.booleans(), crlf=st.booleans(), last_newline=st.booleans())
def test_jsonl_file_accounts_for_every_line(lines: list[bytes], zipped: bool, crlf: bool, last_newline: bool) -> None:
    content = (b"\r\n" if crlf else b"\n").join(lines) + (b"\n" if last_newline else b"")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / ("in.jsonl.gz" if zipped else "in.jsonl")
        path.write_bytes(gzip.compress(content) if zipped else content)
        raws = list(read_records(path, MAX_BYTES))
    expected = model_lines(content)
    assert [raw.position for raw in raws] == [position for position, _ in expected]
    results = [clean_record(CLEANER, raw, NOW_MS) for raw in raws]
    events = sum(isinstance(result, Event) for result in results)
    letters = sum(isinstance(result, DeadLetter) for result in results)
    assert len(expected) == len(results) == events + letters
    for raw, (position, line) in zip(raws, expected, strict=True):
        assert raw == decode_json(line, str(path), position, MAX_BYTES)  # bounded reads decode like whole lines
        check_line(line, clean_record(CLEANER, RawRecord(SOURCE, POSITION, raw.payload, raw.error), NOW_MS))


def test_a_huge_line_is_never_held_in_memory(tmp_path: Path) -> None:
    """A 64 MiB line without a newline (a gzip bomb): counted in pieces, one oversized dead letter."""
    size = 64 << 20
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(dumps({"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1"}) + b"\n")
        for _ in range(size // (1 << 20)):
            handle.write(b"B" * (1 << 20))
        handle.write(b"\r\n" + dumps({"event_id": "e3", "type": "page_view", "ts": TS_MS, "user_id": "u1"}))
    tracemalloc.start()
    try:
        raws = list(read_records(path, 64 * 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes"
    assert [raw.position for raw in raws] == ["1", "2", "3"]
    assert raws[1].error is not None and raws[1].error.reason == Reason.OVERSIZED
    assert raws[1].error.message == f"record of {size} bytes exceeds {64 * 1024}"
    assert raws[1].payload == "B" * 256
    assert [type(clean_record(CLEANER, raw, NOW_MS)) for raw in raws] == [Event, DeadLetter, Event]


# --------------------------------------------------------------------------------------------------
# Avro: files written with another schema, truncated and mutated files
# --------------------------------------------------------------------------------------------------

_FIELD_STRINGS = {
    "type": st.sampled_from(sorted(EVENT_TYPES)),
    "ts": st.sampled_from(["2023-11-01T10:00:00Z", str(TS_MS), "2023-11-01T10:00:00", "yesterday"]),
    "user_id": st.sampled_from(["u1", "null", " "]),
    "email": st.sampled_from(["ann@example.com", "not an address"]),
    "currency": st.sampled_from(["EUR", "XYZ"]),
}
_JSON_TEXTS = st.sampled_from(
    ['"x"', "1", "[1, 2]", '{"a": {"b": null}}', "NaN", "1e999", '"\\ud800"', "{", "[" * 2000]
)


def avro_values(schema: Any, name: str = "") -> st.SearchStrategy[Any]:
    """Values of an Avro ``schema`` (a field called ``name`` gets plausible contract values)."""
    if isinstance(schema, list):
        return st.one_of([avro_values(branch, name) for branch in schema])
    if isinstance(schema, dict):
        logical, kind = schema.get("logicalType"), schema["type"]
        if logical == "decimal":
            return st.decimals(min_value=-(10**6), max_value=10**6, places=2, allow_nan=False)
        if logical == "timestamp-millis":
            return st.datetimes(min_value=naive(1971, 1, 1), max_value=naive(2200, 1, 1), timezones=st.just(UTC))
        if logical == "uuid":
            return st.uuids()
        if logical == "date":
            return st.dates()
        if kind == "record":
            return st.fixed_dictionaries({f["name"]: avro_values(f["type"], f["name"]) for f in schema["fields"]})
        if kind == "array":
            return st.lists(avro_values(schema["items"], name), max_size=3)
        if kind == "map":
            if name == "properties" and schema["values"] == "string":
                return st.dictionaries(TEXT, _JSON_TEXTS | TEXT, max_size=3)
            return st.dictionaries(TEXT, avro_values(schema["values"]), max_size=3)
        if kind == "enum":
            return st.sampled_from(schema["symbols"])
        if kind == "fixed":
            return st.binary(min_size=schema["size"], max_size=schema["size"])
        return avro_values(kind, name)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1) | st.sampled_from(EDGES),
        "float": st.floats(width=32, allow_nan=True, allow_infinity=True),
        "double": FLOATS,
        "bytes": st.binary(max_size=12),
        "string": _FIELD_STRINGS.get(name, TEXT) | TEXT,
    }[schema]


_counter = iter(range(10**9))
ALTERNATIVE_TYPES = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ["null", "double"], ["string", "long", "boolean"],
    {"type": "array", "items": "string"}, {"type": "map", "values": "long"}, {"type": "map", "values": "bytes"},
    {"type": "map", "values": "string"}, {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
    {"type": "long", "logicalType": "timestamp-millis"}, {"type": "string", "logicalType": "uuid"},
    {"type": "int", "logicalType": "date"},
]  # fmt: skip


def _named(kind: str) -> dict[str, Any]:
    n = next(_counter)
    if kind == "enum":
        return {"type": "enum", "name": f"E{n}", "symbols": ["page_view", "purchase", "OTHER"]}
    if kind == "fixed":
        return {"type": "fixed", "name": f"F{n}", "size": 4}
    return {"type": "record", "name": f"R{n}", "fields": [{"name": "event_id", "type": "string"}]}


@st.composite
def other_schemas(draw: st.DrawFn) -> Any:
    """A writer schema that is not the contract's: fields retyped, dropped or added, or not a record at all."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from([*ALTERNATIVE_TYPES, "enum", "fixed", "record"]).map(
            lambda t: _named(t) if t in ("enum", "fixed", "record") else t
        ))  # fmt: skip
    name = draw(st.sampled_from(["ClickstreamEvent", "Transaction"]))
    base = json.loads((Path(schemas.__file__).parent / f"{name}.avsc").read_text(encoding="utf-8"))
    fields = [{"name": f["name"], "type": f["type"]} for f in base["fields"]]
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(fields) - 1))
        change = draw(st.sampled_from(["retype", "drop", "add"]))
        new_type = draw(st.sampled_from([*ALTERNATIVE_TYPES, "enum", "fixed", "record"]))
        new_type = _named(new_type) if new_type in ("enum", "fixed", "record") else new_type
        if change == "retype":
            fields[at] = {"name": fields[at]["name"], "type": new_type}
        elif change == "drop" and len(fields) > 1:
            del fields[at]
        else:
            fields.append({"name": f"extra_{next(_counter)}", "type": new_type})
    return {"type": "record", "name": f"Other{next(_counter)}", "fields": fields}


def _write_avro(path: Path, schema: Any, records: list[Any], codec: str = "null", sync_interval: int = 16000) -> None:
    with path.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), records, codec=codec, sync_interval=sync_interval)


def _read_and_check(path: Path) -> tuple[list[RawRecord], list[Event | DeadLetter]]:
    raws = list(read_records(path, MAX_BYTES))
    results = [check(clean_record(CLEANER, raw, NOW_MS), str(path), raw.position) for raw in raws]
    return raws, results


@FEW
@given(data=st.data(), codec=st.sampled_from(["null", "deflate"]))
def test_avro_written_with_another_schema(data: st.DataObject, codec: str) -> None:
    """Whatever the writer schema, every record is one outcome (none takes the rest of the file with it)."""
    schema = data.draw(other_schemas())
    most = 1 if schema == "null" else 8  # more records of no bytes each: a corrupt block (see the bomb test)
    records = data.draw(st.lists(avro_values(schema), min_size=1, max_size=most))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "other.avro"
        _write_avro(path, schema, records, codec)
        raws, results = _read_and_check(path)
    assert [raw.position for raw in raws] == [f"record {n}" for n in range(1, len(records) + 1)]
    assert all(raw.error is None for raw in raws)
    assert (
        len(records)
        == len(results)
        == sum(isinstance(r, Event) for r in results) + sum(isinstance(r, DeadLetter) for r in results)
    )


def _contract_records(count: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"e{n}", "type": "page_view", "ts": TS_MS + n, "user_id": f"u{n % 3}", "properties": {"n": str(n)}}
        for n in range(count)
    ]


@FEW
@given(count=st.integers(1, 40), cut=st.floats(0, 1), codec=st.sampled_from(["null", "deflate"]))
def test_truncated_avro_accounts_for_what_it_holds(count: int, cut: float, codec: str) -> None:
    records = _contract_records(count)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cut.avro"
        _write_avro(path, load_schema("ClickstreamEvent"), records, codec, sync_interval=200)
        whole = path.read_bytes()
        sync = whole[-16:]
        block_ends = {m.end() for m in re.finditer(re.escape(sync), whole)}
        length = int(cut * len(whole))
        path.write_bytes(whole[:length])
        raws, results = _read_and_check(path)
    corrupt = [raw for raw in raws if raw.error is not None]
    decoded = [raw for raw in raws if raw.error is None]
    assert [raw.payload["event_id"] for raw in decoded] == [r["event_id"] for r in records[: len(decoded)]]
    assert all(isinstance(result, Event) for result in results[: len(decoded)])
    if length in block_ends:  # a whole number of blocks is a valid, shorter file
        assert corrupt == []
    else:  # the rest of the file is reported, once, as the last record
        assert len(corrupt) == 1 and raws[-1] is corrupt[0]
        assert corrupt[0].position == f"after record {len(decoded)}"
        assert isinstance(results[-1], DeadLetter) and results[-1].reason == str(Reason.MALFORMED)
    assert len(results) == len(decoded) + len(corrupt) <= count + 1


@FEW
@given(data=st.data(), codec=st.sampled_from(["null", "deflate"]))
def test_mutated_avro_never_crashes(data: st.DataObject, codec: str) -> None:
    records = _contract_records(data.draw(st.integers(1, 20)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mutated.avro"
        _write_avro(path, load_schema("ClickstreamEvent"), records, codec, sync_interval=300)
        content = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, len(content) - 1))
            content[at] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(content))
        started = time.perf_counter()
        raws, _ = _read_and_check(path)
    assert time.perf_counter() - started < 5
    corrupt = [n for n, raw in enumerate(raws) if raw.error is not None]
    assert corrupt in ([], [len(raws) - 1])  # at most one, and last


# --------------------------------------------------------------------------------------------------
# Regressions: what fuzzing found
# --------------------------------------------------------------------------------------------------


def test_regression_epoch_digits_beyond_the_int_conversion_limit() -> None:
    """``"ts": "1"*5000`` raised ValueError (int() refuses more than 4300 digits) out of clean and dead_letter."""
    letter = check(clean({"event_id": "e1", "type": "page_view", "ts": "1" * 5000, "user_id": "u1"}))
    assert isinstance(letter, DeadLetter) and (letter.reason, letter.field) == (str(Reason.INVALID_TIMESTAMP), "ts")
    letter = check(clean({"ts": "9" * 5000}))  # dead_letter parses ts again for event_time
    assert isinstance(letter, DeadLetter) and (letter.reason, letter.event_time) == (str(Reason.MISSING_FIELD), None)
    assert accepted_event_time(CLEANER, RawRecord(SOURCE, POSITION, {"ts": "1" * 5000}), NOW_MS) is None


def test_regression_ints_too_long_for_str() -> None:
    """An event_id of 5000 digits raised ValueError from str() in cleaning and in the dead letter."""
    letter = check(clean({"event_id": 10**5000, "type": "page_view", "ts": TS_MS, "user_id": "u1"}))
    assert isinstance(letter, DeadLetter) and (letter.reason, letter.field) == (str(Reason.WRONG_TYPE), "event_id")
    assert letter.event_id is None and '"<int of ' in letter.payload


@pytest.mark.parametrize("email", ["a@" + "." * 50_000 + " b", "a@b" + ".c" * 30_000 + "@", "x@" + "a." * 30_000 + " "])
def test_regression_email_check_is_not_quadratic(email: str) -> None:
    """normalize_email ran its regex before the length check: 3 s for a 20,000-character value."""
    started = time.perf_counter()
    assert normalize_email(email) is None
    check(clean({"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1", "email": email}))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("text", ["a" * 65_000, "a@" * 32_000, "." * 65_000 + "@", "x" * 65_000 + "@ann@example.com"])
def test_regression_address_scan_of_raw_text_is_linear(text: str) -> None:
    """Hashing addresses in a dead letter's raw text took 16 s on a 64 KiB line without an '@'."""
    started = time.perf_counter()
    letter = check(clean_record(CLEANER, decode_json(text.encode(), SOURCE, POSITION, 1 << 16), NOW_MS))
    assert time.perf_counter() - started < 0.5
    assert isinstance(letter, DeadLetter) and letter.reason == str(Reason.MALFORMED)
    # The oracle's pattern is quadratic on the run of dots (all one token before an '@': hashed whole).
    assert letter.payload == (hashed(text) if text.startswith(".") else text_payload(text))
    assert "ann@example.com" not in letter.payload


def test_regression_deep_records_are_dead_letters_not_crashes() -> None:
    """1,000 levels: json.dumps of the dead letter payload raised RecursionError; fewer were accepted as
    events that every output (json, orjson at 255 levels) then failed to write."""
    line = b'{"event_id":"e1","type":"page_view","ts":1,"user_id":"u1","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    letter = check(line_through(line, max_bytes=1 << 16))
    assert isinstance(letter, DeadLetter) and letter.reason == str(Reason.MALFORMED)
    assert letter.payload == line.decode()
    record = {"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1", "x": nested(300, "dict")}
    letter = check(clean(record))
    assert isinstance(letter, DeadLetter) and letter.message == f"record nests deeper than {MAX_NESTING} levels"
    assert json.loads(letter.payload) == record
    assert isinstance(clean({**record, "x": nested(MAX_NESTING - 1, "list")}), Event)


def test_regression_avro_records_of_another_shape_do_not_end_the_file(tmp_path: Path) -> None:
    """A record whose ``properties`` were not a map, or a file of non-records, raised in ``_from_avro``,
    which read_records reported as a corrupt file: every later record was lost."""
    cases: list[tuple[Any, list[Any]]] = [
        (
            {"type": "record", "name": "P", "fields": [{"name": "event_id", "type": "string"},
             {"name": "properties", "type": {"type": "array", "items": "string"}}]},
            [{"event_id": "a", "properties": ["x"]}, {"event_id": "b", "properties": []}],
        ),
        ("long", [1, 2, 3]),
        ("null", [None]),
        ({"type": "map", "values": "string"}, [{"event_id": "a"}, {}]),
    ]  # fmt: skip
    for schema, records in cases:
        path = tmp_path / "shape.avro"
        _write_avro(path, schema, records)
        raws, results = _read_and_check(path)
        assert [raw.position for raw in raws] == [f"record {n}" for n in range(1, len(records) + 1)]
        assert all(isinstance(result, DeadLetter) and "corrupt" not in result.message for result in results)


def test_regression_avro_properties_are_json_decoded_safely(tmp_path: Path) -> None:
    """``properties`` values went through json.loads: 2,000 nested brackets raised RecursionError (the rest of
    the file lost), '"\\ud800"' gave a lone surrogate that no UTF-8 output can write, and 'NaN' a float NaN."""
    schema = load_schema("ClickstreamEvent")
    values = [
        "[" * 2000 + "]" * 2000,
        '"\\ud800"',
        "NaN",
        "[" * (MAX_NESTING + 5) + "]" * (MAX_NESTING + 5),
        '{"a": 1}',
    ]
    records = [
        {"event_id": f"e{n}", "type": "page_view", "ts": TS_MS, "user_id": "u1", "properties": {"v": value}}
        for n, value in enumerate(values)
    ]
    _write_avro(tmp_path / "props.avro", schema, records)
    _, results = _read_and_check(tmp_path / "props.avro")
    assert all(isinstance(result, Event) for result in results) and len(results) == len(values)
    assert [result.properties["v"] for result in results] == [*values[:4], {"a": 1}]  # kept as the text


def test_regression_non_finite_avro_doubles_are_dead_letters(tmp_path: Path) -> None:
    """An Avro double NaN or infinity in an extra field or a map of doubles was kept in the event's
    properties: every JSON of the event (a late event's dead letter) then held NaN, which is not JSON."""
    schema = {
        "type": "record",
        "name": "Doubles",
        "fields": [
            *({"name": name, "type": "string"} for name in ("event_id", "type", "user_id")),
            {"name": "ts", "type": "long"},
            {"name": "score", "type": "double"},
            {"name": "properties", "type": {"type": "map", "values": "double"}},
        ],
    }
    base = {"event_id": "e1", "type": "page_view", "user_id": "u1", "ts": TS_MS}
    records = [
        {**base, "score": math.nan, "properties": {}},
        {**base, "score": 1.0, "properties": {"x": -math.inf}},
        {**base, "score": 1e308, "properties": {"x": 5e-324}},
    ]
    _write_avro(tmp_path / "doubles.avro", schema, records)
    _, results = _read_and_check(tmp_path / "doubles.avro")  # check(): every result writes as strict JSON
    assert [(r.reason, r.field) for r in results[:2] if isinstance(r, DeadLetter)] == [
        (str(Reason.INVALID_NUMBER), "score"),
        (str(Reason.INVALID_NUMBER), "properties"),
    ]
    assert [strict_loads(r.payload)["score"] for r in results[:2] if isinstance(r, DeadLetter)] == ["NaN", 1.0]
    assert isinstance(results[2], Event) and results[2].properties == {"score": 1e308, "x": 5e-324}


def test_regression_rfc3339_milliseconds_are_exact() -> None:
    """``int(datetime.timestamp() * 1000)`` was 1 ms short for about 0.6% of timestamps (float rounding)."""
    assert parse_event_time("2039-07-06T01:24:33.693+00:00") == 2_193_528_273_693
    assert parse_event_time("2023-11-01T10:00:00.001Z") == TS_MS + 1
    assert parse_event_time("1999-12-31T23:59:59.999Z") == MIN_TS_MS - 1


def test_regression_oversized_line_size_counts_a_line_end_split_across_reads(tmp_path: Path) -> None:
    """A long line is counted in 1 MiB reads: its CRs before the LF may end one read and begin the next."""
    line = b"a" * (MAX_BYTES + 2 + (1 << 20) - 1) + b"\r"  # the first read after the head ends with this CR
    path = write_file(tmp_path / "split.jsonl", line + b"\r\n" + b"{}\n")
    raws = list(read_records(path, MAX_BYTES))
    assert [raw.position for raw in raws] == ["1", "2"]
    assert raws[0] == decode_json(line.rstrip(b"\r"), str(path), "1", MAX_BYTES)


def write_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _zigzag(n: int) -> bytes:
    """``n`` as Avro encodes a long (zig-zag varint)."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, "long", n)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "schema",
    [
        "null",
        {"type": "record", "name": "Empty", "fields": []},
        {"type": "record", "name": "Nulls", "fields": [{"name": "a", "type": "null"}, {"name": "b", "type": "null"}]},
    ],
)
def test_regression_avro_block_of_zero_byte_records_is_no_endless_stream(tmp_path: Path, schema: Any) -> None:
    """A block of a schema that holds no data claimed 2**62 records in 84 bytes: as many dead letters,
    the job never ended. More records than bytes in a block: corrupt."""
    path = tmp_path / "bomb.avro"
    _write_avro(path, schema, [None if schema == "null" else {"a": None, "b": None}])
    content = path.read_bytes()
    sync = content[-16:]
    header = content.index(sync) + 16
    path.write_bytes(content[:header] + _zigzag(2**62) + b"\x00" + sync)
    started = time.perf_counter()
    raws, results = _read_and_check(path)
    assert time.perf_counter() - started < 1
    assert [raw.position for raw in raws] == ["after record 0"]
    assert isinstance(results[0], DeadLetter) and "claims 4611686018427387904 records" in results[0].message


@pytest.mark.parametrize(
    "items",
    [
        "null",
        {"type": "record", "name": "Empty", "fields": []},
        {"type": "fixed", "name": "Zero", "size": 0},
        "Defined",  # a zero-byte record defined by an earlier field, then named
    ],
)
def test_regression_avro_array_of_zero_byte_items_is_refused(tmp_path: Path, items: Any) -> None:
    """An array of nulls whose count said 2**40 in a few bytes: fastavro built the list (memory, time)."""
    schema = {
        "type": "record",
        "name": "Bomb",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "defined", "type": {"type": "record", "name": "Defined", "fields": []}},
            {"name": "a", "type": {"type": "array", "items": items}},
        ],
    }
    path = tmp_path / "bomb.avro"
    _write_avro(path, schema, [{"event_id": "e", "defined": {}, "a": []}])
    content = path.read_bytes()
    sync = content[-16:]
    header = content.index(sync) + 16
    payload = b"\x02e" + _zigzag(2**40) + b"\x00"  # event_id "e", then an array block of 2**40 items
    path.write_bytes(content[:header] + b"\x02" + _zigzag(len(payload)) + payload + sync)
    started = time.perf_counter()
    raws, _ = _read_and_check(path)
    assert time.perf_counter() - started < 1
    assert [raw.position for raw in raws] == ["after record 0"]
    assert raws[0].error is not None and "array of values that take no bytes" in raws[0].error.message


def test_avro_schemas_of_zero_byte_values_still_read(tmp_path: Path) -> None:
    """A record of one null, and arrays of non-empty items, still read (one record per byte at most)."""
    _write_avro(tmp_path / "one.avro", "null", [None])
    assert [raw.position for raw in read_records(tmp_path / "one.avro", MAX_BYTES)] == ["record 1"]
    schema = {"type": "record", "name": "A", "fields": [{"name": "a", "type": {"type": "array", "items": "boolean"}}]}
    _write_avro(tmp_path / "arrays.avro", schema, [{"a": [True] * 100}] * 3)
    assert [raw.error for raw in read_records(tmp_path / "arrays.avro", MAX_BYTES)] == [None] * 3


@pytest.mark.parametrize("codec", ["deflate", "bzip2", "xz"])
def test_avro_codecs_read_as_written(tmp_path: Path, codec: str) -> None:
    """The capped block readers read what fastavro wrote, record for record."""
    schema = {"type": "record", "name": "R", "fields": [{"name": "event_id", "type": "string"}]}
    records = [{"event_id": f"e{i}" * 20} for i in range(500)]
    _write_avro(tmp_path / "in.avro", schema, records, codec=codec, sync_interval=2000)
    raws = list(read_records(tmp_path / "in.avro", 10_000))
    assert [raw.payload for raw in raws] == records


@pytest.mark.parametrize(
    ("codec", "compressor"),
    [
        ("deflate", lambda: zlib.compressobj(9, zlib.DEFLATED, -15)),
        ("bzip2", bz2.BZ2Compressor),
        ("xz", lzma.LZMACompressor),
    ],
)
def test_regression_avro_decompression_bomb_is_a_dead_letter_in_bounded_memory(
    tmp_path: Path, codec: str, compressor: Any
) -> None:
    """A block of a few KB that inflates to 80 MiB (or 80 GiB: fastavro inflated a block whole)
    stops at MAX_AVRO_BLOCK_BYTES; the rest of the file is one dead letter."""
    path = tmp_path / "bomb.avro"
    _write_avro(path, {"type": "record", "name": "R", "fields": [{"name": "s", "type": "string"}]}, [], codec=codec)
    content = path.read_bytes()
    sync = content[-16:]  # an empty file ends with its header's sync marker
    packer, zeros = compressor(), b"\0" * (1 << 24)
    bomb = b"".join(packer.compress(zeros) for _ in range(5)) + packer.flush()
    path.write_bytes(content + _zigzag(1) + _zigzag(len(bomb)) + bomb + sync)
    tracemalloc.start()
    try:
        raws, results = _read_and_check(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_AVRO_BLOCK_BYTES  # the output buffer grows by doubling
    assert [raw.position for raw in raws] == ["after record 0"]
    assert isinstance(results[0], DeadLetter) and "inflates to more than" in results[0].message


PII_NAMES = st.sampled_from(sorted(DEFAULT_PII_PROPERTIES)).flatmap(lambda name: st.sampled_from([name, name.upper()]))


@FUZZ
@given(
    record=valid_records(),
    pii=st.dictionaries(PII_NAMES, JSON_VALUES, min_size=1, max_size=4),
    nested=st.booleans(),
)
def test_pii_fields_are_hashed_wherever_they_sit(record: dict[str, Any], pii: dict[str, Any], nested: bool) -> None:
    """PII names with any value, at the top level or in ``properties``: an event keeps them hashed,
    a dead letter's payload too (the regression: ``{"IP": null}`` became ``"<redacted>"``); an int
    too long for ``str()`` is redacted, not a crash."""
    pii = {**pii, "SSN": 10**5000} if len(pii) == 1 else pii
    bad = {**record, "properties": pii} if nested else {**record, **pii}
    result = check_object(bad, clean(bad))  # a dead letter: its payload against record_payload
    if isinstance(result, Event):
        given = bad.get("properties") or {}
        merged = {**given, **{k: v for k, v in bad.items() if k not in KNOWN_FIELDS}}
        assert result.properties == pii_hashed(merged)  # no NaN: a non-finite number is a dead letter
