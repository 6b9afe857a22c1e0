"""Webhook subscribers: the ``webhooks`` section of the job configuration, or ``--webhook`` options.

>>> config = parse_webhooks({"subscribers": [{"name": "crm", "url": "https://crm.example/hook",
...     "secrets": ["whsec_c2VjcmV0"], "segments": ["big_spender"], "timeout": "2s"}]})
>>> crm = config.subscribers[0]
>>> crm.timeout_ms, crm.wants("big_spender"), crm.wants("recent_buyer"), crm.retry.max_age_ms
(2000, True, False, 14400000)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from transforms.backoff import Backoff
from transforms.delivery_policy import CircuitBreaker, RateLimit, RetryPolicy
from transforms.rules import duration_setting

SECRET_PREFIX = "whsec_"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SETTINGS = {
    "secrets",
    "segments",
    "timeout",
    "rate_limit",
    "concurrency",
    "max_retry_age",
    "backoff_initial",
    "backoff_max",
    "breaker_threshold",
    "breaker_cooldown",
}
_SUBSCRIBER_KEYS = {"name", "url"} | _SETTINGS
_SECTION_KEYS = {"subscribers", "defaults", "drain_timeout"}


class WebhookConfigError(ValueError):
    """A subscriber definition that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Subscriber:
    """One webhook endpoint and how changes are delivered to it."""

    name: str  # names its Redis keys: {prefix}:webhooks:{name}:queue / :dead
    url: str
    secrets: tuple[str, ...]  # whsec_...; every one signs each request (rotation)
    segments: frozenset[str] | None = None  # None: every segment
    timeout_ms: int = 10_000
    rate_limit: RateLimit | None = None
    concurrency: int = 4  # requests in flight, never two for the same customer
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    def wants(self, segment: str) -> bool:
        return self.segments is None or segment in self.segments


@dataclass(frozen=True)
class WebhooksConfig:
    subscribers: tuple[Subscriber, ...] = ()
    drain_timeout_ms: int = 30_000  # how long `segstream run` waits at the end for queued deliveries
    defaults: Mapping[str, object] = field(default_factory=dict)  # settings --webhook subscribers inherit too


def check_secret(secret: str, where: str = "secret") -> str:
    """``secret`` if it is Standard Webhooks form: ``whsec_`` + base64 of at least one byte."""
    if not secret.startswith(SECRET_PREFIX):
        raise WebhookConfigError(f"{where}: a webhook secret starts with '{SECRET_PREFIX}'")
    try:
        encoded = secret[len(SECRET_PREFIX) :]
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookConfigError(f"{where}: the part after '{SECRET_PREFIX}' is not base64") from None
    if not raw:
        raise WebhookConfigError(f"{where}: the secret is empty")
    return secret


def default_name(url: str) -> str:
    """A stable name for a subscriber given by URL only (its queue survives restarts)."""
    return "hook-" + hashlib.sha256(url.encode()).hexdigest()[:10]


def _check_url(url: object, where: str) -> str:
    parts = urlsplit(str(url))
    if not isinstance(url, str) or parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookConfigError(f"{where}: url must be an http:// or https:// URL, not {url!r}")
    return url


def _duration(settings: Mapping[str, object], key: str, where: str, default: int) -> int:
    try:
        return duration_setting(settings, key, default)
    except ValueError as error:
        raise WebhookConfigError(f"{where}.{key}: {error}") from None


def _number(settings: Mapping[str, object], key: str, where: str, default: float, integer: bool = True) -> float:
    value = settings.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise WebhookConfigError(f"{where}.{key} must be a positive {'integer' if integer else 'number'}")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) for v in value):
        raise WebhookConfigError(f"{where} must be a non-empty list of strings")
    return tuple(value)


