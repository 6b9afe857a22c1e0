"""Forged model snapshots for the tests: a payload that runs code when unpickled, and the bytes of a
snapshot with any header (:mod:`online_models.snapshots`)."""

from __future__ import annotations

import json
from pathlib import Path

from online_models.snapshots import MAGIC


class RunsCode:
    """Unpickled, it creates ``marker``: the payload of a forged snapshot."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (self.marker.touch, ())


def snapshot_of(header: dict, payload: bytes) -> bytes:
    """Snapshot bytes with ``header`` as its header line, whatever it says."""
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload
