"""Avro schemas: conforming records round-trip, records from real code paths validate, Avro input works.

Round trips write hypothesis-generated records with ``fastavro.writer`` into an in-memory container
and read them back. Records built by the real code (cleaning, the keyed step, run counts) must
validate against the schema they are documented to follow. Avro container files are an input
format: read through :mod:`pipelines.sources`, they must clean like JSON Lines, and a damaged file
must surface as a ``malformed`` record or a :class:`SourceError`, never as an unexpected exception.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.validation import validate
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.job import clean_record
from pipelines.sources import RawRecord, SourceError, check_source, read_records
from schemas import SCHEMA_NAMES, load_schema
from transforms.changes import IdentityMerge, SegmentChange
from transforms.cleaning import DAY_MS, Cleaner, CleaningConfig
from transforms.customer import CustomerLogic, StreamConfig
from transforms.dead_letters import DeadLetter, Reason
from transforms.events import Event
from transforms.rules import parse_rules
from transforms.summary import RunCounts

SALT = "schema-salt"
MAX_BYTES = 4096
NOW_MS = 1_710_000_000_000  # 2024-03-09T16:00:00Z
TS_MS = 1_698_832_800_000  # 2023-11-01T10:00:00Z
CLEANER = Cleaner(CleaningConfig(email_salt=SALT, max_record_bytes=MAX_BYTES))
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1

# --------------------------------------------------------------------------------------------------
# Strategies: one per schema
# --------------------------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)  # Avro strings are UTF-8
LONGS = st.integers(min_value=LONG_MIN, max_value=LONG_MAX)
DOUBLES = st.floats(allow_nan=False, allow_infinity=False)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def maps(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(TEXT, values, max_size=4)


SEGMENT_CHANGES = st.fixed_dictionaries(
    {
        "change_id": TEXT,
        "customer_id": TEXT,
        "segment": TEXT,
        "change": st.sampled_from(["entered", "exited"]),
        "seq": LONGS,
        "event_time": LONGS,
        "reason": st.sampled_from(["rule", "model", "expiry", "merge", "forget", "consent"]),
        "scores": maps(DOUBLES),
        "rules_version": TEXT,
    }
)
DEAD_LETTERS = st.fixed_dictionaries(
    {
        "reason": st.sampled_from([str(reason) for reason in Reason]),
        "field": optional(TEXT),
        "message": TEXT,
        "payload": TEXT,
        "source": TEXT,
        "position": TEXT,
        "event_id": optional(TEXT),
        "event_time": optional(LONGS),
    }
)
RUN_SUMMARIES = st.fixed_dictionaries(
    {
        "events_in": LONGS,
        "accepted": LONGS,
        "duplicates": LONGS,
        "no_consent": LONGS,
        "forgets": LONGS,
        "consent_revocations": LONGS,
        "dead_letters": maps(LONGS),
        "customers": LONGS,
        "segment_changes": maps(maps(LONGS)),
        "seconds": DOUBLES,
        "events_per_second": DOUBLES,
        "engine": TEXT,
        "rules_version": TEXT,
        "models": st.none()
        | st.dictionaries(
            st.sampled_from(["churn", "propensity"]),
            st.fixed_dictionaries(
                {
                    "model": TEXT,
                    "n_updates": LONGS,
                    "validation": st.fixed_dictionaries(
                        {
                            "n": LONGS,
                            "window": LONGS,
                            **dict.fromkeys(
                                ("mean_predicted", "mean_actual", "mean_absolute_error"), optional(DOUBLES)
                            ),
                        }
                    )
                    | st.fixed_dictionaries(
                        {
                            "n": LONGS,
                            "window": LONGS,
                            **dict.fromkeys(
                                (
                                    "positive_rate",
                                    "mean_predicted",
                                    "roc_auc",
                                    "log_loss",
                                    "expected_calibration_error",
                                ),
                                optional(DOUBLES),
                            ),
                            "calibration": st.lists(
                                st.fixed_dictionaries(
                                    {
                                        "low": DOUBLES,
                                        "high": DOUBLES,
                                        "count": LONGS,
                                        "mean_predicted": optional(DOUBLES),
                                        "observed_rate": optional(DOUBLES),
                                    }
                                ),
                                max_size=3,
                            ),
                        }
                    ),
                    "silence": st.fixed_dictionaries(
                        {"covered_days": DOUBLES, "scored": LONGS, "scored_beyond": LONGS}
                    ),
                }
            ),
        ),
        "model_updates": st.dictionaries(st.sampled_from(["churn", "propensity"]), LONGS),
    }
)
IDENTITY_MERGES = st.fixed_dictionaries(
    {
        "merge_id": TEXT,
        "customer_id": TEXT,
        "absorbed": st.lists(TEXT, max_size=4),
        "event_id": TEXT,
        "event_time": LONGS,
    }
)
INPUT_COMMON = {
    "event_id": TEXT,
    "ts": TEXT | LONGS,
    "anonymous_id": optional(TEXT),
    "user_id": optional(TEXT),
    "email": optional(TEXT),
    "device_id": optional(TEXT),
    "session_id": optional(TEXT),
    "product_id": optional(TEXT),
    "category": optional(TEXT),
    "price": optional(DOUBLES),
    "quantity": optional(LONGS),
    "consent": optional(maps(st.booleans())),
    "properties": optional(maps(TEXT)),
}
CLICKSTREAM_EVENTS = st.fixed_dictionaries(
    {
        **INPUT_COMMON,
        "type": st.sampled_from(
            ["page_view", "product_view", "add_to_cart", "remove_from_cart", "checkout", "login", "identify"]
        )
        | TEXT,
    }
)
TRANSACTIONS = st.fixed_dictionaries(
    {
        **INPUT_COMMON,
        "type": st.sampled_from(["purchase", "refund"]) | TEXT,
        "order_id": TEXT,
        "amount": DOUBLES,
        "currency": st.sampled_from(["EUR", "USD"]) | TEXT,
    }
)
STRATEGIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "SegmentChange": SEGMENT_CHANGES,
    "DeadLetter": DEAD_LETTERS,
    "RunSummary": RUN_SUMMARIES,
    "ClickstreamEvent": CLICKSTREAM_EVENTS,
    "Transaction": TRANSACTIONS,
    "IdentityMerge": IDENTITY_MERGES,
}


MINIMAL: dict[str, dict[str, Any]] = {
    "SegmentChange": {
        "change_id": "c1",
        "customer_id": "user:u1",
        "segment": "recent_buyer",
        "change": "entered",
        "seq": 1,
        "event_time": TS_MS,
        "reason": "rule",
        "scores": {},
        "rules_version": "v1",
    },
    "DeadLetter": {
        "reason": "malformed",
        "field": None,
        "message": "m",
        "payload": "{",
        "source": "s",
        "position": "1",
        "event_id": None,
        "event_time": None,
    },
    "IdentityMerge": {"merge_id": "m", "customer_id": "user:u1", "absorbed": [], "event_id": "e1", "event_time": 0},
    "RunSummary": {
        "events_in": 0,
        "accepted": 0,
        "duplicates": 0,
        "no_consent": 0,
        "forgets": 0,
        "consent_revocations": 0,
        "dead_letters": {},
        "customers": 0,
        "segment_changes": {},
        "seconds": 0.0,
        "events_per_second": 0.0,
        "engine": "core",
        "rules_version": "",
        "models": None,
        "model_updates": {},
    },
    "ClickstreamEvent": dict.fromkeys(INPUT_COMMON) | {"event_id": "e1", "type": "page_view", "ts": TS_MS},
    "Transaction": dict.fromkeys(INPUT_COMMON)
    | {"event_id": "t1", "type": "purchase", "ts": TS_MS, "order_id": "o1", "amount": 1.0, "currency": "EUR"},
}


def round_trip(name: str, records: list[dict[str, Any]], codec: str = "null") -> tuple[list[dict[str, Any]], dict]:
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_schema(name), records, codec=codec, validator=True)
    buffer.seek(0)
    reader = fastavro.reader(buffer)
    return list(reader), reader.writer_schema


def test_every_schema_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(SCHEMA_NAMES)


def field_names(name: str) -> set[str]:
    return {field["name"] for field in load_schema(name)["fields"]}


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_minimal_records_validate(name: str) -> None:
    assert set(MINIMAL[name]) == field_names(name)
    assert validate(MINIMAL[name], load_schema(name), raise_errors=True)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_strategies_cover_every_field(name: str, data: st.DataObject) -> None:
    """A field added to a schema (or a strategy) without the other fails here, not silently."""
    assert set(data.draw(STRATEGIES[name])) == field_names(name)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    records = data.draw(st.lists(STRATEGIES[name], min_size=1, max_size=5), label="records")
    codec = data.draw(st.sampled_from(["null", "deflate"]), label="codec")
    back, writer_schema = round_trip(name, records, codec)
    assert back == records
    assert writer_schema["name"] == f"segstream.{name}"
    for original, read in zip(records, back, strict=True):
        # ts is ["string", "long"]: an RFC 3339 string stays a string, epoch ms stay an integer.
        assert type(read.get("ts")) is type(original.get("ts"))


@pytest.mark.parametrize(
    ("name", "record"),
    [
        pytest.param("SegmentChange", {"change": "joined"}, id="change-not-in-enum"),
        pytest.param("SegmentChange", {"reason": "whim"}, id="reason-not-in-enum"),
        pytest.param("SegmentChange", {"seq": "1"}, id="seq-as-string"),
        pytest.param("DeadLetter", {"event_time": 2**63}, id="event-time-beyond-long"),
        pytest.param("RunSummary", {"segment_changes": {"s": {"entered": 1.5}}}, id="nested-map-double"),
        pytest.param("ClickstreamEvent", {"ts": 1.5}, id="ts-as-double"),
        pytest.param("Transaction", {"amount": None}, id="amount-missing"),
    ],
)
def test_nonconforming_records_are_refused(name: str, record: dict[str, Any]) -> None:
    """The schemas are strict enough to catch what the round trip relies on."""
    full = MINIMAL[name] | record
    with pytest.raises(fastavro.validation.ValidationError):
        validate(full, load_schema(name), raise_errors=True)


# --------------------------------------------------------------------------------------------------
# Records from real code paths validate against their schemas
# --------------------------------------------------------------------------------------------------


def validate_all(name: str, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    records = list(records)
    assert records
    for record in records:
        assert validate(record, load_schema(name), raise_errors=True)
    back, _ = round_trip(name, records)
    assert back == records
    return records


def event(record: dict[str, Any]) -> Event:
    result = CLEANER.clean(record, "test", "1", NOW_MS)
    assert isinstance(result, Event), result
    return result


def transaction(event_id: str, kind: str, ts: int, **fields: object) -> dict[str, Any]:
    return {"event_id": event_id, "type": kind, "ts": ts, "user_id": "u1", "order_id": "o1", **fields}


def test_segment_changes_from_the_keyed_step_validate() -> None:
    rules = parse_rules(
        {
            "version": "v-test",
            "segments": {
                "recent_buyer": {"since": "last.purchase", "at_most": "1d"},
                "big_spender": {"feature": "spend", ">=": 500},
            },
        }
    )
    logic = CustomerLogic(rules, StreamConfig())
    state = logic.new_state("user:u1")
    buy = event(transaction("p1", "purchase", TS_MS, amount="600", currency="eur"))
    give_back = event(transaction("r1", "refund", TS_MS + 1000, amount=600, currency="EUR"))
    changes: list[SegmentChange] = []
    changes += logic.advance(state, [buy], to_ts=TS_MS).changes
    changes += logic.advance(state, [give_back], to_ts=TS_MS + 1000).changes
    changes += logic.advance(state, [], to_ts=TS_MS + 2 * DAY_MS).changes
    records = validate_all("SegmentChange", (change.to_dict() for change in changes))
    assert {(r["segment"], r["change"], r["reason"]) for r in records} == {
        ("big_spender", "entered", "rule"),
        ("recent_buyer", "entered", "rule"),
        ("big_spender", "exited", "rule"),
        ("recent_buyer", "exited", "expiry"),
    }
    assert any(r["scores"] for r in records)  # the nested map is exercised, not only empty


REJECTED = [
    ["not", "an", "object"],
    {"type": "page_view", "ts": TS_MS, "user_id": "u1"},
    {"event_id": ["x"], "type": "page_view", "ts": TS_MS, "user_id": "u1"},
    {"event_id": 7, "type": "teleport", "ts": "2023-11-01T10:00:00Z", "email": "Ann@Example.com"},
    {"event_id": "e", "type": "page_view", "ts": "2023-11-01T10:00:00", "user_id": "u1"},
    {"event_id": "e", "type": "page_view", "ts": "99999999999999999999999", "user_id": "u1"},
    {"event_id": "e", "type": "page_view", "ts": -1, "user_id": "u1"},
    {"event_id": "e", "type": "page_view", "ts": TS_MS, "anonymous_id": "undefined"},
    {"event_id": "e", "type": "purchase", "ts": TS_MS, "user_id": "u", "order_id": "o", "amount": "NaN"},
    {"event_id": "e", "type": "purchase", "ts": TS_MS, "user_id": "u", "order_id": "o", "amount": 1, "currency": "X"},
    {"event_id": "e", "type": "page_view", "ts": TS_MS, "user_id": "u", "quantity": 0, "extra": {"a": [1, None]}},
    {"event_id": "e", "type": "refund", "ts": TS_MS, "user_id": "u", "order_id": "o", "amount": 2e9, "currency": "EUR"},
    {"event_id": "e", "type": "page_view", "ts": TS_MS, "user_id": "u", "extra": float("nan")},  # Avro: a double NaN
]


def test_identity_merges_from_the_core_validate() -> None:
    merge = IdentityMerge.of("user:u1", ["anon:a", "email:h"], "e9", TS_MS)
    assert validate(merge.to_dict(), load_schema("IdentityMerge"), raise_errors=True)


def test_dead_letters_from_cleaning_validate() -> None:
    letters = [CLEANER.clean(record, "test", str(n), NOW_MS) for n, record in enumerate(REJECTED, start=1)]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    records = validate_all("DeadLetter", (letter.to_dict() for letter in letters))
    assert len({r["reason"] for r in records}) >= 9
    pairs = [(r["reason"], r["field"]) for r in records]
    assert pairs[-2:] == [("out_of_range", "amount"), ("invalid_number", "extra")]


def test_dead_letters_from_sources_validate(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("{not json\n" + json.dumps({"event_id": "e", "pad": "x" * MAX_BYTES}) + "\n[1, 2]\n")
    letters = [clean_record(CLEANER, raw, NOW_MS) for raw in read_records(path, MAX_BYTES)]
    assert all(isinstance(letter, DeadLetter) for letter in letters)
    records = validate_all("DeadLetter", (letter.to_dict() for letter in letters if isinstance(letter, DeadLetter)))
    assert [r["reason"] for r in records] == ["malformed", "oversized", "malformed"]


def test_late_dead_letter_validates() -> None:
    logic = CustomerLogic(parse_rules({"segments": {"x": {"since": "last.purchase", "at_most": "1d"}}}), StreamConfig())
    late = event({"event_id": "late-1", "type": "page_view", "ts": TS_MS, "user_id": "u1", "email": "a@b.co"})
    letter = logic.late_letter(late)
    (record,) = validate_all("DeadLetter", [letter.to_dict()])
    assert (record["reason"], record["event_time"]) == ("late", TS_MS)


@settings(max_examples=200, deadline=None)
@given(
    record=st.dictionaries(
        st.sampled_from(["event_id", "type", "ts", "user_id", "email", "amount", "quantity", "currency", "x"]),
        st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.lists(TEXT, max_size=2),
    )
)
def test_every_dead_letter_from_cleaning_validates(record: dict[str, Any]) -> None:
    result = CLEANER.clean(record, "prop", "1", NOW_MS)
    if isinstance(result, DeadLetter):
        validate_all("DeadLetter", [result.to_dict()])
    else:
        assert isinstance(result, Event)


def test_run_summary_validates() -> None:
    counts = RunCounts()
    counts.add("events_in", 10)
    counts.add("accepted", 6)
    counts.add("duplicates", 1)
    counts.add("customers", 4)
    for reason in ("malformed", "late", "late"):
        counts.add_dead_letter(reason)
    counts.add_change("recent_buyer", "entered", 3)
    counts.add_change("recent_buyer", "exited")
    counts.add_change("big_spender", "entered")
    assert counts.balanced()
    summaries = [
        counts.summary(2.5, "core", "v1"),
        counts.summary(0, "beam", ""),
        RunCounts().summary(0.0, "core", "default-1"),
    ]
    records = validate_all("RunSummary", summaries)
    assert records[0]["segment_changes"] == {
        "big_spender": {"entered": 1, "exited": 0},
        "recent_buyer": {"entered": 3, "exited": 1},
    }
    assert records[0]["dead_letters"] == {"late": 2, "malformed": 1}


# --------------------------------------------------------------------------------------------------
# Avro container files as input
# --------------------------------------------------------------------------------------------------


def clickstream(**fields: Any) -> dict[str, Any]:
    """A ClickstreamEvent record with every optional field present (null unless given)."""
    optional_fields = ["anonymous_id", "user_id", "email", "session_id", "product_id", "category"]
    optional_fields += ["price", "quantity", "consent", "properties"]
    return {"event_id": "e", "type": "page_view", "ts": TS_MS} | dict.fromkeys(optional_fields) | fields


def write_avro(path: Path, name: str, records: list[dict[str, Any]], **options: Any) -> Path:
    with path.open("wb") as handle:
        fastavro.writer(handle, load_schema(name), records, **options)
    return path


def read_all(path: Path) -> list[RawRecord]:
    check_source(path)
    return list(read_records(path, MAX_BYTES))


AVRO_EVENTS = [
    clickstream(
        event_id="a1",
        type="product_view",
        ts="2023-11-01T11:00:00+01:00",
        user_id=" u1 ",
        product_id="sku-1",
        properties={
            "utm": json.dumps("spring"),
            "n": "3",
            "obj": json.dumps({"a": [1, 2]}),
            "raw": "not json",
        },
    ),
    clickstream(
        event_id="a2",
        type="add_to_cart",
        anonymous_id="anon-1",
        email=" Ann@Example.com ",
        price=9.99,
        quantity=2,
        consent={"personalization": False},
    ),
    clickstream(event_id="a3", type="identify", ts=str(TS_MS + 1), email="bob@example.org"),
]


def test_avro_clickstream_file_cleans_like_jsonl(tmp_path: Path) -> None:
    raws = read_all(write_avro(tmp_path / "events.avro", "ClickstreamEvent", AVRO_EVENTS))
    assert [raw.position for raw in raws] == ["record 1", "record 2", "record 3"]
    assert all(raw.error is None for raw in raws)
    assert all(None not in raw.payload.values() for raw in raws)  # absent optional fields are dropped
    events = [clean_record(CLEANER, raw, NOW_MS) for raw in raws]
    assert all(isinstance(e, Event) for e in events), events
    first, second, third = events
    assert isinstance(first, Event) and isinstance(second, Event) and isinstance(third, Event)
    assert first.properties == {"utm": "spring", "n": 3, "obj": {"a": [1, 2]}, "raw": "not json"}
    assert (first.ts, first.user_id, first.product_id) == (TS_MS, "u1", "sku-1")
    assert (second.price, second.quantity, second.consent) == (9.99, 2, {"personalization": False})
    assert second.properties == {}
    assert second.email is not None and "ann" not in second.email
    assert (third.ts, third.type, third.user_id, third.anonymous_id) == (TS_MS + 1, "identify", None, None)


def test_avro_transaction_file_is_accepted(tmp_path: Path) -> None:
    record = clickstream(event_id="t1", type="purchase", user_id="u1", order_id="o1", amount=12.5, currency="usd")
    raws = read_all(write_avro(tmp_path / "tx.avro", "Transaction", [record], codec="deflate"))
    (result,) = [clean_record(CLEANER, raw, NOW_MS) for raw in raws]
    assert isinstance(result, Event)
    assert (result.type, result.order_id, result.amount, result.currency) == ("purchase", "o1", 12.5, "USD")


SYNC = b"segstream-sync-0"  # fixed, so damage lands at the same place on every run


def _valid_avro_bytes(codec: str = "null", count: int = 3) -> bytes:
    buffer = io.BytesIO()
    records = [
        clickstream(event_id=f"e{n}", user_id=f"u{n}", properties={"pad": '"' + "x" * 40 + '"'}) for n in range(count)
    ]
    fastavro.writer(buffer, load_schema("ClickstreamEvent"), records, codec=codec, sync_interval=200, sync_marker=SYNC)
    return buffer.getvalue()


def _zigzag(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """Decode the Avro (zig-zag varint) long at ``at``; return it and the offset after it."""
    shift = raw = 0
    while True:
        byte = data[at]
        at += 1
        raw |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), at


def _second_block_data(data: bytes | bytearray) -> int:
    """Offset of the (compressed) data of the second block: after the header's sync, block 1, its sync."""
    first_sync = data.index(SYNC)
    second_sync = data.index(SYNC, first_sync + len(SYNC))
    _, at = _zigzag(data, second_sync + len(SYNC))  # record count
    _, at = _zigzag(data, at)  # block size in bytes
    return at


