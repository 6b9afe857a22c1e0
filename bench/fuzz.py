"""Fuzz run: hostile inputs through decoding and the cleaning step; zero crashes, no stall.

Every input must end as one accepted ``Event`` or one ``DeadLetter`` with a reason code, writable by
the outputs (JSON in UTF-8; a dead letter valid against ``DeadLetter.avsc``), and take under
``--max-seconds`` (1 s): an exception out of decode + clean is a crash, a slower input a stall.

Inputs come from python's ``random`` (hypothesis is too slow for a million; ``tests/test_fuzz.py``
runs the same classes under hypothesis in CI), structure-aware:

- ``object``: a valid event mutated field by field (dropped, retyped, NaN and infinities, ints past
  64 bits, timestamps at the edges, placeholder ids, address-shaped text, nesting, unknown fields),
  handed to ``Cleaner.clean`` as the decoded object;
- ``json``: the same mutated events as JSON text, then byte mutations (bit flips, invalid UTF-8,
  cuts, random bytes, duplicated ranges), through ``decode_json`` (size cap, JSON, depth) then
  ``clean_record``;
- ``bytes``: random bytes, random text, invalid UTF-8;
- ``huge``: strings and payloads around and far past the size cap (to 1 MiB) through the decoder;
  records with fields of up to 240,000 characters, and raw text up to the cap (what a decoder hands
  over for a malformed line), given to the cleaning step directly to catch super-linear work;
- ``deep``: nesting to 1,100 levels as JSON text and to 20,000 as objects;
- ``jsonl``: JSON Lines files (plain or gzipped) of mixed lines through ``read_records``: the
  records read must be the non-blank lines;
- ``avro``: Avro container files written with another schema (fields retyped, dropped, added, or
  not a record at all), truncated or with bytes overwritten, through ``read_records``.

Run from the repository root (2 shared cores: ``nice``)::

    nice -n 10 python bench/fuzz.py --inputs 1000000 --seed 1
    python bench/fuzz.py --inputs 20000 --seed 7 --crash-dir /tmp/fuzz-crashes   # keeps crashing inputs
    python bench/fuzz.py --atheris -- -runs=200000     # coverage-guided (needs `pip install atheris`)

Exits 1 on any crash or stall.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.job import clean_record
from pipelines.sources import decode_json, read_records
from schemas import load_schema
from transforms.cleaning import DAY_MS, KNOWN_FIELDS, Cleaner, CleaningConfig
from transforms.dead_letters import DeadLetter, Reason
from transforms.events import EVENT_TYPES, Event
from transforms.timestamps import MIN_TS_MS

NOW_MS = 1_710_000_000_000  # 2024-03-09T16:00:00Z, the fixed processing clock
TS_MS = 1_698_832_800_000
MAX_BYTES = 64 * 1024  # the default cap
CLEANER = Cleaner(CleaningConfig(email_salt="fuzz", max_record_bytes=MAX_BYTES))
REASONS = {str(reason) for reason in Reason} - {str(Reason.LATE)}
DEAD_LETTER_SCHEMA = load_schema("DeadLetter")
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
TYPES = sorted(EVENT_TYPES)
FIELDS = [*sorted(KNOWN_FIELDS), "phone", "IP", "name"]  # and extra fields the cleaning hashes as PII
INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc3\x28",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
]
TS_EDGES = [MIN_TS_MS - 1, MIN_TS_MS, MIN_TS_MS + 1, NOW_MS + DAY_MS - 1, NOW_MS + DAY_MS, NOW_MS + DAY_MS + 1]
TS_TEXTS = [
    "2023-11-01T10:00:00Z", "2023-11-01t10:00:00.123z", "2023-11-01T10:00:00.123456+05:30", "2023-11-01T10:00:00",
    "1999-12-31T23:59:59.999Z", "2000-01-01T00:00:00Z", "2000-01-01T00:30:00+01:00", "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59.999999-23:59", "2023-02-29T10:00:00Z", "2023-12-31T23:59:60Z", "2023-11-01T24:00:00Z",
    "2024-03-10T16:00:00Z", "2024-03-10T16:00:00.001Z", " 1698832800000 ", "0001698832800000", "1698832800000.0",
    "１６９８８３２８０００００", "²", "", " ", "T", "Z", "now", "1e12", "-1698832800000",
]  # fmt: skip
NASTY_TEXT = [
    "", " ", "\t\n", "null", "None", "undefined", "NaN", "nan", "Infinity", "-inf", "1e999", "-1e999", "0", "-1", "0.0",
    "1_000", "0x10", "12.50", "-0", "guest", "00000000-0000-0000-0000-000000000000", "[object Object]", "{}", "€", "EU",
    "eur", " usd ", "XYZ", "978", "ann@example.com", " ANN@EXAMPLE.COM ", "a@b", "a@b.c", "@", "a@@b.c", "\x00",
    "\u2028", "\u200b", "\ufeff", "😀", "ß", "İ", "\\u0000",
    "'; DROP TABLE events; --", "<script>", "%s%n", "../../etc/passwd",
]  # fmt: skip
PATTERNS = ["a", "@", ".", "a@", "a.", "@.", " ", "0", "9", "é", "😀", "\\", '"', "a@b.", "\x00", "-", "\u2028"]


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def valid_event(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(TYPES)
    ts = rng.randint(MIN_TS_MS, NOW_MS + DAY_MS)
    record: dict[str, Any] = {
        "event_id": f"e{rng.getrandbits(32):x}",
        "type": kind,
        "ts": rng.choice([ts, str(ts), "2023-11-01T10:00:00.123+01:00", float(ts)]),
    }
    for name, value in rng.sample(
        [("user_id", "u1"), ("anonymous_id", " a-7 "), ("email", "Ann@Example.com")], rng.randint(1, 3)
    ):
        record[name] = value
    if kind in ("purchase", "refund"):
        record.update(
            order_id=f"o{rng.randint(1, 99)}",
            amount=rng.choice([12.5, "12.50", 0, 1e9]),
            currency=rng.choice(["EUR", "usd"]),
        )
    if rng.random() < 0.5:
        record.update(price=rng.choice([1.5, "2", 0]), quantity=rng.choice([1, 3, "2"]), product_id="p1", category="c")
    if rng.random() < 0.3:
        record["consent"] = {"ads": rng.random() < 0.5, "personalization": True}
    if rng.random() < 0.3:
        record["properties"] = {"utm": "x", "n": rng.randint(0, 9)}
    if rng.random() < 0.3:
        record["device_id"] = rng.choice(["d1", "0000", " D-9 "])
    if rng.random() < 0.3:
        record["utm_source"] = "newsletter"
    return record


def random_text(rng: random.Random, size: int) -> str:
    """Any code points but surrogates (no decoder yields a lone surrogate)."""
    out = []
    for _ in range(size):
        r = rng.random()
        if r < 0.6:
            out.append(chr(rng.randint(32, 126)))
        elif r < 0.8:
            out.append(chr(rng.randint(0, 0x2FF)))
        else:
            c = rng.randint(0, 0x10FFFF)
            out.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "?")
    return "".join(out)


def nested(levels: int, leaf: object, as_list: bool) -> object:
    value = leaf
    for _ in range(levels):
        value = [value] if as_list else {"k": value}
    return value


def nasty(rng: random.Random, field: str | None, for_json: bool) -> object:
    """A value that a field should not (or barely) hold."""
    r = rng.randrange(12)
    if r == 0:
        return rng.choice(
            [None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400]
        )
    if r == 1:
        values = [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 1.5, 1e16 + 1, -1e-300]
        return rng.choice(values[3:] if for_json else values)
    if r == 2:
        return rng.choice(TS_EDGES) + rng.choice([0, 0, -(2**63), 2**63])
    if r == 3:
        return rng.choice(TS_TEXTS)
    if r == 4:
        return rng.choice(NASTY_TEXT)
    if r == 5:
        return random_text(rng, rng.randint(0, 40))
    if r == 6:
        size = rng.choice([255, 256, 257, 300, 1000, 5000])
        return rng.choice(PATTERNS) * size
    if r == 7:
        return rng.choice([[], {}, [1], {"a": None}, {"ads": "yes"}, {"ads": True}, {"": False}, [None, True]])
    if r == 8:
        return nested(rng.randint(1, 40), rng.choice([1, "x", None]), rng.random() < 0.5)
    if r == 9:
        return "9" * rng.choice([19, 20, 4300, 4301, 5000])  # digits past the int conversion limit
    if r == 10 and not for_json and field in KNOWN_FIELDS:
        return 10**5000  # an int past what str() converts (only a Python caller can hand one over)
    return {"nested": random_text(rng, 5), "list": [1, 2.5, "x"]}


def mutate(rng: random.Random, record: dict[str, Any], for_json: bool) -> object:
    """Structure-aware mutations of a valid event (a few at once)."""
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3, 5])):
        op = rng.randrange(10)
        if op == 0 and record:
            record.pop(rng.choice(list(record)))
        elif op <= 4:
            field = rng.choice(FIELDS)
            record[field] = nasty(rng, field, for_json)
        elif op == 5:
            record[random_text(rng, rng.randint(0, 12))] = nasty(rng, None, for_json)
        elif op == 6:
            record["ts"] = rng.choice([*TS_EDGES, rng.randint(-(2**64), 2**64), rng.choice(TS_TEXTS)])
        elif op == 7:
            record["type"] = rng.choice([*TYPES, "PAGE_VIEW", " page_view ", "pageview", "", 1])
        elif op == 8 and len(known := [name for name in record if name in KNOWN_FIELDS]) >= 2:
            a, b = rng.sample(known, 2)  # known fields only: an int past str() stays where a Python caller put it
            record[a], record[b] = record[b], record[a]
        elif op == 9:
            for name in ("user_id", "anonymous_id", "email", "device_id"):
                if rng.random() < 0.5:
                    record[name] = rng.choice(["null", "undefined", "0", "  ", "guest", "N/A", "a@b", "x" * 257])
    r = rng.random()
    if r < 0.02:
        return [record]
    if r < 0.03:
        return rng.choice([None, 1, "text ann@example.com", True, [], 1.5])
    return record


def dumps(value: object, rng: random.Random) -> bytes:
    text = json.dumps(value, ensure_ascii=rng.random() < 0.3, separators=rng.choice([(",", ":"), (", ", ": ")]))
    return text.encode("utf-8", "surrogatepass")


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3, 6])):
        at = rng.randint(0, len(out))
        op = rng.randrange(7)
        if op == 0 and at < len(out):
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = rng.choice(INVALID_UTF8)
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[at : at + rng.randint(1, 16)]
        elif op == 4:
            del out[at:]
        elif op == 5 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 32)]
        else:
            out[at:at] = rng.choice(
                [b"\\u0000", b"\\ud800", b"\\udc00\\ud800", b'"', b"{", b"]", b"\n", b"\r", b"\x00"]
            )
    return bytes(out)


def random_bytes(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.4:
        return rng.randbytes(rng.randint(0, 300))
    if r < 0.7:
        return random_text(rng, rng.randint(0, 200)).encode()
    if r < 0.85:
        return b"".join(rng.choice([*INVALID_UTF8, b"a", b"{", b'"', b"\\"]) for _ in range(rng.randint(1, 60)))
    return rng.choice(
        [b"", b" ", b"null", b"[]", b"{}", b"1", b'"x"', b"-0", b"1e400", b"NaN", b"true", b'{"a":1}{"b":2}']
    )


def huge_input(rng: random.Random) -> tuple[str, object]:
    """(kind, input): a record or line around or far past the size cap."""
    base = valid_event(rng)
    pattern = rng.choice(PATTERNS)
    size = rng.choice([MAX_BYTES - 200, MAX_BYTES - 100, MAX_BYTES, MAX_BYTES + 1, 2 * MAX_BYTES, 1 << 20])
    field = rng.choice(["event_id", "type", "ts", "user_id", "email", "device_id", "currency", "utm", "properties"])
    if rng.random() < 0.5:  # through the decoder: the cap
        record = {**base, field: pattern * (size // len(pattern.encode()))}
        return "json", dumps(record, rng)
    if rng.random() < 0.5:  # raw text as a decoder hands it over (a malformed line: at most the cap)
        return "object", (pattern * rng.choice([1000, MAX_BYTES]))[: rng.choice([MAX_BYTES // 4, MAX_BYTES])]
    return "object", {**base, field: pattern * rng.choice([1000, 20_000, 60_000])}


def deep_input(rng: random.Random) -> tuple[str, object]:
    levels = rng.choice([rng.randint(0, 40), rng.randint(0, 1100), 1024, 1025])
    as_list = rng.random() < 0.5
    where = rng.choice(["properties", "utm", "event_id", "consent", None])
    if rng.random() < 0.6:
        inner = ("[" * levels + "1" + "]" * levels) if as_list else ('{"k":' * levels + "1" + "}" * levels)
        if where is None:
            return "json", inner.encode()
        prefix = json.dumps({"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1"})[:-1]
        return "json", f'{prefix}, "{where}": {inner}}}'.encode()
    value = nested(rng.choice([levels, 5000, 20_000]), 1, as_list)
    if where is None:
        return "object", value
    return "object", {"event_id": "e1", "type": "page_view", "ts": TS_MS, "user_id": "u1", where: value}


# --------------------------------------------------------------------------------------------------
# Avro and JSON Lines files
# --------------------------------------------------------------------------------------------------

AVRO_TYPES: list[Any] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string", ["null", "double"], ["string", "long"],
    {"type": "array", "items": "string"}, {"type": "map", "values": "long"}, {"type": "map", "values": "bytes"},
    {"type": "map", "values": "string"}, {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2},
    {"type": "long", "logicalType": "timestamp-millis"}, {"type": "string", "logicalType": "uuid"},
    {"type": "int", "logicalType": "date"}, "enum", "fixed", "record",
]  # fmt: skip


class Names:
    n = 0

    @classmethod
    def next(cls) -> int:
        cls.n += 1
        return cls.n


def avro_type(rng: random.Random) -> Any:
    kind = rng.choice(AVRO_TYPES)
    if kind == "enum":
        return {"type": "enum", "name": f"E{Names.next()}", "symbols": ["page_view", "purchase", "OTHER"]}
    if kind == "fixed":
        return {"type": "fixed", "name": f"F{Names.next()}", "size": 4}
    if kind == "record":
        return {"type": "record", "name": f"R{Names.next()}", "fields": [{"name": "event_id", "type": "string"}]}
    return kind


def avro_value(rng: random.Random, schema: Any, name: str = "") -> Any:
    import datetime as dt
    import decimal
    import uuid

    if isinstance(schema, list):
        return avro_value(rng, rng.choice(schema), name)
    if isinstance(schema, dict):
        logical, kind = schema.get("logicalType"), schema["type"]
        if logical == "decimal":
            return decimal.Decimal(rng.randint(-(10**8), 10**8)).scaleb(-2)
        if logical == "timestamp-millis":
            return dt.datetime.fromtimestamp(rng.randint(0, 2**33), tz=dt.UTC)
        if logical == "uuid":
            return uuid.UUID(int=rng.getrandbits(128))
        if logical == "date":
            return dt.date.fromordinal(rng.randint(1, 3_000_000))
        if kind == "record":
            return {f["name"]: avro_value(rng, f["type"], f["name"]) for f in schema["fields"]}
        if kind == "array":
            return [avro_value(rng, schema["items"], name) for _ in range(rng.randint(0, 3))]
        if kind == "map":
            if name == "properties" and schema["values"] == "string" and rng.random() < 0.7:
                texts = [
                    '"x"',
                    "1",
                    "[1]",
                    '{"a": {"b": null}}',
                    "NaN",
                    "1e999",
                    '"\\ud800"',
                    "{",
                    "[" * 2000,
                    "[" * 40 + "]" * 40,
                ]
                return {random_text(rng, 4): rng.choice(texts) for _ in range(rng.randint(0, 3))}
            return {random_text(rng, 4): avro_value(rng, schema["values"]) for _ in range(rng.randint(0, 3))}
        if kind == "enum":
            return rng.choice(schema["symbols"])
        if kind == "fixed":
            return rng.randbytes(schema["size"])
        return avro_value(rng, kind, name)
    if schema == "null":
        return None
    if schema == "boolean":
        return rng.random() < 0.5
    if schema == "int":
        return rng.randint(-(2**31), 2**31 - 1)
    if schema == "long":
        return rng.choice([rng.randint(-(2**63), 2**63 - 1), *TS_EDGES, TS_MS])
    if schema in ("float", "double"):
        return rng.choice([math.nan, math.inf, -math.inf, 0.0, 12.5, -1.0, float(TS_MS), 1e300])
    if schema == "bytes":
        return rng.randbytes(rng.randint(0, 12))
    plausible = {
        "type": TYPES,
        "ts": ["2023-11-01T10:00:00Z", str(TS_MS), "2023-11-01T10:00:00"],
        "currency": ["EUR", "XYZ"],
        "email": ["ann@example.com", "x"],
    }
    if name in plausible and rng.random() < 0.7:
        return rng.choice(plausible[name])
    return rng.choice(NASTY_TEXT) if rng.random() < 0.3 else random_text(rng, rng.randint(0, 12))


def avro_file(rng: random.Random, path: Path) -> str:
    """Write an Avro file at ``path``; return its variety."""
    contract = json.loads((SCHEMA_DIR / f"{rng.choice(['ClickstreamEvent', 'Transaction'])}.avsc").read_text())
    codec = rng.choice(["null", "deflate"])
    variety = rng.choice(["other-schema", "other-schema", "not-a-record", "truncated", "overwritten", "amplified"])
    if variety == "amplified":
        return amplified_avro_file(rng, path)
    if variety == "not-a-record":
        schema: Any = avro_type(rng)
    else:
        fields = [{"name": f["name"], "type": f["type"]} for f in contract["fields"]]
        if variety == "other-schema":
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(fields))
                op = rng.randrange(3)
                if op == 0:
                    fields[at] = {"name": fields[at]["name"], "type": avro_type(rng)}
                elif op == 1 and len(fields) > 1:
                    del fields[at]
                else:
                    fields.append({"name": f"extra_{Names.next()}", "type": avro_type(rng)})
        schema = {"type": "record", "name": f"W{Names.next()}", "fields": fields}
    records = [avro_value(rng, schema) for _ in range(rng.randint(1, 30))]
    with path.open("wb") as handle:
        fastavro.writer(
            handle, fastavro.parse_schema(schema), records, codec=codec, sync_interval=rng.choice([200, 16000])
        )
    if variety in ("truncated", "overwritten"):
        content = bytearray(path.read_bytes())
        if variety == "truncated":
            del content[rng.randint(0, len(content)) :]
        else:
            for _ in range(rng.randint(1, 6)):
                content[rng.randrange(len(content))] = rng.randrange(256)
        path.write_bytes(bytes(content))
    return variety


def _zigzag(n: int) -> bytes:
    """``n`` as Avro encodes a long (zig-zag varint)."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, "long", n)
    return buffer.getvalue()


