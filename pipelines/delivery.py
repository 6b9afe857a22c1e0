"""Webhook delivery workers: one thread per subscriber, so a slow or failing subscriber delays nobody else.

A worker reads its subscriber's queue (:mod:`pipelines.delivery_queue`) through the consumer group,
first the entries it read before a crash, then new ones. It keeps the entries it holds in one line
per customer and sends only the head of each line: while a customer's change waits for a retry, that
customer's later changes wait behind it (other customers go on), so each subscriber sees every
customer's changes in ``seq`` order. Up to ``concurrency`` requests are in flight (for different
customers). Retries, the circuit breaker and the rate limit follow :mod:`transforms.delivery_policy`;
retry schedules live in memory, so a restarted worker retries its unfinished entries at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import redis

from pipelines.delivery_queue import DeadDelivery, DeliveryQueue, QueuedChange, QueueDepth, register
from pipelines.metrics import METRICS
from pipelines.redis_store import RETRYABLE, connect, fault, retrying, server_message, shared_client, without_arguments
from pipelines.webhooks import Attempt, HttpSender, Signer
from transforms.backoff import Backoff
from transforms.delivery_policy import BreakerState, Verdict, classify, retry_after_ms
from transforms.subscribers import Subscriber, WebhooksConfig

LOG = logging.getLogger("segstream")
OUTCOMES = ("delivered", "retried", "failed", "dead_lettered")
_REDIS_BACKOFF = Backoff(initial_ms=50, max_ms=2_000)


@dataclass
class Held:
    """A queued change the worker holds, with its delivery history."""

    change: QueuedChange
    attempts: int = 0
    last_status: int | None = None
    last_error: str = ""


@dataclass
class WorkerOptions:
    window: int = 1_000  # entries held in memory at most
    poll_ms: int = 50  # longest wait for new entries or results
    read_every_ms: int = 5  # while requests are in flight, look for new entries this often
    finish_every_ms: int = 10  # acknowledge finished entries in batches at least this often
    clock: Callable[[], float] = time.time  # seconds
    jitter: Callable[[], float] = random.random


@dataclass
class _Finished:
    """Entries delivered or dead-lettered, not yet acknowledged in Redis."""

    delivered: list[str] = field(default_factory=list)
    dead: list[DeadDelivery] = field(default_factory=list)
    since_ms: int = 0

    def __bool__(self) -> bool:
        return bool(self.delivered or self.dead)

    def __len__(self) -> int:
        return len(self.delivered) + len(self.dead)


class SubscriberWorker(threading.Thread):
    """Delivers one subscriber's queue until :meth:`stop` (then finishes what is in flight)."""

    def __init__(self, subscriber: Subscriber, redis_url: str, prefix: str, options: WorkerOptions) -> None:
        super().__init__(name=f"webhooks-{subscriber.name}", daemon=True)
        self.subscriber = subscriber
        self.options = options
        self.queue = DeliveryQueue(connect(redis_url), prefix, subscriber.name)
        self.signer = Signer(subscriber.secrets)
        self.sender = HttpSender(subscriber.url, subscriber.timeout_ms)
        self.pool = ThreadPoolExecutor(subscriber.concurrency, thread_name_prefix=f"send-{subscriber.name}")
        self.counts: Counter[str] = Counter()
        self._lines: dict[str, deque[Held]] = {}  # customer -> held entries in queue order
        self._due: list[tuple[int, int, str]] = []  # (when, tie, customer) whose head may be sent
        self._tie = itertools.count()
        self._in_flight: set[str] = set()
        self._results: queue.SimpleQueue[tuple[str, Held, Attempt]] = queue.SimpleQueue()
        self._finished = _Finished()
        self._breaker = BreakerState()
        self._bucket = None if subscriber.rate_limit is None else subscriber.rate_limit.full(self._now())
        self._rate_wait_until = 0
        self._backlog: str | None = "0"  # reading our own unfinished entries after this id; None: new ones
        self._held = 0  # entries in the lines
        self._last_read = 0
        self._group_ready = False
        self._stopping = threading.Event()

    def _now(self) -> int:
        return int(self.options.clock() * 1000)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set() or self._in_flight or self._finished:
            try:
                self._step()
                failures = 0
            except redis.RedisError as error:
                line = fault(error) or ("Redis lost the consumer group" if "NOGROUP" in server_message(error) else None)
                if line is None:
                    raise without_arguments(error) from None  # its message would hold a queued change
                self._group_ready = False  # a Redis restarted without its data lost the group
                failures += 1
                if failures == 1:
                    LOG.warning("webhooks %s: %s; retrying", self.subscriber.name, line)
                delay = _REDIS_BACKOFF.delay_ms(failures, self.options.jitter()) / 1000
                if self._stopping.wait(delay):
                    while self._in_flight:
                        self._collect(self.options.poll_ms)
                    break  # stopping with Redis away: unfinished entries stay pending and are sent again later
        self.pool.shutdown(wait=True)
        self.sender.close()

    def _step(self) -> None:
        now = self._now()
        finished = self._finished
        if finished and (
            not self._in_flight or len(finished) >= 500 or now - finished.since_ms >= self.options.finish_every_ms
        ):
            self.queue.finish(finished.delivered, finished.dead)
            self._finished = _Finished()
        if not self._group_ready:
            self.queue.ensure_group()
            self._group_ready = True
        if self._stopping.is_set():
            if self._in_flight:
                self._collect(self.options.poll_ms)
            return
        if not self._in_flight:
            self._read(block_ms=self._wait_ms(now))
        elif now - self._last_read >= self.options.read_every_ms:
            self._read(block_ms=0)
        self._dispatch(self._now())
        if self._in_flight:
            saturated = len(self._in_flight) >= self.subscriber.concurrency
            self._collect(self.options.poll_ms if saturated else self._wait_ms(self._now()))

    def _collect(self, timeout_ms: int) -> None:
        """Apply the results that come within ``timeout_ms`` (at least one if any comes)."""
        try:
            self._apply(*self._results.get(timeout=timeout_ms / 1000))
        except queue.Empty:
            return
        while not self._results.empty():
            self._apply(*self._results.get())

    def _read(self, block_ms: int) -> None:
        """Take more entries, waiting up to ``block_ms`` for new ones (0: do not wait)."""
        self._last_read = self._now()
        room = self.options.window - self._held
        if room <= 0:
            self._stopping.wait(block_ms / 1000)
            return
        if self._backlog is not None:
            changes = self.queue.read(room, None, after=self._backlog)
            if not changes:
                self._backlog = None
                return
            self._backlog = changes[-1].entry_id
        else:
            changes = self.queue.read(room, block_ms if block_ms > 0 else None)
        now = self._now()
        self._held += len(changes)
        for change in changes:
            line = self._lines.get(change.customer_id)
            if line is None:
                self._lines[change.customer_id] = deque([Held(change)])
                self._schedule(change.customer_id, now)
            else:
                line.append(Held(change))

    def _schedule(self, customer: str, at: int) -> None:
        heapq.heappush(self._due, (at, next(self._tie), customer))

    def _dispatch(self, now: int) -> None:
        """Send the due heads, as far as concurrency, breaker and rate limit allow."""
        sub = self.subscriber
        while self._due and self._due[0][0] <= now and len(self._in_flight) < sub.concurrency:
            if not sub.breaker.allows(self._breaker, now):
                self._expire(now)
                return
            if sub.rate_limit is not None and self._bucket is not None:
                allowed, self._bucket, wait = sub.rate_limit.take(self._bucket, now)
                if not allowed:
                    self._rate_wait_until = now + wait
                    return
            _, _, customer = heapq.heappop(self._due)
            self._breaker = sub.breaker.on_send(self._breaker)
            self._in_flight.add(customer)
            self.pool.submit(self._send, customer, self._lines[customer][0])

    def _send(self, customer: str, held: Held) -> None:
        change = held.change
        try:
            headers = self.signer.headers(change.change_id, change.body, self.options.clock())
            attempt = self.sender.post(change.body.encode(), headers)
        except Exception as error:  # a bug must not strand the customer's line: count it as a failed attempt
            attempt = Attempt(None, error=f"sender error: {error!r}")
        self._results.put((customer, held, attempt))

    def _apply(self, customer: str, held: Held, attempt: Attempt) -> None:
        """Act on one attempt's result."""
        now = self._now()
        sub = self.subscriber
        self._in_flight.discard(customer)
        held.attempts += 1
        held.last_status, held.last_error = attempt.status, attempt.error
        verdict = classify(attempt.status)
        self._breaker = sub.breaker.on_result(self._breaker, ok=verdict is not Verdict.RETRY, now_ms=now)
        if verdict is Verdict.DELIVERED:
            self._count("delivered")
            self._finish(now).delivered.append(held.change.entry_id)
        elif verdict is Verdict.PERMANENT:
            self._count("failed")
            self._dead_letter(held, f"status_{attempt.status}", now)
        else:
            retry_at = sub.retry.next_attempt(
                held.attempts,
                held.change.queued_ms,
                now,
                self.options.jitter(),
                retry_after_ms(attempt.retry_after, now),
            )
            if retry_at is not None:
                self._count("retried")
                self._schedule(customer, retry_at)
                return
            self._dead_letter(held, "max_retry_age", now)
        self._advance(customer, now)

    def _advance(self, customer: str, now: int) -> None:
        """The customer's head is done: the next change in its line is due now."""
        line = self._lines[customer]
        line.popleft()
        self._held -= 1
        if line:
            self._schedule(customer, now)
        else:
            del self._lines[customer]

    def _expire(self, now: int) -> None:
        """While the breaker is open, give up on the due heads past the max retry age: they would
        otherwise wait for trials one by one."""
        waiting = []
        while self._due and self._due[0][0] <= now:
            entry = heapq.heappop(self._due)
            customer = entry[2]
            held = self._lines[customer][0]
            if now - held.change.queued_ms >= self.subscriber.retry.max_age_ms:
                self._dead_letter(held, "max_retry_age", now)
                self._advance(customer, now)
            else:
                waiting.append(entry)
        for entry in waiting:
            heapq.heappush(self._due, entry)

    def _dead_letter(self, held: Held, reason: str, now: int) -> None:
        self._count("dead_lettered")
        letter = DeadDelivery(held.change, reason, held.attempts, held.last_status, held.last_error)
        self._finish(now).dead.append(letter)

    def _finish(self, now: int) -> _Finished:
        if not self._finished:
            self._finished.since_ms = now
        return self._finished

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        METRICS.webhook_deliveries.labels(self.subscriber.name, outcome).inc()

    def _wait_ms(self, now: int) -> int:
        """How long nothing can be sent: until the next head is due, the breaker lets a trial through
        or the rate limit has a token (at most ``poll_ms``)."""
        wait = self.options.poll_ms
        if self._due:
            wait = min(wait, self._due[0][0] - now)
        reopens = self.subscriber.breaker.reopens_at(self._breaker)
        if reopens is not None and not self._breaker.probing:
            wait = max(wait, min(self.options.poll_ms, reopens - now))
        if self._rate_wait_until > now:
            wait = max(wait, min(self.options.poll_ms, self._rate_wait_until - now))
        return max(0, wait)