NOT_AVRO = [
    pytest.param("not.avro", b"hello, this is text\n", id="text"),
    pytest.param("empty.avro", b"", id="empty"),
    pytest.param("jsonl.avro", b'{"event_id": "e1"}\n', id="jsonl-content"),
    pytest.param("magic-only.avro", b"Obj\x01", id="magic-only"),
    pytest.param(
        "bad-schema-key.avro",
        _valid_avro_bytes().replace(b'{"type": "record"', b'{"typo": "record"', 1),
        id="header-schema-without-type",
    ),
    pytest.param(
        "bad-schema-field.avro",
        _valid_avro_bytes().replace(b'{"name": "event_id"', b'{"nane": "event_id"', 1),
        id="header-field-without-name",
    ),
    pytest.param(
        "bad-schema-json.avro",
        _valid_avro_bytes().replace(b'{"type": "record"', b'["type": "record"', 1),
        id="header-schema-not-json",
    ),
]


@pytest.mark.parametrize(("name", "content"), NOT_AVRO)
def test_check_source_refuses_a_file_that_is_not_avro(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match="not a readable Avro container file"):
        check_source(path)


@pytest.mark.parametrize("name", ["missing.avro", "missing.jsonl", "missing.jsonl.gz"])
def test_check_source_refuses_a_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(SourceError, match="no such file"):
        check_source(tmp_path / name)