def amplified_avro_file(rng: random.Random, path: Path) -> str:
    """A few bytes that claim endless data: a block of 2**62 zero-byte records, or an array of 2**40 nulls."""
    records_of_nothing = rng.random() < 0.5
    if records_of_nothing:
        schema: Any = rng.choice(["null", {"type": "record", "name": "Empty", "fields": []}])
        rows: list[Any] = [None if schema == "null" else {}]
    else:
        items = rng.choice(
            ["null", {"type": "record", "name": "Empty", "fields": []}, {"type": "fixed", "name": "Z", "size": 0}]
        )
        schema = {
            "type": "record",
            "name": "B",
            "fields": [
                {"name": "event_id", "type": "string"},
                {"name": "a", "type": {"type": "array", "items": items}},
            ],
        }
        rows = [{"event_id": "e", "a": []}]
    with path.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), rows)
    content = path.read_bytes()
    sync = content[-16:]
    header = content.index(sync) + 16
    if records_of_nothing:
        block = _zigzag(rng.choice([2**62, 10**6, 2])) + b"\x00"
    else:
        payload = b"\x02e" + _zigzag(rng.choice([2**40, 10**6])) + b"\x00"
        block = b"\x02" + _zigzag(len(payload)) + payload
    path.write_bytes(content[:header] + block + sync)
    return "amplified"


