"""The job configuration file (YAML): segment rules, windows, engagement, cleaning, event time.

Every key is documented in the README. Unknown keys are errors, so a typo never passes silently.

>>> config = parse_config({"segments": {"big": {"feature": "spend", ">=": 100}},
...                        "stream": {"max_out_of_orderness": "10s"}}, env={})
>>> config.stream.max_out_of_orderness_ms, config.rules.segments["big"].op
(10000, '>=')
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from online_models import MODELS, Models, ModelSettings, build_model
from transforms.cleaning import MAX_AMOUNT_CEILING, MAX_QUANTITY_CEILING, CleaningConfig
from transforms.customer import CustomerLogic, StreamConfig
from transforms.engagement import DEFAULT_WEIGHTS, MAX_POINTS, EngagementConfig
from transforms.events import EVENT_TYPES
from transforms.identity import IdentityConfig
from transforms.profile import DEFAULT_WINDOWS, ProfileConfig, ProfileModel
from transforms.rules import RuleError, RuleSet, duration_setting, parse_rules
from transforms.subscribers import WebhookConfigError, WebhooksConfig, parse_webhooks
from transforms.windows import WindowSpec

DEFAULT_EMAIL_SALT = "segstream-insecure-default-salt"
SALT_ENV = "SEGSTREAM_EMAIL_SALT"
_TOP_KEYS = {
    "version",
    "segments",
    "cleaning",
    "stream",
    "webhooks",
    "windows",
    "sessions",
    "engagement",
    "rfm",
    "identity",
    "models",
}
_IDENTITY_LIMITS = ("max_user_ids_per_identifier", "max_anonymous_ids_per_identifier", "max_identifiers_per_customer")
_CLEANING_KEYS = {"email_salt", "max_future", "max_record_bytes", "pii_properties", "max_amount", "max_quantity"}
_STREAM_KEYS = {"max_out_of_orderness", "allowed_lateness", "dedup_horizon"}
_ENGAGEMENT_KEYS = {"weights", "half_life", "saturation"}
_MODEL_DURATIONS = {
    "refresh": "refresh_ms",
    "snapshot_every": "snapshot_every_ms",
    "churn_snapshot_every": "churn_snapshot_every_ms",
    "ltv_snapshot_every": "ltv_snapshot_every_ms",
    "learn_wait": "learn_wait_ms",
}
_MODEL_COUNTS = ("max_pending", "validation_window", "publish_every", "learn_batch")
_WINDOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", re.IGNORECASE)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class JobConfig:
    rules: RuleSet
    cleaning: CleaningConfig
    stream: StreamConfig
    default_salt: bool  # True when no salt was configured (a warning is printed)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)  # subscribers (transforms/subscribers.py)
    profile: ProfileConfig = field(default_factory=ProfileConfig)  # windows, sessions, engagement
    identity: IdentityConfig | None = None  # identity stitching (None: every event's own customer key)
    models: ModelSettings | None = None  # churn and propensity models (None: off)

    def logic(self) -> CustomerLogic:
        """The per-customer core this configuration describes (one per worker)."""
        models = Models(self.models) if self.models is not None else None
        return CustomerLogic(self.rules, self.stream, self.profile, models=models)


def _section(document: Mapping[str, object], name: str, allowed: set[str]) -> Mapping[str, object]:
    section = document.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config: '{name}' must be a mapping")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"config: unknown key(s) in '{name}': {', '.join(sorted(map(str, unknown)))}")
    return section


def _duration(section: Mapping[str, object], key: str, where: str, default: int) -> int:
    try:
        return duration_setting(section, key, default)
    except ValueError as error:
        raise ConfigError(f"config: {where}.{key}: {error}") from None


def _limit(section: Mapping[str, object], key: str, default: float, ceiling: float, whole: bool) -> float:
    """A cleaning limit: a number above 0, at most ``ceiling`` (a whole one if ``whole``)."""
    value = section.get(key, default)
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):  # YAML reads 1e9 (no dot) as text
        value = float(value)
    if whole and isinstance(value, float) and value.is_integer():
        value = int(value)
    kinds = int if whole else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value <= ceiling:
        kind, most = ("a whole number", f"{ceiling}") if whole else ("a number", f"{ceiling:g}")
        raise ConfigError(f"config: cleaning.{key} must be {kind} above 0 and at most {most}, got {value!r}")
    return value


def parse_config(document: object, env: Mapping[str, str] = os.environ) -> JobConfig:
    """Validate a parsed YAML document into a :class:`JobConfig`."""
    if not isinstance(document, Mapping):
        raise ConfigError("config: the file must hold a YAML mapping")
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"config: unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}")
    models = _models(document)
    profile = dataclasses.replace(_profile(document), scores=models is not None)
    try:
        rules = parse_rules(document, ProfileModel(profile).kind)
    except RuleError as error:
        raise ConfigError(str(error)) from None
    cleaning = _section(document, "cleaning", _CLEANING_KEYS)
    stream = _section(document, "stream", _STREAM_KEYS)
    salt = cleaning.get("email_salt") or env.get(SALT_ENV)
    defaults = StreamConfig()
    clean_defaults = CleaningConfig(email_salt="")  # slots dataclass: class attributes are not defaults
    max_bytes = cleaning.get("max_record_bytes", clean_defaults.max_record_bytes)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError("config: cleaning.max_record_bytes must be a positive integer")
    pii = cleaning.get("pii_properties", sorted(clean_defaults.pii_properties))
    if not isinstance(pii, list) or not all(isinstance(name, str) and name for name in pii):
        raise ConfigError("config: cleaning.pii_properties must be a list of field names")
    max_amount = _limit(cleaning, "max_amount", clean_defaults.max_amount, MAX_AMOUNT_CEILING, whole=False)
    max_quantity = _limit(cleaning, "max_quantity", clean_defaults.max_quantity, MAX_QUANTITY_CEILING, whole=True)
    try:
        webhooks = parse_webhooks(document.get("webhooks"), known_segments=set(rules.segments), env=env)
    except WebhookConfigError as error:
        raise ConfigError(f"config: {error}") from None
    return JobConfig(
        rules=rules,
        cleaning=CleaningConfig(
            email_salt=str(salt or DEFAULT_EMAIL_SALT),
            max_future_ms=_duration(cleaning, "max_future", "cleaning", clean_defaults.max_future_ms),
            max_record_bytes=max_bytes,
            pii_properties=frozenset(name.lower() for name in pii),
            max_amount=float(max_amount),
            max_quantity=int(max_quantity),
        ),
        stream=StreamConfig(
            max_out_of_orderness_ms=_duration(
                stream, "max_out_of_orderness", "stream", defaults.max_out_of_orderness_ms
            ),
            allowed_lateness_ms=_duration(stream, "allowed_lateness", "stream", defaults.allowed_lateness_ms),
            dedup_horizon_ms=_duration(stream, "dedup_horizon", "stream", defaults.dedup_horizon_ms),
        ),
        default_salt=not salt,
        webhooks=webhooks,
        profile=profile,
        identity=_identity(document),
        models=models,
    )


def _models(document: Mapping[str, object]) -> ModelSettings | None:
    allowed = {"enabled", "name", "params", "churn_days", "propensity_days", "ltv_days", "score_write_delta"}
    allowed |= {*_MODEL_DURATIONS, *_MODEL_COUNTS}
    section = _section(document, "models", allowed)
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("config: models.enabled must be true or false")
    defaults = ModelSettings()
    name = section.get("name", defaults.model)
    if name not in MODELS:
        raise ConfigError(f"config: models.name: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    params = section.get("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError("config: models.params must be a mapping of the model's parameters")
    try:
        build_model(str(name), dict(params))
    except ValueError as error:
        raise ConfigError(f"config: models.params: {error}") from None
    settings: dict[str, Any] = {"model": str(name), "params": dict(params)}
    for key in ("churn_days", "propensity_days", "ltv_days"):
        days = section.get(key, getattr(defaults, key))
        if isinstance(days, bool) or not isinstance(days, int | float) or not days > 0:
            raise ConfigError(f"config: models.{key} must be a positive number of days")
        settings[key] = days
    # ModelSettings checks it:
    settings["score_write_delta"] = section.get("score_write_delta", defaults.score_write_delta)
    for key, field_name in _MODEL_DURATIONS.items():
        settings[field_name] = _duration(section, key, "models", getattr(defaults, field_name))
        if settings[field_name] <= 0 and key != "refresh":
            raise ConfigError(f"config: models.{key} must be positive")
    for key in _MODEL_COUNTS:
        value = section.get(key, getattr(defaults, key))
        unbounded = value is None and key == "max_pending"  # the only count that may be null
        if not unbounded and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"config: models.{key} must be a positive integer")
        settings[key] = value
    try:
        models = ModelSettings(**settings)
    except ValueError as error:
        raise ConfigError(f"config: {error}") from None
    return models if enabled else None


def _identity(document: Mapping[str, object]) -> IdentityConfig | None:
    section = _section(document, "identity", {"stitch", "merge_user_ids", *_IDENTITY_LIMITS})
    for key in ("stitch", "merge_user_ids"):
        if not isinstance(section.get(key, False), bool):
            raise ConfigError(f"config: identity.{key} must be true or false")
    limits = {}
    for key in _IDENTITY_LIMITS:
        value = section.get(key, getattr(IdentityConfig(), key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config: identity.{key} must be a positive integer")
        limits[key] = value
    if not section.get("stitch", False):
        return None
    return IdentityConfig(merge_user_ids=bool(section.get("merge_user_ids", False)), **limits)


def _windows(document: Mapping[str, object]) -> tuple[WindowSpec, ...]:
    if "windows" not in document:
        return DEFAULT_WINDOWS
    section = document["windows"]
    if not isinstance(section, Mapping) or not section:
        raise ConfigError("config: 'windows' must map window names to {size: ..., slide: ...}")
    specs = []
    for name, spec in section.items():
        where = f"windows.{name}"
        if not isinstance(name, str) or not _WINDOW_NAME.match(name):
            raise ConfigError(f"config: {where}: window names are lower case letters, digits and _ (e.g. 7d)")
        if not isinstance(spec, Mapping) or set(spec) != {"size", "slide"}:
            raise ConfigError(f"config: {where}: give exactly size and slide, e.g. {{size: 7d, slide: 1d}}")
        size, slide = _duration(spec, "size", where, 0), _duration(spec, "slide", where, 0)
        try:
            specs.append(WindowSpec(name, size, slide))
        except ValueError:
            raise ConfigError(f"config: {where}: size must be a positive multiple of slide") from None
    return tuple(specs)


def _engagement(document: Mapping[str, object]) -> EngagementConfig:
    section = _section(document, "engagement", _ENGAGEMENT_KEYS)
    defaults = EngagementConfig()
    weights = section.get("weights", {})
    if not isinstance(weights, Mapping):
        raise ConfigError("config: engagement.weights must map event types to numbers")
    for kind, weight in weights.items():
        if kind not in EVENT_TYPES:
            raise ConfigError(f"config: engagement.weights: unknown event type {kind!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= MAX_POINTS:
            raise ConfigError(f"config: engagement.weights.{kind}: needs a finite number >= 0, got {weight!r}")
    saturation = section.get("saturation", defaults.saturation)
    if isinstance(saturation, bool) or not isinstance(saturation, int | float) or not 0 < saturation <= MAX_POINTS:
        raise ConfigError("config: engagement.saturation must be a finite positive number")
    half_life = _duration(section, "half_life", "engagement", defaults.half_life_ms)
    if half_life <= 0:
        raise ConfigError("config: engagement.half_life must be positive")
    return EngagementConfig(
        weights={**DEFAULT_WEIGHTS, **{str(k): float(v) for k, v in weights.items()}},
        half_life_ms=half_life,
        saturation=float(saturation),
    )


def _profile(document: Mapping[str, object]) -> ProfileConfig:
    sessions = _section(document, "sessions", {"gap"})
    gap = _duration(sessions, "gap", "sessions", ProfileConfig().session_gap_ms)
    if gap <= 0:
        raise ConfigError("config: sessions.gap must be positive")
    rfm = _section(document, "rfm", {"refresh"})
    refresh = _duration(rfm, "refresh", "rfm", ProfileConfig().rfm_refresh_ms)
    if refresh <= 0:
        raise ConfigError("config: rfm.refresh must be positive")
    return ProfileConfig(
        windows=_windows(document), session_gap_ms=gap, engagement=_engagement(document), rfm_refresh_ms=refresh
    )


def load_config(path: str | Path | None) -> JobConfig:
    """Load ``path``, or the default configuration shipped with the package when None."""
    source = Path(path) if path is not None else Path(__file__).with_name("default_config.yaml")
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"config: cannot read {source}: {error.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config: {source} is not valid YAML{where}") from None
    return parse_config(document)
