"""The pure delivery policy (classification, backoff, Retry-After, retry age, circuit breaker, rate
limit) and the subscriber configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transforms.backoff import Backoff
from transforms.config import ConfigError, load_config, parse_config
from transforms.delivery_policy import (
    HOUR_MS,
    BreakerState,
    CircuitBreaker,
    RateLimit,
    RetryPolicy,
    Verdict,
    classify,
    retry_after_ms,
)
from transforms.subscribers import (
    WebhookConfigError,
    WebhooksConfig,
    check_secret,
    default_name,
    parse_webhooks,
    with_command_line,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED), (204, Verdict.DELIVERED), (299, Verdict.DELIVERED),
        (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY), (599, Verdict.RETRY),
        (None, Verdict.RETRY),
        (301, Verdict.PERMANENT), (400, Verdict.PERMANENT), (401, Verdict.PERMANENT), (404, Verdict.PERMANENT),
        (410, Verdict.PERMANENT), (413, Verdict.PERMANENT), (422, Verdict.PERMANENT),
    ],
)  # fmt: skip
def test_408_429_5xx_and_no_answer_are_retried_other_4xx_are_permanent(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


@given(attempt=st.integers(1, 200), jitter=st.floats(0, 1), initial=st.integers(1, 10_000), factor=st.integers(1, 1000))
def test_backoff_grows_exponentially_with_jitter_within_half_and_full_ceiling(
    attempt: int, jitter: float, initial: int, factor: int
) -> None:
    policy = Backoff(initial, initial * factor)
    ceiling = min(policy.max_ms, initial * 2 ** min(attempt - 1, 40))
    assert ceiling // 2 <= policy.delay_ms(attempt, jitter) <= ceiling
    assert policy.delay_ms(attempt, 1.0) <= policy.delay_ms(attempt + 1, 1.0)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 10)
    with pytest.raises(ValueError):
        Backoff(100, 10)


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    assert retry_after_ms("120", now_ms=0) == 120_000
    assert retry_after_ms(" 0 ", now_ms=0) == 0
    assert retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", now_ms=1_445_412_470_000) == 10_000
    assert retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", now_ms=1_445_412_490_000) == 0  # in the past
    assert retry_after_ms(None, 0) is None
    assert retry_after_ms("-5", 0) is None
    assert retry_after_ms("tomorrow", 0) is None


def test_retries_stop_at_the_max_age_with_a_last_attempt_at_the_limit() -> None:
    policy = RetryPolicy(Backoff(1_000, 60_000), max_age_ms=HOUR_MS)
    assert policy.next_attempt(1, queued_ms=0, now_ms=10, jitter=1.0) == 1_010
    assert policy.next_attempt(20, queued_ms=0, now_ms=HOUR_MS - 5, jitter=1.0) == HOUR_MS  # capped at the limit
    assert policy.next_attempt(21, queued_ms=0, now_ms=HOUR_MS, jitter=0.0) is None


def test_retry_after_is_honoured_and_ends_retries_when_it_points_past_the_age_limit() -> None:
    policy = RetryPolicy(Backoff(10, 100), max_age_ms=10_000)
    assert policy.next_attempt(1, queued_ms=0, now_ms=0, jitter=0.0, retry_after=3_000) == 3_000
    assert policy.next_attempt(1, queued_ms=0, now_ms=0, jitter=0.0, retry_after=1) == 5  # backoff is longer
    assert policy.next_attempt(1, queued_ms=0, now_ms=8_000, jitter=0.0, retry_after=3_000) is None


def test_default_max_retry_age_is_four_hours() -> None:
    assert RetryPolicy().max_age_ms == 4 * HOUR_MS


def test_circuit_breaker_opens_after_threshold_failures_then_lets_one_trial_through() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown_ms=1_000)
    state = BreakerState()
    for now in (0, 1, 2):
        assert breaker.allows(state, now)
        state = breaker.on_result(breaker.on_send(state), ok=False, now_ms=now)
    assert state.opened_at == 2 and not breaker.allows(state, 500)
    assert breaker.reopens_at(state) == 1_002
    assert breaker.allows(state, 1_002)
    state = breaker.on_send(state)
    assert state.probing and not breaker.allows(state, 1_003)  # only one trial in flight
    state = breaker.on_result(state, ok=False, now_ms=1_010)  # the trial failed: open again
    assert state.opened_at == 1_010 and not breaker.allows(state, 1_500)
    state = breaker.on_result(breaker.on_send(state), ok=True, now_ms=2_020)  # the next trial succeeded
    assert state == BreakerState() and breaker.allows(state, 2_021)


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(threshold=2, cooldown_ms=10)
    state = breaker.on_result(BreakerState(), ok=False, now_ms=0)
    state = breaker.on_result(state, ok=True, now_ms=1)
    state = breaker.on_result(state, ok=False, now_ms=2)
    assert state.opened_at is None and breaker.allows(state, 3)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=200), st.floats(1, 500), st.integers(1, 5))
def test_rate_limit_never_exceeds_rate_plus_burst(gaps: list[int], rate: float, burst: int) -> None:
    limit = RateLimit(rate, burst)
    bucket = limit.full(0)
    now, sent = 0, 0
    for gap in gaps:
        now += gap
        allowed, bucket, wait = limit.take(bucket, now)
        sent += allowed
        assert allowed or wait > 0
    assert sent <= burst + now * rate / 1000 + 1e-9


def test_subscribers_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
segments:
  big_spender: {{feature: spend, ">=": 500}}
  recent_buyer: {{since: last.purchase, at_most: 30d}}
webhooks:
  drain_timeout: 5s
  defaults: {{timeout: 3s, backoff_initial: 100ms}}
  subscribers:
    - name: crm
      url: https://crm.example.com/hooks?x=1
      secrets: [{SECRET}, whsec_b2xkLXNlY3JldA]
      segments: [big_spender]
      rate_limit: 20
      concurrency: 2
      max_retry_age: 1h
      breaker_threshold: 3
      breaker_cooldown: 10s
    - url: http://127.0.0.1:9000/
      secrets: {SECRET}
      timeout: 1s
""",
        encoding="utf-8",
    )
    webhooks = load_config(path).webhooks
    crm, other = webhooks.subscribers
    assert webhooks.drain_timeout_ms == 5_000
    assert crm.name == "crm" and crm.secrets == (SECRET, "whsec_b2xkLXNlY3JldA")
    assert crm.segments == frozenset({"big_spender"}) and crm.wants("big_spender") and not crm.wants("recent_buyer")
    assert crm.timeout_ms == 3_000 and crm.retry.backoff.initial_ms == 100 and crm.retry.max_age_ms == HOUR_MS
    assert crm.rate_limit == RateLimit(20.0) and crm.concurrency == 2
    assert crm.breaker == CircuitBreaker(3, 10_000)
    assert other.name == default_name("http://127.0.0.1:9000/") and other.segments is None
    assert other.timeout_ms == 1_000 and other.retry.max_age_ms == 4 * HOUR_MS