def jsonl_file(rng: random.Random, path: Path) -> list[bytes]:
    """Write a JSON Lines file of mixed lines at ``path``; return the records it holds (non-blank lines)."""
    lines = []
    for _ in range(rng.randint(1, 40)):
        r = rng.random()
        if r < 0.4:
            lines.append(dumps(mutate(rng, valid_event(rng), True), rng))
        elif r < 0.6:
            lines.append(mutate_bytes(rng, dumps(valid_event(rng), rng)))
        elif r < 0.75:
            lines.append(random_bytes(rng))
        elif r < 0.85:
            lines.append(
                rng.choice([b"x", b" ", b"\r", b"y\r\r"])
                * rng.choice([MAX_BYTES - 1, MAX_BYTES, MAX_BYTES + 2, 3 * MAX_BYTES])
            )
        else:
            lines.append(rng.choice([b"", b"  ", b"\r", b"\t"]))
    content = rng.choice([b"\n", b"\r\n"]).join(lines) + rng.choice([b"", b"\n"])
    path.write_bytes(gzip.compress(content, compresslevel=1) if path.name.endswith(".gz") else content)
    return [line.rstrip(b"\r\n") for line in content.split(b"\n") if line.rstrip(b"\r\n").strip()]


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def verify(result: object) -> str:
    """The outcome's name, after checking it is one well-formed, writable outcome."""
    if isinstance(result, Event):
        if not (MIN_TS_MS <= result.ts <= NOW_MS + DAY_MS and result.type in EVENT_TYPES and result.identifiers()):
            raise Crash(f"an accepted event breaks the contract: {result!r:.300}")
        json.dumps(result.to_record(), ensure_ascii=False).encode("utf-8")  # a late event's dead letter, outputs
        return "accepted"
    if isinstance(result, DeadLetter):
        if result.reason not in REASONS or not isinstance(result.payload, str) or not result.message:
            raise Crash(f"a malformed dead letter: {result!r:.300}")
        if not fastavro.validation.validate(result.to_dict(), DEAD_LETTER_SCHEMA, raise_errors=False):
            raise Crash(f"a dead letter the DeadLetter schema refuses: {result!r:.300}")
        json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")
        return f"dead_letter:{result.reason}"
    raise Crash(f"neither an Event nor a DeadLetter: {result!r:.300}")


