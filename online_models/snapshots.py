"""Versioned model snapshots: bytes with a header, and a registry of numbered versions in a store.

Format (``FORMAT_VERSION`` 1)::

    b"SEGSTREAM-MODEL\\n" + <header: one line of JSON> + b"\\n" + <pickle of the model>

The header holds ``format`` (1), ``river`` (the River version that wrote it), ``model`` (the
model's name), ``params``, ``n_updates`` and ``sha256`` of the payload. :func:`load_model` refuses
with a :class:`ValueError` bytes that are not a snapshot, another format version, a payload that
does not match its checksum, or (unless ``allow_other_river=True``) a snapshot written by another
River version, whose pickles are not guaranteed to load. Pickles run code when loaded: load only
snapshots your own job wrote.

:class:`ModelRegistry` keeps numbered versions in anything with ``get(key) -> bytes | None`` and
``set(key, bytes)`` (a ``redis.Redis`` client, or a dict-backed fake)::

    {prefix}:model:{task}:latest  -> b"<n>"   (the newest version number)
    {prefix}:model:{task}:v{n}    -> snapshot bytes

>>> from online_models.pipelines import OnlineModel
>>> store = DictStore()
>>> registry = ModelRegistry(store, prefix="segstream")
>>> model = OnlineModel().learn({"x": 1.0}, True)
>>> registry.publish("churn", model), registry.publish("churn", model)
(1, 2)
>>> sorted(store.data)
['segstream:model:churn:latest', 'segstream:model:churn:v1', 'segstream:model:churn:v2']
>>> registry.latest_version("churn"), registry.load("churn").n_updates
(2, 1)
>>> read_header(store.data["segstream:model:churn:v1"])["model"]
'logistic'
>>> load_model(b"not a model")
Traceback (most recent call last):
...
ValueError: not a segstream model snapshot (bad magic)
"""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any, Protocol

import river

MAGIC = b"SEGSTREAM-MODEL\n"
FORMAT_VERSION = 1


def dump_model(model: Any, name: str | None = None) -> bytes:
    """Snapshot ``model`` (an :class:`~online_models.pipelines.OnlineModel` or any River estimator)."""
    payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    header = {
        "format": FORMAT_VERSION,
        "river": river.__version__,
        "model": name if name is not None else getattr(model, "name", type(model).__name__),
        "params": getattr(model, "params", None),
        "n_updates": getattr(model, "n_updates", None),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    line = json.dumps(header, sort_keys=True, default=repr, separators=(",", ":")).encode("utf-8")
    return MAGIC + line + b"\n" + payload


def _split(data: bytes) -> tuple[dict, bytes]:
    if not isinstance(data, bytes | bytearray | memoryview) or not bytes(data[: len(MAGIC)]) == MAGIC:
        raise ValueError("not a segstream model snapshot (bad magic)")
    data = bytes(data)
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise ValueError("model snapshot header is truncated")
    try:
        header = json.loads(data[len(MAGIC) : end])
    except ValueError:
        raise ValueError("model snapshot header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("model snapshot header is not a JSON object")
    return header, data[end + 1 :]


def read_header(data: bytes) -> dict:
    """The header of a snapshot, without unpickling it."""
    return _split(data)[0]


def load_model(data: bytes, allow_other_river: bool = False) -> Any:
    """The model in a snapshot; ValueError when the snapshot is not one this code can load."""
    header, payload = _split(data)
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"model snapshot format {header.get('format')!r} is not supported (this code reads {FORMAT_VERSION})"
        )
    if header.get("river") != river.__version__ and not allow_other_river:
        raise ValueError(
            f"model snapshot was written by river {header.get('river')}, this is river {river.__version__}; "
            "retrain or pass allow_other_river=True"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("model snapshot payload does not match its checksum (truncated or corrupted)")
    return pickle.loads(payload)


class ByteStore(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> Any: ...


class DictStore:
    """A dict-backed store with the ``get``/``set`` of ``redis.Redis`` (for tests and local runs)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes | str | int) -> bool:
        self.data[key] = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return True


class ModelRegistry:
    """Numbered snapshots per task in a byte store (key layout in the module docstring).

    Versions increase monotonically: :meth:`publish` writes ``v{n}`` for the first free ``n`` after
    ``latest`` and then moves ``latest``; readers that follow ``latest`` never see a partly written
    snapshot. With only ``get``/``set`` two concurrent publishers of one task could race; run one
    publisher per task (the job's model owner).
    """

    def __init__(self, store: ByteStore, prefix: str = "segstream"):
        self.store = store
        self.prefix = prefix

    def key(self, task: str, version: int | None = None) -> str:
        return f"{self.prefix}:model:{task}:" + ("latest" if version is None else f"v{version}")

    def latest_version(self, task: str) -> int | None:
        raw = self.store.get(self.key(task))
        if raw is None:
            return None
        try:
            return int(raw.decode("ascii") if isinstance(raw, bytes) else raw)
        except ValueError:
            raise ValueError(f"{self.key(task)} does not hold a version number: {raw!r}") from None

    def publish(self, task: str, model: Any) -> int:
        """Store a new snapshot of ``model``; returns its version number."""
        data = dump_model(model)
        version = (self.latest_version(task) or 0) + 1
        while self.store.get(self.key(task, version)) is not None:
            version += 1
        self.store.set(self.key(task, version), data)
        self.store.set(self.key(task), str(version).encode("ascii"))
        return version

    def load(self, task: str, version: int | None = None, allow_other_river: bool = False) -> Any:
        """The model of ``version`` (default: the latest); LookupError when there is none."""
        if version is None:
            version = self.latest_version(task)
            if version is None:
                raise LookupError(f"no model published for task {task!r} under {self.prefix!r}")
        data = self.store.get(self.key(task, version))
        if data is None:
            raise LookupError(f"model version {version} of task {task!r} is not in the store")
        return load_model(data, allow_other_river=allow_other_river)
