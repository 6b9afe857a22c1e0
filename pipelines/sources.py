"""File sources: JSON Lines (optionally gzipped) and Avro container files, record by record.

Each record comes out as a :class:`RawRecord` with its position, so a dead letter can point at it.
Decoding failures are records too (``payload`` is the raw text and ``error`` says why).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
import orjson
from tqdm import tqdm

from transforms.dead_letters import Reason, Rejection
from transforms.timestamps import parse_event_time

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".ndjson", ".avro")


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
        head = data[:256].decode("utf-8", "replace")
        why = f"record of {len(data)} bytes exceeds {max_bytes}"
        return RawRecord(source, position, head, Rejection(Reason.OVERSIZED, None, why))
    try:
        return RawRecord(source, position, orjson.loads(data))
    except orjson.JSONDecodeError:
        text = data.decode("utf-8", "replace")
        return RawRecord(source, position, text, Rejection(Reason.MALFORMED, None, "not valid JSON"))


def _jsonl(handle: BinaryIO, source: str, max_bytes: int) -> Iterator[RawRecord]:
    for number, line in enumerate(handle, start=1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        yield decode_json(line, source, str(number), max_bytes)


def _from_avro(record: dict[str, Any]) -> dict[str, Any]:
    """Avro puts absent optional fields as null and extra fields as JSON strings in ``properties``."""
    out = {k: v for k, v in record.items() if v is not None and k != "properties"}
    properties = record.get("properties") or {}
    if properties:
        decoded = {}
        for key, value in properties.items():
            try:
                decoded[key] = json.loads(value)
            except (TypeError, ValueError):
                decoded[key] = value
        out["properties"] = decoded
    return out


def _avro(handle: BinaryIO, source: str, tail: bytes) -> Iterator[RawRecord]:
    """Records of an Avro container; ``tail`` is the file's last 16 bytes (its final sync marker)."""
    number = 0
    try:
        reader = fastavro.reader(handle)
        for number, record in enumerate(reader, start=1):
            yield RawRecord(source, f"record {number}", _from_avro(record))
        if tail != reader._header["sync"]:  # fastavro stops quietly when a file ends inside a block header
            raise EOFError("the file ends inside a block (truncated)")
    except Exception as error:  # ValueError, EOFError, IndexError, zlib.error, MemoryError... from a corrupt block
        # A corrupt block: nothing after it can be decoded. It is reported, never silently dropped.
        why = f"corrupt Avro data, rest of file unreadable ({error or type(error).__name__})"
        yield RawRecord(source, f"after record {number}", "", Rejection(Reason.MALFORMED, None, why))


def record_event_time(record: RawRecord) -> int | None:
    """The event time of a decoded record, if it has a valid one (for watermarks before cleaning)."""
    if record.error is None and isinstance(record.payload, dict):
        try:
            return parse_event_time(record.payload.get("ts"))
        except Rejection:
            return None
    return None


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