def test_no_webhooks_section_means_no_subscribers() -> None:
    assert load_config(None).webhooks == WebhooksConfig()


@pytest.mark.parametrize(
    ("webhooks", "message"),
    [
        ({"subscribers": [{"url": "https://x.example"}]}, "secrets is required"),
        ({"subscribers": [{"url": "ftp://x.example", "secrets": [SECRET]}]}, "http:// or https://"),
        ({"subscribers": [{"url": "https://x.example", "secrets": ["s3cret"]}]}, "starts with 'whsec_'"),
        ({"subscribers": [{"url": "https://x.example", "secrets": ["whsec_!!"]}]}, "not base64"),
        ({"subscribers": [{"url": "https://x.example", "secrets": [SECRET], "segments": ["vip"]}]}, "unknown segment"),
        ({"subscribers": [{"url": "https://x.example", "secrets": [SECRET], "timeout": "soon"}]}, "bad duration"),
        ({"subscribers": [{"url": "https://x.example", "secrets": [SECRET], "concurrency": 0}]}, "positive integer"),
        ({"subscribers": [{"url": "https://x.example", "secrets": [SECRET], "retries": 3}]}, "unknown key"),
        ({"subscribers": [{"url": "https://x.example", "secrets": [SECRET], "name": "a b"}]}, "may use letters"),
        ({"subscribers": [{"url": "https://a.example", "secrets": [SECRET], "name": "a"},
                          {"url": "https://b.example", "secrets": [SECRET], "name": "a"}]}, "used twice"),
        ({"subscribers": [{"url": "https://x.example", "secrets": [SECRET], "backoff_initial": "1m",
                           "backoff_max": "1s"}]}, "need 0 < backoff_initial <= backoff_max"),
        ({"subscriber": []}, "unknown key"),
    ],
)  # fmt: skip
def test_bad_subscribers_are_config_errors_that_say_where(webhooks: object, message: str) -> None:
    document = {"segments": {"big_spender": {"feature": "spend", ">=": 500}}, "webhooks": webhooks}
    with pytest.raises(ConfigError, match=message) as error:
        parse_config(document, env={})
    assert str(error.value).startswith("config: webhooks")


def test_command_line_subscribers_inherit_the_config_defaults() -> None:
    config = parse_webhooks({"defaults": {"timeout": "2s"}})
    merged = with_command_line(config, ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"], [SECRET])
    assert [s.timeout_ms for s in merged.subscribers] == [2_000, 2_000]
    assert len({s.name for s in merged.subscribers}) == 2
    with pytest.raises(WebhookConfigError, match="needs --webhook-secret"):
        with_command_line(config, ["http://127.0.0.1:9/a"], [])
    assert with_command_line(config, [], []) is config


def test_secrets_are_standard_webhooks_base64_with_or_without_padding() -> None:
    assert check_secret("whsec_YQ") == "whsec_YQ"
    assert check_secret("whsec_YQ==") == "whsec_YQ=="
    with pytest.raises(WebhookConfigError, match="empty"):
        check_secret("whsec_")
