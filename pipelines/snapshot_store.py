"""A store of customer snapshots on local disk (SQLite), with each customer's next timer.

The core loop keeps dormant customers here (no pending event; at most a far timer, whose time the
store indexes); chunked Beam replays keep every customer here between chunk pipelines. One writer
at a time. The store is a scratch file: a run works on a copy and the customer store
(:mod:`pipelines.customer_store`) puts it in place only once the run ended well, so the fast
settings below (no journal, no fsync) never put a saved state at risk.

>>> import tempfile, pathlib
>>> from transforms.customer import CustomerState, Snapshot
>>> store = SnapshotStore(pathlib.Path(tempfile.mkdtemp()) / "s.db")
>>> store.put("user:1", Snapshot(CustomerState("user:1"), []), wake=5)
>>> store.commit()
>>> store.get("user:1").state.customer_id, store.due(10), store.due(4), store.earliest_wake()
('user:1', ['user:1'], [], 5)
>>> snapshot, wake = store.take("user:1")
>>> wake, store.get("user:1"), store.earliest_wake()
(5, None, None)
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transforms.customer import Snapshot

FORMAT_VERSION = 1  # the tables below, pickled Snapshots; stores written before versioning are 1


class StateFileError(Exception):
    """A saved state file this code cannot continue from (damaged, or of another format)."""


class SnapshotStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level="DEFERRED", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE IF NOT EXISTS snapshots (key TEXT PRIMARY KEY, wake INTEGER, data BLOB)")
        self._db.execute("CREATE INDEX IF NOT EXISTS by_wake ON snapshots (wake)")
        self._db.execute("CREATE TABLE IF NOT EXISTS shared (name TEXT PRIMARY KEY, data BLOB)")

    def get(self, key: str) -> Snapshot | None:
        row = self._db.execute("SELECT data FROM snapshots WHERE key = ?", (key,)).fetchone()
        return pickle.loads(row[0]) if row else None

    def take(self, key: str) -> tuple[Snapshot, int | None] | None:
        """Remove a customer from the store; its snapshot and stored timer (None: not stored)."""
        row = self._db.execute("SELECT data, wake FROM snapshots WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.delete(key)
        return pickle.loads(row[0]), row[1]

    def put(self, key: str, snapshot: Snapshot, wake: int | None) -> None:
        data = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
        self._db.execute("INSERT OR REPLACE INTO snapshots (key, wake, data) VALUES (?, ?, ?)", (key, wake, data))

    def delete(self, key: str) -> None:
        self._db.execute("DELETE FROM snapshots WHERE key = ?", (key,))

    def get_shared(self, name: str) -> Any:
        """A value all customers share (the RFM population), or None."""
        row = self._db.execute("SELECT data FROM shared WHERE name = ?", (name,)).fetchone()
        return pickle.loads(row[0]) if row else None

    def put_shared(self, name: str, value: object) -> None:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self._db.execute("INSERT OR REPLACE INTO shared (name, data) VALUES (?, ?)", (name, data))

    def due(self, watermark: int) -> list[str]:
        """Customers whose next timer is at or before ``watermark``."""
        return [row[0] for row in self._db.execute("SELECT key FROM snapshots WHERE wake <= ?", (watermark,))]

    def earliest_wake(self) -> int | None:
        """The earliest timer of a stored customer (None: no stored customer has one)."""
        return self._db.execute("SELECT MIN(wake) FROM snapshots").fetchone()[0]

    def snapshots(self) -> Iterator[Snapshot]:
        """Every stored snapshot, by key."""
        for (data,) in self._db.execute("SELECT data FROM snapshots ORDER BY key"):
            yield pickle.loads(data)

    def all_keys(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT key FROM snapshots")]

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        """Commit (with the format version) and close."""
        self.put_shared("format", FORMAT_VERSION)
        self._db.commit()
        self._db.close()

    def abandon(self) -> None:
        """Close without committing."""
        self._db.rollback()
        self._db.close()


def check_state_file(path: Path) -> None:
    """:class:`StateFileError` unless ``path`` is an intact store of this format (read only)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise StateFileError(f"cannot open the state file {path}: {error}") from None
    try:
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        row = db.execute("SELECT data FROM shared WHERE name = 'format'").fetchone()
    except sqlite3.DatabaseError as error:
        raise StateFileError(f"{path} is not a readable state file ({error})") from None
    finally:
        db.close()
    if problems != ["ok"]:
        raise StateFileError(f"{path} is damaged ({'; '.join(problems[:3])})")
    version = FORMAT_VERSION if row is None else pickle.loads(row[0])
    if version != FORMAT_VERSION:
        raise StateFileError(f"{path} is state format {version!r}; this segstream reads {FORMAT_VERSION}")
