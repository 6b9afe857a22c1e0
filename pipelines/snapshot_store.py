"""A store of customer snapshots on local disk (SQLite), with each customer's next timer.

Chunked replays keep customers here between chunk pipelines, so memory holds only the customers a
chunk touches. One writer at a time (the DirectRunner's single worker).

>>> import tempfile, pathlib
>>> from transforms.customer import CustomerState, Snapshot
>>> store = SnapshotStore(pathlib.Path(tempfile.mkdtemp()) / "s.db")
>>> store.put("user:1", Snapshot(CustomerState("user:1"), []), wake=5)
>>> store.commit()
>>> store.get("user:1").state.customer_id, store.due(10), store.due(4)
('user:1', ['user:1'], [])
"""

from __future__ import annotations

import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transforms.customer import Snapshot


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

    def snapshots(self) -> Iterator[Snapshot]:
        """Every stored snapshot, by key."""
        for (data,) in self._db.execute("SELECT data FROM snapshots ORDER BY key"):
            yield pickle.loads(data)

    def wakes(self) -> list[tuple[str, int]]:
        """Every stored customer that has a timer, with the timer."""
        return [(row[0], row[1]) for row in self._db.execute("SELECT key, wake FROM snapshots WHERE wake IS NOT NULL")]

    def all_keys(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT key FROM snapshots")]

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.commit()
        self._db.close()