class Run:
    def __init__(self, max_seconds: float, crash_dir: Path | None) -> None:
        self.outcomes: Counter[str] = Counter()
        self.by_class: Counter[str] = Counter()
        self.seconds_by_class: Counter[str] = Counter()  # decode + clean + checks, generation excluded
        self.crashes: list[tuple[str, str, str]] = []
        self.stalls: list[tuple[float, str, str]] = []
        self.slowest: tuple[float, str, str] = (0.0, "", "")
        self.inputs = 0
        self.max_seconds = max_seconds
        self.crash_dir = crash_dir

    def one(self, kind: str, what: object, step: Callable[[], object]) -> None:
        """Run ``step`` (decode + clean of one input) timed; count its outcome or its crash."""
        started = time.perf_counter()
        try:
            outcome = verify(step())
        except StopIteration:  # a file's end: no input
            return
        except Exception:  # anything escaping decode + clean is the finding
            outcome = "crash"
            self.crash(kind, what, traceback.format_exc())
        elapsed = time.perf_counter() - started
        self.inputs += 1
        self.by_class[kind] += 1
        self.seconds_by_class[kind] += elapsed
        self.outcomes[outcome] += 1
        if elapsed > self.slowest[0]:
            self.slowest = (elapsed, kind, _show(what))
        if elapsed > self.max_seconds:
            self.stalls.append((elapsed, kind, _show(what)))

    def crash(self, kind: str, what: object, trace: str) -> None:
        self.crashes.append((kind, _show(what), trace))
        if self.crash_dir is not None:
            self.crash_dir.mkdir(parents=True, exist_ok=True)
            name = self.crash_dir / f"crash-{len(self.crashes)}"
            data = what.content if isinstance(what, FileRecord) else what
            if not isinstance(data, bytes):
                try:
                    data = repr(data).encode("utf-8", "backslashreplace")
                except (RecursionError, ValueError):
                    data = _show(data).encode("utf-8", "backslashreplace")
            name.with_suffix(".input").write_bytes(data)
            name.with_suffix(".txt").write_text(f"{kind}\n{trace}", encoding="utf-8")


