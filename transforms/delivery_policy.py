"""What to do after a webhook delivery attempt: classify the result, schedule the retry, trip the
circuit breaker, pace the sends. Pure: time (``now_ms``) and randomness (``jitter``) come in as
arguments and every state is an explicit immutable value.

>>> classify(204), classify(503), classify(None), classify(410)
(<Verdict.DELIVERED: 'delivered'>, <Verdict.RETRY: 'retry'>, <Verdict.RETRY: 'retry'>, <Verdict.PERMANENT: 'permanent'>)
>>> retry_after_ms("3", now_ms=0)
3000
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from enum import StrEnum

from transforms.backoff import Backoff

HOUR_MS = 3_600_000


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # worth trying again: 408, 429, 5xx, timeouts, connection errors
    PERMANENT = "permanent"  # any other status: the receiver will not accept this request as it is


def classify(status: int | None) -> Verdict:
    """The verdict on one attempt; ``status`` is None when no response came (timeout, refused, reset).

    Redirects are not followed and count as permanent (the configured URL is wrong)."""
    if status is None or status in (408, 429) or 500 <= status <= 599:
        return Verdict.RETRY
    if 200 <= status <= 299:
        return Verdict.DELIVERED
    return Verdict.PERMANENT


def retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """A ``Retry-After`` header (delay in seconds or an HTTP date) as a delay in ms from ``now_ms``.

    >>> retry_after_ms("Thu, 01 Jan 1970 00:00:10 GMT", now_ms=4_000), retry_after_ms("soon", 0)
    (6000, None)
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, int(when.timestamp() * 1000) - now_ms)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries with backoff until a change is ``max_age_ms`` old (counted from when it was queued)."""

    backoff: Backoff = field(default_factory=Backoff)
    max_age_ms: int = 4 * HOUR_MS

    def next_attempt(
        self, failures: int, queued_ms: int, now_ms: int, jitter: float, retry_after: int | None = None
    ) -> int | None:
        """When to try again after the ``failures``-th failed attempt, or None: give up (dead letter).

        The last attempt is made at the age limit itself; a ``Retry-After`` is honoured and, when it
        points past the age limit, ends the retries."""
        deadline = queued_ms + self.max_age_ms
        if now_ms >= deadline:
            return None
        at = now_ms + self.backoff.delay_ms(failures, jitter)
        if retry_after is not None:
            at = max(at, now_ms + retry_after)
            if at > deadline:
                return None
        return min(at, deadline)


@dataclass(frozen=True, slots=True)
class BreakerState:
    failures: int = 0  # consecutive failed attempts
    opened_at: int | None = None  # when the breaker opened (ms); None while closed
    probing: bool = False  # half-open: the one trial request is in flight


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Closed until ``threshold`` attempts in a row fail; then open (no sends) for ``cooldown_ms``;
    then half-open: one trial send closes it on success or opens it again on failure.

    >>> breaker, state = CircuitBreaker(threshold=2, cooldown_ms=100), BreakerState()
    >>> state = breaker.on_result(breaker.on_result(state, ok=False, now_ms=0), ok=False, now_ms=5)
    >>> breaker.allows(state, now_ms=50), breaker.allows(state, now_ms=105)
    (False, True)
    """

    threshold: int = 5
    cooldown_ms: int = 30_000

    def allows(self, state: BreakerState, now_ms: int) -> bool:
        if state.opened_at is None:
            return True
        return not state.probing and now_ms >= state.opened_at + self.cooldown_ms

    def on_send(self, state: BreakerState) -> BreakerState:
        """A send was allowed; when the breaker is half-open it is the trial."""
        return state if state.opened_at is None else replace(state, probing=True)

    def on_result(self, state: BreakerState, ok: bool, now_ms: int) -> BreakerState:
        """``ok``: the endpoint answered with anything but a retryable failure."""
        if ok:
            return BreakerState()
        failures = state.failures + 1
        if state.probing or (state.opened_at is None and failures >= self.threshold):
            return BreakerState(failures, opened_at=now_ms)
        return replace(state, failures=failures)

    def reopens_at(self, state: BreakerState) -> int | None:
        """When an open breaker lets the trial through (None while closed)."""
        return None if state.opened_at is None else state.opened_at + self.cooldown_ms


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    at_ms: int


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``per_second`` sends on average, bursts of up to ``burst``.

    >>> limit = RateLimit(per_second=10, burst=1)
    >>> ok, bucket, _ = limit.take(limit.full(0), now_ms=0)
    >>> ok, limit.take(bucket, now_ms=50)[0], limit.take(bucket, now_ms=100)[0]
    (True, False, True)
    """

    per_second: float
    burst: float = 1.0

    def full(self, now_ms: int) -> Bucket:
        return Bucket(self.burst, now_ms)

    def take(self, bucket: Bucket, now_ms: int) -> tuple[bool, Bucket, int]:
        """Take one token: ``(allowed, new bucket, ms until a token is available when not allowed)``."""
        tokens = min(self.burst, bucket.tokens + (now_ms - bucket.at_ms) * self.per_second / 1000)
        if tokens >= 1:
            return True, Bucket(tokens - 1, now_ms), 0
        return False, Bucket(tokens, now_ms), math.ceil((1 - tokens) * 1000 / self.per_second)
