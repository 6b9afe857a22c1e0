"""Where results go: JSONL files and Redis, shared by every engine driver."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipelines.forget import Eraser
from pipelines.redis_store import RedisSink, shared_client
from transforms.changes import IdentityMerge, SegmentChange
from transforms.customer import CustomerState
from transforms.dead_letters import DeadLetter
from transforms.privacy import DeletionReceipt, Forget


class JsonLinesWriter:
    """Appends one JSON object per line; ``flush`` makes lines visible to readers right away."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._handle: IO[str] | None = path.open("a", encoding="utf-8") if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record``; strict JSON: a NaN or an infinity raises ValueError (cleaning keeps them out)."""
        if self._handle is not None:
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            self._handle.write(line + "\n")

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def reopen(self) -> None:
        """Append again, to the file now at ``path`` (after it was replaced)."""
        self.close()
        self._handle = self.path.open("a", encoding="utf-8") if self.path is not None else None


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
    receipts: Path | None = None  # deletion receipts of forgets (pipelines.forget)


class OutputSink:
    """Buffers changes, profile updates and dead letters to Redis in pipelined batches; appends files.

    Profiles are rendered (``render``) only when a batch is flushed, once per customer and batch.
    """

    def __init__(
        self,
        redis_url: str,
        paths: OutputPaths,
        render: Callable[[CustomerState], dict[str, Any]],
        redis_prefix: str = "segstream",
        batch_size: int = 1000,
        salt: str = "",
    ) -> None:
        self.redis = RedisSink(shared_client(redis_url), redis_prefix)
        self.eraser = Eraser(self.redis.client, redis_prefix, salt)
        self.receipts_out = paths.receipts
        self.render = render
        self.batch_size = batch_size
        self.change_file = JsonLinesWriter(paths.changes)
        self.dead_letter_file = JsonLinesWriter(paths.dead_letters)
        self.profile_file = JsonLinesWriter(paths.profiles)
        self._changes: list[SegmentChange] = []
        self._touched: dict[str, CustomerState] = {}
        self._dead: list[DeadLetter] = []
        self._merges: list[IdentityMerge] = []

    def change(self, change: SegmentChange) -> None:
        self._changes.append(change)
        self.change_file.write(change.to_dict())
        self._maybe_flush()

    def profile(self, state: CustomerState) -> None:
        """The customer's profile changed; it is written at the next flush."""
        self._touched[state.customer_id] = state
        self._maybe_flush()

    def final_profile(self, state: CustomerState) -> None:
        self.profile(state)
        self.profile_file.write(self.render(state))

    def merge(self, merge: IdentityMerge) -> None:
        """An identity merge: to the change stream and file; the absorbed profiles become aliases."""
        for absorbed in merge.absorbed:
            self._touched.pop(absorbed, None)
        self._merges.append(merge)
        self.change_file.write({"kind": "identity_merge", **merge.to_dict()})
        self._maybe_flush()

    def dead_letter(self, letter: DeadLetter) -> None:
        self._dead.append(letter)
        self.dead_letter_file.write(letter.to_dict())
        self._maybe_flush()

    def forget(self, forget: Forget, identifiers: Iterable[tuple[str, str]] = (), graph: int = 0) -> DeletionReceipt:
        """Erase a forgotten customer from Redis and the output files, after everything
        written before (its forget exits included); write and return the deletion receipt. ``identifiers``:
        more of theirs (the identity graph's), ``graph``: how many the identity graph removed."""
        self.flush()
        erased = self.eraser.erase(forget, identifiers, graph)
        writers = [w for w in (self.change_file, self.dead_letter_file, self.profile_file) if w.path is not None]
        for writer in writers:
            writer.close()
        try:
            return self.eraser.finish(erased, [w.path for w in writers if w.path is not None], self.receipts_out)
        finally:
            for writer in writers:
                writer.reopen()

    def _maybe_flush(self) -> None:
        if len(self._changes) + len(self._touched) + len(self._dead) + len(self._merges) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self._changes or self._touched or self._dead or self._merges:
            profiles = [self.render(state) for state in self._touched.values()]
            self.redis.write(self._changes, profiles, self._dead, merges=self._merges)
            self._changes.clear()
            self._touched.clear()
            self._dead.clear()
            self._merges.clear()
        for writer in (self.change_file, self.dead_letter_file, self.profile_file):
            writer.flush()

    def close(self) -> None:
        self.flush()
        for writer in (self.change_file, self.dead_letter_file, self.profile_file):
            writer.close()