def _show(what: object) -> str:
    try:
        text = repr(what)
    except (RecursionError, ValueError):  # nested past the recursion limit, an int past what str() converts
        text = f"<{type(what).__name__} nested too deep or holding an int too long to show>"
    return text if len(text) <= 200 else f"{text[:160]}... ({len(text)} chars)"


def inputs(rng: random.Random, scratch: Path) -> Iterator[tuple[str, object, Callable[[], object]]]:
    """Endless (class, input, step) triples; ``step`` decodes and cleans one record."""
    position = 0

    def cleaned(record: object) -> Callable[[], object]:
        return lambda: CLEANER.clean(record, "fuzz", str(position), NOW_MS)

    def decoded(data: bytes) -> Callable[[], object]:
        return lambda: clean_record(CLEANER, decode_json(data, "fuzz", str(position), MAX_BYTES), NOW_MS)

    while True:
        position += 1
        r = rng.random()
        if r < 0.40:
            record = mutate(rng, valid_event(rng), False)
            yield "object", record, cleaned(record)
        elif r < 0.78:
            data = dumps(mutate(rng, valid_event(rng), True), rng)
            if rng.random() < 0.5:
                data = mutate_bytes(rng, data)
            yield "json", data, decoded(data)
        elif r < 0.88:
            data = random_bytes(rng)
            yield "bytes", data, decoded(data)
        elif r < 0.89:
            kind, what = huge_input(rng)
            yield "huge", what, (decoded(what) if kind == "json" else cleaned(what))  # type: ignore[arg-type]
        elif r < 0.90:
            kind, what = deep_input(rng)
            yield "deep", what, (decoded(what) if kind == "json" else cleaned(what))  # type: ignore[arg-type]
        elif r < 0.905:
            yield from _file_inputs(rng, scratch / rng.choice(["in.jsonl", "in.jsonl.gz"]), jsonl=True)
        elif r < 0.91:
            yield from _file_inputs(rng, scratch / "in.avro", jsonl=False)
        else:  # a valid event, as object or as JSON: the accepted path stays exercised
            record = valid_event(rng)
            yield "valid", record, cleaned(record)


