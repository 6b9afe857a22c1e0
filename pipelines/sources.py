"""File sources: JSON Lines (optionally gzipped) and Avro container files, record by record.

Each record comes out as a :class:`RawRecord` with its position, so a dead letter can point at it.
Decoding failures are records too (``payload`` is the raw text and ``error`` says why).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

import fastavro
import orjson
from tqdm import tqdm

from transforms.cleaning import KNOWN_FIELDS, MAX_NESTING, too_deep
from transforms.dead_letters import Reason, Rejection

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson", ".avro")
MAX_AVRO_BLOCK_BYTES = 64 * 1024 * 1024  # an Avro block inflating past this is corrupt (a decompression bomb)


def _capped(make: Callable[[], Any], *args: Any) -> Callable[[BinaryIO], io.BytesIO]:
    """A fastavro block reader for a compressed codec that stops inflating at MAX_AVRO_BLOCK_BYTES:
    fastavro's own readers inflate a block whole, so a few KB could claim gigabytes of memory."""

    def read_block(handle: BinaryIO) -> io.BytesIO:
        data = fastavro.schemaless_reader(handle, "bytes")  # the block: its length, then its bytes
        inflater = make(*args)
        out = inflater.decompress(data, MAX_AVRO_BLOCK_BYTES + 1)
        if len(out) > MAX_AVRO_BLOCK_BYTES:
            raise ValueError(f"a block inflates to more than {MAX_AVRO_BLOCK_BYTES:,} bytes")
        return io.BytesIO(out)

    return read_block


# Registered once for the process; below the cap they read exactly what fastavro's readers read.
fastavro.read.BLOCK_READERS.update(
    deflate=_capped(zlib.decompressobj, -15), bzip2=_capped(bz2.BZ2Decompressor), xz=_capped(lzma.LZMADecompressor)
)


class SourceError(Exception):
    """A source that cannot be read at all (missing file, not Avro, unknown format)."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One input record: a decoded object, or raw text with the decoding error."""

    source: str
    position: str
    payload: Any
    error: Rejection | None = None


def check_source(path: Path) -> None:
    """Raise :class:`SourceError` unless ``path`` is a readable file of a known format."""
    if not path.name.endswith(FILE_SUFFIXES):
        raise SourceError(f"{path}: unknown input format (expected one of {', '.join(FILE_SUFFIXES)})")
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    if path.name.endswith(".avro"):
        with path.open("rb") as handle:
            try:
                fastavro.reader(handle)
            except Exception as error:  # fastavro raises many types on a bad header (KeyError, SchemaParseException...)
                raise SourceError(f"{path}: not a readable Avro container file ({error})") from None


def decode_json(data: bytes, source: str, position: str, max_bytes: int) -> RawRecord:
    """One JSON-encoded record (a JSONL line, a stream entry); too large or not JSON carries its rejection."""
    if len(data) > max_bytes:
        return _oversized(data, len(data), source, position, max_bytes)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode("utf-8", "replace")
        return RawRecord(source, position, text, Rejection(Reason.MALFORMED, None, "not valid JSON"))
    if too_deep(value):  # the text is the payload: the decoded value is too deep to encode again
        why = f"record nests deeper than {MAX_NESTING} levels"
        return RawRecord(source, position, data.decode("utf-8"), Rejection(Reason.MALFORMED, None, why))
    return RawRecord(source, position, value)


def _oversized(head: bytes, size: int, source: str, position: str, max_bytes: int) -> RawRecord:
    why = f"record of {size} bytes exceeds {max_bytes}"
    return RawRecord(source, position, head[:256].decode("utf-8", "replace"), Rejection(Reason.OVERSIZED, None, why))


def _jsonl(handle: BinaryIO, source: str, max_bytes: int) -> Iterator[RawRecord]:
    number = 0
    # A line is read max_bytes + 2 bytes (with its CR LF) at most: the rest of a longer one is counted, never
    # held (a multi-gigabyte line, or a gzip bomb without newlines, would otherwise fill the memory).
    while line := handle.readline(max_bytes + 2):
        number += 1
        if line.endswith(b"\n") or len(line) < max_bytes + 2:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield decode_json(line, source, str(number), max_bytes)
            continue
        size, blank, line_end_only, last = len(line), not line.strip(), True, line
        line_end = len(line) - len(line.rstrip(b"\r\n"))  # CRs and LF at the end of what was read
        while not last.endswith(b"\n") and (chunk := handle.readline(1 << 20)):
            size += len(chunk)
            blank = blank and not chunk.strip()
            line_end_only = line_end_only and not chunk.strip(b"\r\n")
            content = len(chunk.rstrip(b"\r\n"))
            line_end = len(chunk) - content + (0 if content else line_end)
            last = chunk
        if line_end_only:  # the rest was CRs and the LF: the line is what was read, without them
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield decode_json(line, source, str(number), max_bytes)
        elif not blank:
            yield _oversized(line, size - line_end, source, str(number), max_bytes)


