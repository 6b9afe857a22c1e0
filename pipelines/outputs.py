"""Where results go: JSONL files and Redis, shared by every engine driver."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipelines.redis_store import RedisSink, connect
from transforms.changes import SegmentChange
from transforms.dead_letters import DeadLetter


class JsonLinesWriter:
    """Appends one JSON object per line; ``flush`` makes lines visible to readers right away."""

    def __init__(self, path: Path | None) -> None:
        self._handle: IO[str] | None = path.open("a", encoding="utf-8") if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def truncate(*paths: Path | None) -> None:
    """Start each output file empty (writers append)."""
    for path in paths:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")


@dataclass(frozen=True)
class OutputPaths:
    changes: Path | None = None
    profiles: Path | None = None
    dead_letters: Path | None = None
    summary: Path | None = None


@dataclass
class OutputSink:
    """Buffers changes and profile updates to Redis in pipelined batches; appends files."""

    redis_url: str
    paths: OutputPaths
    redis_prefix: str = "segstream"
    batch_size: int = 1000
    _changes: list[SegmentChange] = field(default_factory=list)
    _profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis = RedisSink(connect(self.redis_url), self.redis_prefix)
        self.change_file = JsonLinesWriter(self.paths.changes)
        self.dead_letter_file = JsonLinesWriter(self.paths.dead_letters)
        self.profile_file = JsonLinesWriter(self.paths.profiles)

    def change(self, change: SegmentChange) -> None:
        self._changes.append(change)
        self.change_file.write(change.to_dict())
        self._maybe_flush()

    def profile(self, profile: dict[str, Any]) -> None:
        """Latest profile of a customer (only the newest per customer is kept in a batch)."""
        self._profiles[profile["customer_id"]] = profile
        self._maybe_flush()

    def final_profile(self, profile: dict[str, Any]) -> None:
        self.profile(profile)
        self.profile_file.write(profile)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letter_file.write(letter.to_dict())

    def _maybe_flush(self) -> None:
        if len(self._changes) + len(self._profiles) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self._changes or self._profiles:
            self.redis.write(self._changes, self._profiles.values())
            self._changes.clear()
            self._profiles.clear()
        for writer in (self.change_file, self.dead_letter_file, self.profile_file):
            writer.flush()

    def close(self) -> None:
        self.flush()
        for writer in (self.change_file, self.dead_letter_file, self.profile_file):
            writer.close()
