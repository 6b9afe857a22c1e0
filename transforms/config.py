"""The job configuration file (YAML): segment rules, cleaning and event-time settings.

Every key is documented in the README. Unknown keys are errors, so a typo never passes silently.

>>> config = parse_config({"segments": {"big": {"feature": "spend", ">=": 100}},
...                        "stream": {"max_out_of_orderness": "10s"}}, env={})
>>> config.stream.max_out_of_orderness_ms, config.rules.segments["big"].op
(10000, '>=')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from transforms.cleaning import CleaningConfig
from transforms.customer import StreamConfig
from transforms.rules import RuleError, RuleSet, parse_duration, parse_rules

DEFAULT_EMAIL_SALT = "segstream-insecure-default-salt"
SALT_ENV = "SEGSTREAM_EMAIL_SALT"
_TOP_KEYS = {"version", "segments", "cleaning", "stream"}
_CLEANING_KEYS = {"email_salt", "max_future", "max_record_bytes"}
_STREAM_KEYS = {"max_out_of_orderness", "allowed_lateness", "dedup_horizon"}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class JobConfig:
    rules: RuleSet
    cleaning: CleaningConfig
    stream: StreamConfig
    default_salt: bool  # True when no salt was configured (a warning is printed)


def _section(document: Mapping[str, object], name: str, allowed: set[str]) -> Mapping[str, object]:
    section = document.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config: '{name}' must be a mapping")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"config: unknown key(s) in '{name}': {', '.join(sorted(map(str, unknown)))}")
    return section


def _duration(section: Mapping[str, object], key: str, where: str, default: int) -> int:
    if key not in section:
        return default
    try:
        return parse_duration(section[key])
    except ValueError as error:
        raise ConfigError(f"config: {where}.{key}: {error}") from None


def parse_config(document: object, env: Mapping[str, str] = os.environ) -> JobConfig:
    """Validate a parsed YAML document into a :class:`JobConfig`."""
    if not isinstance(document, Mapping):
        raise ConfigError("config: the file must hold a YAML mapping")
    unknown = set(document) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"config: unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}")
    try:
        rules = parse_rules(document)
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
    return JobConfig(
        rules=rules,
        cleaning=CleaningConfig(
            email_salt=str(salt or DEFAULT_EMAIL_SALT),
            max_future_ms=_duration(cleaning, "max_future", "cleaning", clean_defaults.max_future_ms),
            max_record_bytes=max_bytes,
        ),
        stream=StreamConfig(
            max_out_of_orderness_ms=_duration(
                stream, "max_out_of_orderness", "stream", defaults.max_out_of_orderness_ms
            ),
            allowed_lateness_ms=_duration(stream, "allowed_lateness", "stream", defaults.allowed_lateness_ms),
            dedup_horizon_ms=_duration(stream, "dedup_horizon", "stream", defaults.dedup_horizon_ms),
        ),
        default_salt=not salt,
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
