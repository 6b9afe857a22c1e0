"""Find every trace of some strings in a whole Redis database and in files: SCAN every key, read it
whole by its TYPE (string, hash, set, sorted set, list, stream), search key names and values.

Used to check erasure: ``traces(client, needles, allowed)`` lists what still mentions a needle,
except values ``allowed`` accepts (the forget exits).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import redis


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def redis_items(client: redis.Redis) -> Iterator[tuple[str, str]]:
    """``(key, text)`` for every key name and every value of every key (one item per field, member,
    element or stream entry, the entry's fields as one JSON object)."""
    for raw in client.scan_iter(count=1000):
        key = _text(raw)
        kind = _text(client.type(raw))
        if kind == "none":  # deleted since the scan saw it (a live job is still writing)
            continue
        yield key, key
        if kind == "string":
            yield key, _text(client.get(raw) or b"")
        elif kind == "hash":
            for field, value in client.hgetall(raw).items():
                yield key, f"{_text(field)}={_text(value)}"
        elif kind == "set":
            for member in client.smembers(raw):
                yield key, _text(member)
        elif kind == "zset":
            for member in client.zrange(raw, 0, -1):
                yield key, _text(member)
        elif kind == "list":
            for element in client.lrange(raw, 0, -1):
                yield key, _text(element)
        elif kind == "stream":
            for _, fields in client.xrange(raw):
                yield key, json.dumps({_text(k): _text(v) for k, v in fields.items()})
        else:
            raise AssertionError(f"unexpected Redis type {kind} of {key}")


def file_items(paths: Iterable[Path]) -> Iterator[tuple[str, str]]:
    """``(file name, line)`` for every line of every file that exists."""
    for path in paths:
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                yield str(path), line


def is_forget_exit(text: str) -> bool:
    """Whether ``text`` is a segment change with reason ``forget`` (a line, or a stream entry holding one)."""
    try:
        record: Any = json.loads(text)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    if record.get("reason") == "forget" and record.get("change") == "exited":
        return True
    inner = record.get("change", record.get("body"))
    return isinstance(inner, str) and is_forget_exit(inner)


def traces(
    items: Iterable[tuple[str, str]], needles: Iterable[str], allowed: Callable[[str], bool] = is_forget_exit
) -> list[tuple[str, str]]:
    """The items that mention any needle, except those ``allowed``."""
    wanted = list(needles)
    return [(where, text) for where, text in items if any(n in text for n in wanted) and not allowed(text)]
