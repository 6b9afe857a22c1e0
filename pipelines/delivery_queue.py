"""Durable per-subscriber webhook queues in Redis.

Key layout (``prefix`` defaults to ``segstream``)::

    {prefix}:webhooks:subscribers        hash: subscriber name -> JSON list of its segments (null: all)
    {prefix}:webhooks:{name}:queue       stream: change_id, customer_id, body; consumer group "delivery"
    {prefix}:webhooks:{name}:dead        stream: the queue's fields + reason, attempts, last_status, last_error

The sink appends a change to the queue of every subscriber that wants its segment in the same Lua
script that applies the change (see :mod:`pipelines.redis_store`), so a change is queued exactly
when it is first written. A worker reads its queue through the consumer group, and acknowledges
and deletes each entry once it is delivered or dead-lettered: the queue's length is what is still
to be delivered, and entries read but not finished (a crash) are read again by the restarted worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from transforms.subscribers import Subscriber

GROUP = "delivery"
CONSUMER = "worker"  # one worker per subscriber: a restarted one re-reads its own unfinished entries


def routes_key(prefix: str) -> str:
    return f"{prefix}:webhooks:subscribers"


def queue_key(prefix: str, name: str) -> str:
    return f"{prefix}:webhooks:{name}:queue"


def dead_key(prefix: str, name: str) -> str:
    return f"{prefix}:webhooks:{name}:dead"


@dataclass(frozen=True, slots=True)
class Route:
    """Which changes a subscriber's queue receives (no URL or secret is stored in Redis)."""

    name: str
    segments: frozenset[str] | None

    def wants(self, segment: str) -> bool:
        return self.segments is None or segment in self.segments


def register(client: redis.Redis, prefix: str, subscribers: Sequence[Subscriber]) -> None:
    """Make ``subscribers`` the job's routes (every sink created afterwards queues changes for them)."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(routes_key(prefix))
    if subscribers:
        routes = {s.name: json.dumps(None if s.segments is None else sorted(s.segments)) for s in subscribers}
        pipe.hset(routes_key(prefix), mapping=routes)
    pipe.execute()


def load_routes(client: redis.Redis, prefix: str) -> tuple[Route, ...]:
    routes = client.hgetall(routes_key(prefix))
    return tuple(
        Route(name.decode(), None if (segments := json.loads(value)) is None else frozenset(segments))
        for name, value in sorted(routes.items())
    )


@dataclass(frozen=True, slots=True)
class QueuedChange:
    entry_id: str
    change_id: str
    customer_id: str
    body: str  # the change event as JSON: signed and sent as it is
    queued_ms: int  # when the sink queued it (the entry id's time): retries stop at max_retry_age after it


@dataclass(frozen=True, slots=True)
class DeadDelivery:
    change: QueuedChange
    reason: str  # status_<code> (a permanent answer) or max_retry_age
    attempts: int
    last_status: int | None
    last_error: str


@dataclass(frozen=True, slots=True)
class QueueDepth:
    queued: int  # not yet delivered nor dead-lettered
    dead: int


def _fields(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


class DeliveryQueue:
    """One subscriber's queue and dead-letter stream."""

    def __init__(self, client: redis.Redis, prefix: str, name: str) -> None:
        self.client = client
        self.name = name
        self.queue = queue_key(prefix, name)
        self.dead = dead_key(prefix, name)

    def ensure_group(self) -> None:
        """Create the consumer group from the start of the queue (changes queued before any worker ran)."""
        try:
            self.client.xgroup_create(self.queue, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read(self, count: int, block_ms: int | None, after: str = ">") -> list[QueuedChange]:
        """New entries (``after=">"``), or this worker's unfinished ones after the id ``after``."""
        answer = self.client.xreadgroup(GROUP, CONSUMER, {self.queue: after}, count=count, block=block_ms)
        changes = []
        for _, entries in answer or []:
            for entry_id, fields in entries:
                entry = entry_id.decode()
                if not fields:  # deleted while pending: nothing left to deliver
                    self.client.xack(self.queue, GROUP, entry)
                    continue
                values = _fields(fields)
                changes.append(
                    QueuedChange(
                        entry, values["change_id"], values["customer_id"], values["body"], int(entry.split("-")[0])
                    )
                )
        return changes

    def finish(self, delivered: Iterable[str], dead: Iterable[DeadDelivery]) -> None:
        """Acknowledge and delete delivered entries; move dead ones to the dead-letter stream (atomically)."""
        pipe = self.client.pipeline(transaction=True)
        ids = list(delivered)
        for letter in dead:
            change = letter.change
            pipe.xadd(
                self.dead,
                {
                    "change_id": change.change_id,
                    "customer_id": change.customer_id,
                    "body": change.body,
                    "reason": letter.reason,
                    "attempts": letter.attempts,
                    "last_status": "" if letter.last_status is None else letter.last_status,
                    "last_error": letter.last_error,
                },
            )
            ids.append(change.entry_id)
        if ids:
            pipe.xack(self.queue, GROUP, *ids)
            pipe.xdel(self.queue, *ids)
            pipe.execute()

    def dead_letters(self, count: int = 1000) -> list[dict[str, str]]:
        """The oldest ``count`` dead letters, fields decoded."""
        return [_fields(fields) for _, fields in self.client.xrange(self.dead, count=count)]

    def replay(self, limit: int | None = None) -> int:
        """Queue dead letters again, oldest first, with their original change id (= webhook-id);
        return how many. Their retry age starts again."""
        moved = 0
        while limit is None or moved < limit:
            batch = self.client.xrange(self.dead, count=min(500, limit - moved) if limit is not None else 500)
            if not batch:
                break
            pipe = self.client.pipeline(transaction=True)
            for entry_id, fields in batch:
                values = _fields(fields)
                pipe.xadd(self.queue, {k: values[k] for k in ("change_id", "customer_id", "body")})
                pipe.xdel(self.dead, entry_id)
            pipe.execute()
            moved += len(batch)
        return moved

    def depth(self) -> QueueDepth:
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.queue)
        pipe.xlen(self.dead)
        queued, dead = pipe.execute()
        return QueueDepth(queued, dead)
