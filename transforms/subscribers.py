"""Webhook subscribers: the ``webhooks`` section of the job configuration, or ``--webhook`` options.

A subscriber's signing secrets come from ``secrets_env`` (an environment variable: secrets
separated by whitespace) or ``secrets_file`` (a file: one per line), so the configuration file
holds no secret; ``secrets`` (literal ``whsec_...`` values) is for tests and demos.

>>> config = parse_webhooks({"subscribers": [{"name": "crm", "url": "https://crm.example/hook",
...     "secrets_env": "CRM_SECRET", "segments": ["big_spender"], "timeout": "2s"}]},
...     env={"CRM_SECRET": "whsec_c2VjcmV0"})
>>> crm = config.subscribers[0]
>>> crm.timeout_ms, crm.wants("big_spender"), crm.wants("recent_buyer"), crm.retry.max_age_ms
(2000, True, False, 14400000)
>>> crm.secrets
('whsec_c2VjcmV0',)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from transforms.backoff import Backoff
from transforms.delivery_policy import CircuitBreaker, RateLimit, RetryPolicy
from transforms.rules import duration_setting

SECRET_PREFIX = "whsec_"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SECRET_KEYS = ("secrets", "secrets_env", "secrets_file")  # one of them: where the signing secrets come from
_SETTINGS = {
    *_SECRET_KEYS,
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


def read_secrets(path: str | Path, where: str) -> tuple[str, ...]:
    """The secrets in the file ``path``, one per line (surrounding whitespace and blank lines
    ignored); ValueError starting with ``where`` when it cannot be read or holds none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{where}: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: {path} is not UTF-8 text") from None
    secrets = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not secrets:
        raise ValueError(f"{where}: {path} is empty")
    return secrets


def _secrets(settings: Mapping[str, object], where: str, env: Mapping[str, str]) -> tuple[str, ...]:
    """A subscriber's signing secrets, from the one of ``secrets``, ``secrets_env``, ``secrets_file`` given."""
    given = [key for key in _SECRET_KEYS if key in settings]
    if not given:
        raise WebhookConfigError(
            f"{where}: secrets is required: secrets_file: FILE or secrets_env: VARIABLE (whsec_ + base64, e.g. "
            "of `openssl rand 32`), or secrets: [whsec_...]"
        )
    if len(given) > 1:
        raise WebhookConfigError(f"{where}: give one of secrets_file, secrets_env, secrets; got {' and '.join(given)}")
    key = given[0]
    value = settings[key]
    if key == "secrets":
        found = _strings(value, f"{where}.secrets")
    elif not isinstance(value, str) or not value:
        raise WebhookConfigError(f"{where}.{key} must be {'a file name' if key == 'secrets_file' else 'a name'}")
    elif key == "secrets_env":
        found = tuple(env.get(value, "").split())
        if not found:
            raise WebhookConfigError(f"{where}.secrets_env: environment variable {value} is not set or empty")
    else:
        try:
            found = read_secrets(value, f"{where}.secrets_file")
        except ValueError as error:
            raise WebhookConfigError(str(error)) from None
    return tuple(check_secret(secret, f"{where}.{key}") for secret in found)


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
    settings: Mapping[str, object],
    where: str,
    known_segments: Collection[str] | None = None,
    env: Mapping[str, str] = os.environ,
) -> Subscriber:
    """Validate one subscriber mapping (``name``, ``url`` and the settings of the README);
    ``env``: where ``secrets_env`` is looked up."""
    unknown = set(settings) - _SUBSCRIBER_KEYS
    if unknown:
        raise WebhookConfigError(f"{where}: unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    if "url" not in settings:
        raise WebhookConfigError(f"{where}: url is required")
    url = _check_url(settings["url"], where)
    name = str(settings.get("name") or default_name(url))
    if not _NAME.match(name):
        raise WebhookConfigError(f"{where}: name {name!r} may use letters, digits, '_', '.', '-' (at most 64)")
    secrets = _secrets(settings, where, env)
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


def parse_webhooks(
    section: object, known_segments: Collection[str] | None = None, env: Mapping[str, str] = os.environ
) -> WebhooksConfig:
    """The ``webhooks`` section: ``subscribers`` (a list), ``defaults`` (settings every subscriber
    inherits) and ``drain_timeout``. ``known_segments``: segment names a filter may use; ``env``:
    where ``secrets_env`` is looked up."""
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
        subscribers.append(make_subscriber(_inherit(defaults, entry), where, known_segments, env))
    return WebhooksConfig(
        subscribers=unique(subscribers),
        drain_timeout_ms=_duration(section, "drain_timeout", "webhooks", WebhooksConfig().drain_timeout_ms),
        defaults=dict(defaults),
    )


def _inherit(defaults: Mapping[str, object], settings: Mapping[str, object]) -> dict[str, object]:
    """``settings`` over ``defaults``; secrets given in ``settings`` replace the defaults' whatever their key."""
    if any(key in settings for key in _SECRET_KEYS):
        defaults = {key: value for key, value in defaults.items() if key not in _SECRET_KEYS}
    return {**defaults, **settings}


def unique(subscribers: Sequence[Subscriber]) -> tuple[Subscriber, ...]:
    """``subscribers`` if no two share a name (they would share a queue)."""
    names = [s.name for s in subscribers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise WebhookConfigError(f"webhooks: subscriber name(s) used twice: {', '.join(repeated)}")
    return tuple(subscribers)


def with_command_line(config: WebhooksConfig, urls: Sequence[str], secrets: Sequence[str]) -> WebhooksConfig:
    """``config`` plus one subscriber per ``--webhook`` URL, each signed with every one of ``secrets``
    (``--webhook-secret-file`` or ``--webhook-secret``) and given the config's other ``webhooks.defaults``."""
    if not urls:
        return config
    if not secrets:
        raise WebhookConfigError(
            "--webhook needs --webhook-secret-file FILE or SEGSTREAM_WEBHOOK_SECRET_FILE (or SEGSTREAM_WEBHOOK_SECRET)"
        )
    extra = [
        make_subscriber(_inherit(config.defaults, {"url": url, "secrets": list(secrets)}), "--webhook") for url in urls
    ]
    return replace(config, subscribers=unique([*config.subscribers, *extra]))