class FileRecord:
    """One record of a generated file, as an input: shown short, saved whole (the file) on a crash."""

    def __init__(self, variety: str, content: bytes, seen: list[str]) -> None:
        self.variety, self.content, self.seen = variety, content, seen
        self.index = len(seen)

    def __repr__(self) -> str:
        return f"<{self.variety} file of {len(self.content):,} bytes, record #{self.index + 1}>"


def _file_inputs(rng: random.Random, path: Path, jsonl: bool) -> Iterator[tuple[str, object, Callable[[], object]]]:
    """The records of one generated file, each one input (reading is decoding: timed with the cleaning);
    then the file's accounting: the records read are its non-blank lines, at most one corrupt-data letter."""
    expected = _positions(path, jsonl_file(rng, path)) if jsonl else None
    variety = "jsonl" if jsonl else f"avro:{avro_file(rng, path)}"
    content = path.read_bytes()
    records = read_records(path, MAX_BYTES)
    seen: list[str] = []
    done: list[bool] = []

    def step() -> object:
        try:
            raw = next(records)
        except StopIteration:
            done.append(True)
            raise
        seen.append(raw.position)
        return clean_record(CLEANER, raw, NOW_MS)

    while not done:
        if len(seen) > len(content):  # more records than bytes: a few bytes amplified into endless records
            yield variety, FileRecord(variety, content, seen), _raise(f"{len(content)} bytes gave {len(seen)} records")
            return
        yield variety, FileRecord(variety, content, seen), step
    if expected is not None and seen != [str(n) for n in expected]:
        yield variety, FileRecord(variety, content, seen), _raise(f"records read {seen} are not the lines {expected}")
    if not jsonl and (sum(p.startswith("after") for p in seen) > 1 or any(p.startswith("after") for p in seen[:-1])):
        yield variety, FileRecord(variety, content, seen), _raise(f"a corrupt-data dead letter not last: {seen}")