def test_check_source_refuses_an_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("event_id,type\n")
    with pytest.raises(SourceError, match="unknown input format"):
        check_source(path)


def test_check_source_accepts_valid_files(tmp_path: Path) -> None:
    (tmp_path / "ok.avro").write_bytes(_valid_avro_bytes())
    (tmp_path / "ok.jsonl").write_text("{}\n")
    check_source(tmp_path / "ok.avro")
    check_source(tmp_path / "ok.jsonl")


def assert_ends_malformed(raws: list[RawRecord], total: int) -> None:
    """Records before the damage come out whole; the damage is one final ``malformed`` record."""
    *whole, last = raws
    assert len(whole) < total
    assert all(raw.error is None and isinstance(raw.payload, dict) for raw in whole)
    assert last.error is not None and last.error.reason == Reason.MALFORMED
    assert last.position == f"after record {len(whole)}"
    letter = clean_record(CLEANER, last, NOW_MS)
    assert isinstance(letter, DeadLetter) and letter.reason == "malformed"
    assert validate(letter.to_dict(), load_schema("DeadLetter"), raise_errors=True)


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_truncated_avro_file_yields_a_malformed_record(tmp_path: Path, codec: str) -> None:
    data = _valid_avro_bytes(codec, count=60)
    path = tmp_path / "cut.avro"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert_ends_malformed(read_all(path), total=60)