def _from_avro(record: Any) -> Any:
    """Avro puts absent optional fields as null and extra fields as JSON strings in ``properties``.

    A file written with another schema can hold anything: a record that is not an object, or
    ``properties`` that are not a map, goes to the cleaning step as it is (which rejects it). Extra
    fields and properties end in the event: Avro types JSON lacks become text (see :func:`_json_value`).
    """
    if not isinstance(record, dict) or too_deep(record):  # the cleaning step rejects both
        return record
    out = {
        k: v if k in KNOWN_FIELDS else _json_value(v) for k, v in record.items() if v is not None and k != "properties"
    }
    properties = record.get("properties")
    if isinstance(properties, dict):
        decoded = {}
        for key, value in properties.items():
            try:  # orjson, as for JSON Lines: no lone surrogates, NaN or unbounded depth (json.loads allows them)
                decoded[key] = orjson.loads(value)
            except orjson.JSONDecodeError:  # not JSON, or not str/bytes
                decoded[key] = _json_value(value)
            if too_deep(decoded[key], MAX_NESTING - 2):  # a value is at level 3 of the record
                decoded[key] = value
        if decoded:
            out["properties"] = decoded
    elif properties is not None:
        out["properties"] = properties
    return out


def _json_value(value: Any) -> Any:
    """An Avro value in JSON types (as Avro's JSON encoding has them): bytes and fixed as text of code
    points 0-255, decimals, UUIDs, dates and times as text. Events are written as JSON (a late one's dead
    letter, the outputs): a ``bytes`` or ``Decimal`` in their properties would raise there."""
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    return value


def _zero_bytes(schema: Any, empty: set[str]) -> bool:
    """Whether a value of the (parsed) ``schema`` can take no bytes; raise ValueError on an array of such
    values: a count of 2**62 in a few bytes would make fastavro build a list of that many (memory, time).
    ``empty`` collects the names of the zero-byte types defined so far."""
    if isinstance(schema, str):
        return schema == "null" or schema in empty
    if isinstance(schema, list):  # a union writes its branch index
        for branch in schema:
            _zero_bytes(branch, empty)
        return False
    kind = schema["type"]
    if kind in ("record", "error"):
        zero = all([_zero_bytes(field["type"], empty) for field in schema["fields"]])
    elif kind == "fixed":
        zero = schema["size"] == 0
    elif kind == "array":
        if _zero_bytes(schema["items"], empty):
            raise ValueError("the writer schema has an array of values that take no bytes")
        return False
    elif kind == "map":  # every entry has a key: a byte at least
        _zero_bytes(schema["values"], empty)
        return False
    elif kind == "enum":
        return False
    else:  # a primitive, possibly with a logical type
        return _zero_bytes(kind, empty)
    if zero:
        empty.add(schema["name"])
    return zero


def _avro(handle: BinaryIO, source: str, tail: bytes) -> Iterator[RawRecord]:
    """Records of an Avro container; ``tail`` is the file's last 16 bytes (its final sync marker)."""
    number = 0
    try:
        reader = fastavro.block_reader(handle)
        _zero_bytes(reader.writer_schema, set())  # raises on arrays of values that take no bytes
        for block in reader:
            # A record takes a byte at least unless its schema holds no data (null, no fields): there a block of
            # a few bytes can claim 2**62 records, a dead letter each, and the job would never end.
            if block.num_records > max(1, len(block.bytes_.getbuffer())):
                raise ValueError(f"a block of {block.size} bytes claims {block.num_records} records")
            for record in block:
                number += 1
                yield RawRecord(source, f"record {number}", _from_avro(record))
        if tail != reader._header["sync"]:  # fastavro stops quietly when a file ends inside a block header
            raise EOFError("the file ends inside a block (truncated)")
    except Exception as error:  # ValueError, EOFError, IndexError, zlib.error, MemoryError... from a corrupt block
        # A corrupt block: nothing after it can be decoded. It is reported, never silently dropped.
        why = f"corrupt Avro data, rest of file unreadable ({error or type(error).__name__})"
        yield RawRecord(source, f"after record {number}", "", Rejection(Reason.MALFORMED, None, why))


def read_records(path: Path, max_bytes: int, progress: bool = False) -> Iterator[RawRecord]:
    """Yield every record of the file at ``path`` (call :func:`check_source` first)."""
    source = str(path)
    with (
        path.open("rb") as raw,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=path.name,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        handle: BinaryIO = _ProgressReader(raw, bar)
        if path.name.endswith(".gz"):
            handle = gzip.GzipFile(fileobj=handle)  # type: ignore[assignment]
        if path.name.endswith(".avro"):
            yield from _avro(handle, source, _last_bytes(path, 16))
        else:
            yield from _jsonl(handle, source, max_bytes)


def _last_bytes(path: Path, n: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - n))
        return handle.read()


class _ProgressReader:
    """File wrapper that moves a progress bar by the compressed bytes read."""

    def __init__(self, raw: BinaryIO, bar: tqdm) -> None:
        self._raw = raw
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._bar.update(len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._raw.readline(size)
        self._bar.update(len(data))
        return data

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()
