"""Versioned model snapshots: signed bytes with a header, and a registry of numbered versions in a store.

Format (``FORMAT_VERSION`` 2)::

    b"SEGSTREAM-MODEL\\n" + <header: one line of JSON> + b"\\n" + <pickle of the model>

The header holds ``format`` (2), ``river`` (the River version that wrote it), ``model`` (the
model's name), ``params``, ``n_updates`` and ``mac``: the hex HMAC-SHA256, under a secret key, of
the snapshot as it would be without ``mac`` (magic, the canonical header line: sorted keys, no
spaces; newline; payload). Pickles run code when loaded, so :func:`load_model` checks the MAC with
:func:`hmac.compare_digest` before it unpickles anything, and refuses with a :class:`ValueError`
bytes that are not a snapshot, any snapshot when it has no key, another format version (format 1
was not signed), a snapshot without a MAC or whose MAC does not match (forged, corrupted,
truncated, or signed with another key) and (unless ``allow_other_river=True``) a snapshot written
by another River version, whose pickles are not guaranteed to load. Whoever holds the key can
make this code run anything: keep it as secret as the job itself.

:class:`ModelRegistry` keeps numbered versions in anything with ``get(key) -> bytes | None`` and
``set(key, bytes)`` (a ``redis.Redis`` client, or a dict-backed fake)::

    {prefix}:model:{task}:latest  -> b"<n>"   (the newest version number)
    {prefix}:model:{task}:v{n}    -> snapshot bytes

>>> from online_models.pipelines import OnlineModel
>>> store = DictStore()
>>> registry = ModelRegistry(store, prefix="segstream", mac_key=b"a-secret-of-16-bytes-or-more")
>>> model = OnlineModel().learn({"x": 1.0}, True)
>>> registry.publish("churn", model), registry.publish("churn", model)
(1, 2)
>>> sorted(store.data)
['segstream:model:churn:latest', 'segstream:model:churn:v1', 'segstream:model:churn:v2']
>>> registry.latest_version("churn"), registry.load("churn").n_updates
(2, 1)
>>> read_header(store.data["segstream:model:churn:v1"])["model"]
'logistic'
>>> load_model(b"not a model", mac_key=b"a-secret-of-16-bytes-or-more")
Traceback (most recent call last):
...
ValueError: not a segstream model snapshot (bad magic)
>>> load_model(store.data["segstream:model:churn:v1"], mac_key=b"another-key-of-16-bytes")
Traceback (most recent call last):
...
ValueError: model snapshot signature does not match (forged, corrupted or signed with another key)
>>> load_model(store.data["segstream:model:churn:v1"], mac_key=None)
Traceback (most recent call last):
...
ValueError: no model key: snapshots are not loaded without one
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from typing import Any, Protocol

import river

MAGIC = b"SEGSTREAM-MODEL\n"
FORMAT_VERSION = 2


def _canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _mac(mac_key: bytes, header: dict, payload: bytes) -> str:
    """The MAC of a snapshot with ``header`` (its ``mac`` left out) and ``payload``."""
    unsigned = {k: v for k, v in header.items() if k != "mac"}
    return hmac.new(mac_key, MAGIC + _canonical(unsigned) + b"\n" + payload, hashlib.sha256).hexdigest()


def dump_model(model: Any, name: str | None = None, *, mac_key: bytes | None) -> bytes:
    """Snapshot ``model`` (an :class:`~online_models.pipelines.OnlineModel` or any River estimator),
    signed with ``mac_key``."""
    if not mac_key:
        raise ValueError("no model key: snapshots are not written without one")
    payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    header = {
        "format": FORMAT_VERSION,
        "river": river.__version__,
        "model": name if name is not None else getattr(model, "name", type(model).__name__),
        "params": getattr(model, "params", None),
        "n_updates": getattr(model, "n_updates", None),
    }
    header = json.loads(json.dumps(header, default=repr))  # as a reader parses it (keys str, tuples lists)
    header["mac"] = _mac(mac_key, header, payload)
    return MAGIC + _canonical(header) + b"\n" + payload


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


def load_model(data: bytes, *, mac_key: bytes | None, allow_other_river: bool = False) -> Any:
    """The model in a snapshot signed with ``mac_key``; ValueError, before anything is unpickled,
    when the snapshot is not one this code can trust and load."""
    header, payload = _split(data)
    if not mac_key:
        raise ValueError("no model key: snapshots are not loaded without one")
    found = header.get("format")
    if found != FORMAT_VERSION:
        shown = found if isinstance(found, int) else "?"
        raise ValueError(f"model snapshot format {shown} is not supported (this code reads signed format 2)")
    mac = header.get("mac")
    if not isinstance(mac, str):
        raise ValueError("model snapshot is not signed")
    if not (mac.isascii() and hmac.compare_digest(mac, _mac(mac_key, header, payload))):
        raise ValueError("model snapshot signature does not match (forged, corrupted or signed with another key)")
    if header.get("river") != river.__version__ and not allow_other_river:
        raise ValueError(
            f"model snapshot was written by river {header.get('river')}, this is river {river.__version__}; "
            "retrain or pass allow_other_river=True"
        )
    try:
        return pickle.loads(payload)
    except Exception as error:  # a signed pickle of classes this code no longer has
        raise ValueError(f"signed model snapshot does not load with this code ({type(error).__name__})") from None


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
    publisher per task (the job's model owner). Snapshots are signed and verified with ``mac_key``;
    without it the registry neither publishes nor loads (ValueError).
    """

    def __init__(self, store: ByteStore, prefix: str = "segstream", mac_key: bytes | None = None):
        self.store = store
        self.prefix = prefix
        self.mac_key = mac_key  # signs what publish writes and verifies what load reads

    def key(self, task: str, version: int | None = None) -> str:
        return f"{self.prefix}:model:{task}:" + ("latest" if version is None else f"v{version}")

    def latest_version(self, task: str) -> int | None:
        raw = self.store.get(self.key(task))
        if raw is None:
            return None
        try:
            return int(raw.decode("ascii") if isinstance(raw, bytes) else raw)
        except ValueError:
            raise ValueError(f"{self.key(task)} does not hold a version number") from None

    def publish(self, task: str, model: Any) -> int:
        """Store a new snapshot of ``model``, signed; returns its version number."""
        data = dump_model(model, mac_key=self.mac_key)
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
        return load_model(data, mac_key=self.mac_key, allow_other_river=allow_other_river)