def make_subscriber(
    settings: Mapping[str, object], where: str, known_segments: Collection[str] | None = None
) -> Subscriber:
    """Validate one subscriber mapping (``name``, ``url`` and the settings of the README)."""
    unknown = set(settings) - _SUBSCRIBER_KEYS
    if unknown:
        raise WebhookConfigError(f"{where}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    if "url" not in settings:
        raise WebhookConfigError(f"{where}: url is required")
    url = _check_url(settings["url"], where)
    name = str(settings.get("name") or default_name(url))
    if not _NAME.match(name):
        raise WebhookConfigError(f"{where}: name {name!r} may use letters, digits, '_', '.', '-' (at most 64)")
    if "secrets" not in settings:
        raise WebhookConfigError(f"{where}: secrets is required (whsec_ + base64, e.g. of `openssl rand 32`)")
    secrets = tuple(check_secret(s, f"{where}.secrets") for s in _strings(settings["secrets"], f"{where}.secrets"))
    segments = None
    if "segments" in settings:
        segments = frozenset(_strings(settings["segments"], f"{where}.segments"))
        missing = segments - set(known_segments) if known_segments is not None else set()
        if missing:
            raise WebhookConfigError(f"{where}.segments: unknown segment(s): {', '.join(sorted(missing))}")
    initial = _duration(settings, "backoff_initial", where, 500)
    longest = _duration(settings, "backoff_max", where, 5 * 60_000)
    if not 0 < initial <= longest:
        raise WebhookConfigError(f"{where}: need 0 < backoff_initial <= backoff_max")
    max_age = _duration(settings, "max_retry_age", where, RetryPolicy().max_age_ms)
    retry = RetryPolicy(Backoff(initial, longest), max_age)
    rate = settings.get("rate_limit")
    return Subscriber(
        name=name,
        url=url,
        secrets=secrets,
        segments=segments,
        timeout_ms=_duration(settings, "timeout", where, 10_000),
        rate_limit=None if rate is None else RateLimit(_number(settings, "rate_limit", where, 1, integer=False)),
        concurrency=int(_number(settings, "concurrency", where, 4)),
        retry=retry,
        breaker=CircuitBreaker(
            int(_number(settings, "breaker_threshold", where, 5)),
            _duration(settings, "breaker_cooldown", where, 30_000),
        ),
    )


def parse_webhooks(section: object, known_segments: Collection[str] | None = None) -> WebhooksConfig:
    """The ``webhooks`` section: ``subscribers`` (a list), ``defaults`` (settings every subscriber
    inherits) and ``drain_timeout``. ``known_segments``: segment names a filter may use."""
    if section is None:
        return WebhooksConfig()
    if not isinstance(section, Mapping):
        raise WebhookConfigError("webhooks must be a mapping")
    unknown = set(section) - _SECTION_KEYS
    if unknown:
        raise WebhookConfigError(f"webhooks: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    defaults = section.get("defaults") or {}
    if not isinstance(defaults, Mapping) or set(defaults) - _SETTINGS:
        raise WebhookConfigError(f"webhooks.defaults: a mapping of {', '.join(sorted(_SETTINGS))}")
    entries = section.get("subscribers") or []
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise WebhookConfigError("webhooks.subscribers must be a list")
    subscribers = []
    for n, entry in enumerate(entries):
        where = f"webhooks.subscribers[{n}]"
        if not isinstance(entry, Mapping):
            raise WebhookConfigError(f"{where} must be a mapping")
        subscribers.append(make_subscriber({**defaults, **entry}, where, known_segments))
    return WebhooksConfig(
        subscribers=unique(subscribers),
        drain_timeout_ms=_duration(section, "drain_timeout", "webhooks", WebhooksConfig().drain_timeout_ms),
        defaults=dict(defaults),
    )


def unique(subscribers: Sequence[Subscriber]) -> tuple[Subscriber, ...]:
    """``subscribers`` if no two share a name (they would share a queue)."""
    names = [s.name for s in subscribers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise WebhookConfigError(f"webhooks: subscriber name(s) used twice: {', '.join(repeated)}")
    return tuple(subscribers)


def with_command_line(config: WebhooksConfig, urls: Sequence[str], secrets: Sequence[str]) -> WebhooksConfig:
    """``config`` plus one subscriber per ``--webhook`` URL, each signed with every ``--webhook-secret``
    and given the config's ``webhooks.defaults``."""
    if not urls:
        return config
    if not secrets:
        raise WebhookConfigError("--webhook needs --webhook-secret whsec_... (or SEGSTREAM_WEBHOOK_SECRET)")
    extra = [make_subscriber({**config.defaults, "url": url, "secrets": list(secrets)}, "--webhook") for url in urls]
    return replace(config, subscribers=unique([*config.subscribers, *extra]))