@dataclass(frozen=True)
class DeliveryReport:
    """Per subscriber: outcome counts of this process and what is left in Redis."""

    counts: dict[str, Counter[str]]
    depths: dict[str, QueueDepth]

    def lines(self) -> list[str]:
        if not self.counts:
            return []
        width = max(len(name) for name in self.counts)
        rows = ["webhook deliveries (delivered / retried / dead-lettered; left in the queue / the dead letters)"]
        for name, counts in self.counts.items():
            depth = self.depths.get(name)
            left = "?" if depth is None else f"{depth.queued} / {depth.dead}"
            rows.append(
                f"  {name:<{width}}  {counts['delivered']} / {counts['retried']} / {counts['dead_lettered']}; {left}"
            )
        return rows


class Deliveries:
    """The delivery workers of a job: ``with Deliveries(...)`` registers the subscribers' routes (so
    the sinks queue their changes), starts one worker each, and on a normal exit waits up to the
    drain timeout for the queues to empty; what is left stays queued for the next run or
    ``segstream deliver``."""

    def __init__(
        self,
        config: WebhooksConfig,
        redis_url: str,
        prefix: str,
        options: WorkerOptions | None = None,
        register_routes: bool = True,
    ) -> None:
        self.config = config
        self.redis_url = redis_url
        self.prefix = prefix
        self.options = options or WorkerOptions()
        self.register_routes = register_routes
        self.workers: list[SubscriberWorker] = []
        self.report = DeliveryReport({}, {})

    def __enter__(self) -> Deliveries:
        if self.register_routes:
            client = shared_client(self.redis_url)
            retrying(lambda _: register(client, self.prefix, self.config.subscribers), "register the subscribers")
        self.workers = [SubscriberWorker(s, self.redis_url, self.prefix, self.options) for s in self.config.subscribers]
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        depths = self.drain(self.config.drain_timeout_ms / 1000) if kind is None else {}
        self.stop()
        self.report = DeliveryReport({w.subscriber.name: w.counts.copy() for w in self.workers}, depths)

    def depths(self) -> dict[str, QueueDepth]:
        return {w.subscriber.name: w.queue.depth() for w in self.workers}

    def drain(self, timeout_s: float) -> dict[str, QueueDepth]:
        """Wait until every queue is empty or ``timeout_s`` passed; return the depths then."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                depths = self.depths()
            except RETRYABLE:
                depths = {}
            done = len(depths) == len(self.workers) and all(d.queued == 0 for d in depths.values())
            if done or time.monotonic() >= deadline:
                return depths
            time.sleep(0.02)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            worker.join()

    def wait(self, stop: threading.Event, until_empty: bool) -> None:
        """Deliver until ``stop`` is set (or, with ``until_empty``, until the queues are empty)."""
        while not stop.wait(0.1):
            if until_empty and all(d.queued == 0 for d in self.drain(0).values()):
                return
