"""The live source: a Redis stream read through a consumer group.

``redis-stream://[:password@]HOST:PORT/STREAM[?group=G&consumer=C&db=N]`` (``rediss-stream://`` for TLS).
Each entry has a field ``event`` holding one event as JSON. Entries are acknowledged only after
their effects are written (see :class:`pipelines.redis_store.RedisSink`); a restarted consumer
first re-reads its own unacknowledged entries, so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import redis

from pipelines.redis_store import RedisUnavailable, connect, redact, retrying

SCHEMES = {"redis-stream": "redis", "rediss-stream": "rediss"}


@dataclass(frozen=True)
class StreamSpec:
    """Where a live stream is and how this job consumes it."""

    redis_url: str
    stream: str
    group: str = "segstream"
    consumer: str = "segstream-1"

    @classmethod
    def parse(cls, text: str) -> StreamSpec:
        """Parse a ``redis-stream://`` source.

        >>> StreamSpec.parse("redis-stream://127.0.0.1:6379/clicks?group=g1")
        StreamSpec(redis_url='redis://127.0.0.1:6379/0', stream='clicks', group='g1', consumer='segstream-1')
        """
        parts = urlsplit(text)
        if parts.scheme not in SCHEMES or not parts.netloc or not parts.path.strip("/"):
            raise ValueError(f"{redact(text)!r} is not redis-stream://HOST:PORT/STREAM")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        db = query.get("db", "0")
        return cls(
            redis_url=f"{SCHEMES[parts.scheme]}://{parts.netloc}/{db}",
            stream=parts.path.strip("/"),
            group=query.get("group", "segstream"),
            consumer=query.get("consumer", "segstream-1"),
        )

    @property
    def source_name(self) -> str:
        """What dead letters and acknowledgements name as the source."""
        return f"redis-stream:{self.stream}:{self.group}"


def is_stream_source(source: str) -> bool:
    return source.split("://", 1)[0] in SCHEMES


def is_live_source(source: str) -> bool:
    """A source that does not end: a Redis stream, a Kafka topic, a directory watched for new files."""
    return is_stream_source(source) or source.startswith("kafka://") or Path(source).is_dir()


def ack_target(source: str, position: str) -> tuple[str, str, str] | None:
    """``(stream, group, entry id)`` to acknowledge for a record from a live stream, else None.

    >>> ack_target("redis-stream:clicks:segstream", "1-0")
    ('clicks', 'segstream', '1-0')
    >>> ack_target("/data/events.jsonl", "7") is None
    True
    """
    if not source.startswith("redis-stream:"):
        return None
    stream, group = source.removeprefix("redis-stream:").rsplit(":", 1)
    return stream, group, position


class StreamReader:
    """Reads entries for one consumer: first its own pending ones, then new ones."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.client = connect(spec.redis_url)
        try:
            self.client.xgroup_create(spec.stream, spec.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise RedisUnavailable(f"cannot create consumer group {spec.group}: {error}") from None
        self._backlog_from: str | None = "0"  # our own unacknowledged entries from an earlier run come first
        self.max_ts: int | None = None  # largest event time read (the source's watermark base)

    def read(self, count: int = 500, block_ms: int = 200) -> list[tuple[str, bytes | None]]:
        """Up to ``count`` entries as ``(entry id, event JSON bytes or None)``."""
        backlog = self._backlog_from
        reply = retrying(  # a Redis outage holds the reader (and so the job) until Redis is back
            lambda _: self.client.xreadgroup(
                self.spec.group,
                self.spec.consumer,
                {self.spec.stream: backlog or ">"},
                count=count,
                block=None if backlog else block_ms,
            ),
            f"read {self.spec.stream}",
        )
        entries = reply[0][1] if reply else []
        if backlog is not None:
            self._backlog_from = entries[-1][0].decode() if entries else None
        return [(entry_id.decode(), (fields or {}).get(b"event")) for entry_id, fields in entries]
