"""Avro schemas of every record that crosses a boundary.

>>> sorted(SCHEMA_NAMES)
['ClickstreamEvent', 'DeadLetter', 'IdentityMerge', 'RunSummary', 'SegmentChange', 'Transaction']
>>> load_schema("SegmentChange")["name"]
'segstream.SegmentChange'
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import fastavro

SCHEMA_NAMES = ("ClickstreamEvent", "Transaction", "DeadLetter", "SegmentChange", "IdentityMerge", "RunSummary")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed (fastavro) schema ``name`` shipped in this package."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.avsc").read_text(encoding="utf-8")
    return fastavro.parse_schema(json.loads(text))