def _positions(path: Path, _lines: list[bytes]) -> list[int]:
    content = path.read_bytes()
    if path.name.endswith(".gz"):
        content = gzip.decompress(content)
    return [n for n, line in enumerate(content.split(b"\n"), start=1) if line.rstrip(b"\r\n").strip()]


def _raise(message: str) -> Callable[[], object]:
    def step() -> object:
        raise Crash(message)

    return step


def fuzz(count: int, seed: int, max_seconds: float, crash_dir: Path | None) -> int:
    rng = random.Random(seed)
    run = Run(max_seconds, crash_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segstream-fuzz-") as scratch:
        stream = inputs(rng, Path(scratch))
        next_report = 100_000
        while run.inputs < count:
            kind, what, step = next(stream)
            run.one(kind, what, step)
            if run.inputs >= next_report:
                rate = run.inputs / (time.perf_counter() - started)
                print(
                    f"  {run.inputs:>9,} inputs  {rate:,.0f}/s  crashes {len(run.crashes)}", file=sys.stderr, flush=True
                )
                next_report += 100_000
    seconds = time.perf_counter() - started
    report(run, seconds, seed)
    return 1 if run.crashes or run.stalls else 0


def report(run: Run, seconds: float, seed: int) -> None:
    print(f"fuzz run: {run.inputs:,} inputs, seed {seed}, {seconds:,.1f} s, {run.inputs / seconds:,.0f} inputs/s")
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}")
    print("\nby input class (inputs, mean decode + clean + checks time):")
    for kind, n in sorted(run.by_class.items(), key=lambda item: -item[1]):
        print(f"  {kind:<24} {n:>10,}  {1e6 * run.seconds_by_class[kind] / n:9.1f} µs")
    print("\nby outcome:")
    for outcome, n in sorted(run.outcomes.items(), key=lambda item: -item[1]):
        print(f"  {outcome:<32} {n:>10,}  {100 * n / run.inputs:6.2f}%")
    print(f"\ncrashes: {len(run.crashes)}")
    for kind, what, trace in run.crashes[:5]:
        print(f"  [{kind}] {what}\n{trace}")
    elapsed, kind, what = run.slowest
    print(f"slowest input: {elapsed * 1000:.1f} ms [{kind}] {what}")
    print(f"stalls (> {run.max_seconds} s): {len(run.stalls)}")
    for elapsed, kind, what in run.stalls[:5]:
        print(f"  {elapsed:.2f} s [{kind}] {what}")