def test_corrupt_deflate_block_yields_a_malformed_record(tmp_path: Path) -> None:
    """0xFF opens a deflate block of the reserved type 3: zlib.error, not a ValueError."""
    data = bytearray(_valid_avro_bytes("deflate", count=60))
    data[_second_block_data(data)] = 0xFF
    path = tmp_path / "corrupt.avro"
    path.write_bytes(bytes(data))
    assert_ends_malformed(read_all(path), total=60)


def test_union_index_out_of_range_yields_a_malformed_record(tmp_path: Path) -> None:
    """A record whose ts union branch index is 63 (of 2): fastavro raises IndexError."""
    data = bytearray(_valid_avro_bytes("null", count=60))
    length, at = _zigzag(data, _second_block_data(data))  # event_id
    length, at = _zigzag(data, at + length)  # type
    data[at + length] = 0x7E  # zig-zag 63: the ts union branch
    path = tmp_path / "corrupt.avro"
    path.write_bytes(bytes(data))
    assert_ends_malformed(read_all(path), total=60)


@settings(max_examples=150, deadline=None)
@given(
    codec=st.sampled_from(["null", "deflate"]),
    cut=st.floats(min_value=0.0, max_value=1.0),
    flips=st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0), st.integers(1, 255)), max_size=4),
)
def test_damaged_avro_never_raises_unexpectedly(codec: str, cut: float, flips: list[tuple[float, int]]) -> None:
    """Any truncation or byte damage: a SourceError up front, or records that end in ``malformed``."""
    data = bytearray(_valid_avro_bytes(codec, count=20))
    for where, mask in flips:
        data[min(int(where * len(data)), len(data) - 1)] ^= mask
    data = data[: int(cut * len(data))] if cut < 1.0 else data
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "damaged.avro"
        path.write_bytes(bytes(data))
        try:
            check_source(path)
        except SourceError:
            return
        raws = list(read_records(path, MAX_BYTES))
    errors = [raw for raw in raws if raw.error is not None]
    assert not errors or errors == [raws[-1]]  # a cut right after the header is a valid, empty file
    assert all(raw.error.reason == Reason.MALFORMED for raw in errors)  # type: ignore[union-attr]
    for raw in raws:
        assert isinstance(clean_record(CLEANER, raw, NOW_MS), Event | DeadLetter)


def test_avro_cut_just_after_a_block_is_reported_not_silently_shortened(tmp_path: Path) -> None:
    data = _valid_avro_bytes("null", count=20)
    sync = fastavro.reader(io.BytesIO(data))._header["sync"]
    after_first_block = data.index(sync, data.index(sync) + 16) + 16
    path = tmp_path / "cut.avro"
    path.write_bytes(data[: after_first_block + 1])  # one byte of the next block's header
    raws = list(read_records(path, MAX_BYTES))
    assert raws[-1].error is not None and raws[-1].error.reason == "malformed"
    assert all(raw.error is None for raw in raws[:-1]) and len(raws) > 1