def fuzz_atheris(argv: list[str]) -> int:
    """Coverage-guided: atheris mutates bytes for ``decode_json`` + clean (optional dependency)."""
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install atheris); it is optional", file=sys.stderr)
        return 2

    atheris.instrument_all()  # the project is imported already: instrument every loaded function

    def one_input(data: bytes) -> None:
        verify(clean_record(CLEANER, decode_json(data, "fuzz", "1", MAX_BYTES), NOW_MS))

    if not any(not arg.startswith("-") for arg in argv):  # no corpus given: seed one with valid events
        corpus = Path(tempfile.mkdtemp(prefix="segstream-atheris-"))
        rng = random.Random(0)
        for n in range(50):
            (corpus / f"seed-{n}").write_bytes(dumps(valid_event(rng), rng))
        argv = [*argv, str(corpus)]
    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="how many inputs (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1.0, help="an input slower than this is a stall")
    parser.add_argument("--crash-dir", type=Path, help="write each crashing input and its traceback here")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided with atheris; libFuzzer flags after --")
    args, rest = parser.parse_known_args()
    if args.atheris:
        sys.exit(fuzz_atheris([arg for arg in rest if arg != "--"]))
    sys.exit(fuzz(args.inputs, args.seed, args.max_seconds, args.crash_dir))


if __name__ == "__main__":
    main()
