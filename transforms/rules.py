"""Segment rules loaded from YAML, evaluated against a customer's features at an event time.

A rule is a condition tree over the features named in :mod:`transforms.profile`. Leaves:

- ``{since: <time feature>, at_least: 30m}`` / ``{since: ..., at_most: 24h}`` (both may be given;
  ``within: 24h`` is ``at_most``: "within the last 24 h"): how long ago the feature's time was;
  false when the feature is absent.
- ``{after: <time feature>, than: <time feature>}``: the first is later than the second (an absent
  second counts as never).
- ``{feature: <numeric feature>, <op>: <number>}`` with op one of ``> >= < <= == !=``.

Branches: ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}``. Durations: ``<int><ms|s|m|h|d>``.

Every condition also says when its value may next change with no new event (``next_flip``): a
``since`` bound passing, a window's oldest pane leaving it, the engagement score decaying past a
threshold. That is how exits (and delayed entries such as cart abandonment) fire by event-time timers.

>>> from transforms.features import Features
>>> from transforms.profile import ProfileModel, ProfileConfig, ProfileState
>>> model = ProfileModel(ProfileConfig())
>>> rules = parse_rules({"version": "1", "segments": {"recent_buyer": {"since": "last.purchase", "within": "30d"}}},
...                     model.kind)
>>> state = ProfileState(features=Features(last_at={"purchase": 0}))
>>> rules.evaluate(model.view(state, 1000), now=1000)
({'recent_buyer'}, 2592000001)
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
D = TypeVar("D", int, None)  # what a setting defaults to when absent


class RuleError(ValueError):
    """A rule file that cannot be used; the message names the rule and the problem."""


def parse_duration(text: object) -> int:
    """``"30m"`` -> 1800000 (milliseconds).

    >>> parse_duration("24h")
    86400000
    """
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"bad duration {text!r} (use e.g. 30m, 24h, 7d)")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


class View(Protocol):
    """What conditions read: feature values at the view's time (see :class:`transforms.profile.FeatureView`)."""

    def value(self, name: str) -> float | int | None: ...

    def next_change(self, name: str, op: str, threshold: float, holds: bool) -> int | None: ...


Kinds = Callable[[str], str]  # feature name -> "time" | "number"; ValueError for an unknown name


class Condition(Protocol):
    def evaluate(self, features: View, now: int) -> tuple[bool, int | None]: ...

    def numeric_features(self) -> set[str]: ...

    def inputs(self) -> set[str]: ...


def _earliest(a: int | None, b: int | None) -> int | None:
    """The earlier of two optional times (None: never)."""
    if a is None:
        return b
    return a if b is None or a <= b else b


@dataclass(frozen=True)
class Since:
    feature: str
    at_least: int | None
    at_most: int | None

    def evaluate(self, features: View, now: int) -> tuple[bool, int | None]:
        at = features.value(self.feature)
        if at is None:
            return False, None
        at = int(at)
        age = now - at
        holds, flip = True, None
        if self.at_least is not None and age < self.at_least:
            holds, flip = False, at + self.at_least
        if self.at_most is not None:
            if age <= self.at_most:
                flip = _earliest(flip, at + self.at_most + 1)
            else:
                holds = False
        return holds, flip

    def numeric_features(self) -> set[str]:
        return set()

    def inputs(self) -> set[str]:
        return {self.feature}


@dataclass(frozen=True)
class After:
    feature: str
    than: str

    def evaluate(self, features: View, now: int) -> tuple[bool, int | None]:
        first, second = features.value(self.feature), features.value(self.than)
        return first is not None and (second is None or first > second), None

    def numeric_features(self) -> set[str]:
        return set()

    def inputs(self) -> set[str]:
        return {self.feature, self.than}


@dataclass(frozen=True)
class Compare:
    feature: str
    op: str
    value: float

    def evaluate(self, features: View, now: int) -> tuple[bool, int | None]:
        holds = _OPERATORS[self.op](features.value(self.feature) or 0, self.value)
        return holds, features.next_change(self.feature, self.op, self.value, holds)

    def numeric_features(self) -> set[str]:
        return {self.feature}

    def inputs(self) -> set[str]:
        return {self.feature}


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Condition, ...]

    def evaluate(self, features: View, now: int) -> tuple[bool, int | None]:
        # Every part is evaluated: each may say when the whole may change. A false part that cannot
        # change without an event keeps the whole false until one comes: then no timer is needed.
        holds, flip, stuck = True, None, False
        for part in self.parts:
            part_holds, part_flip = part.evaluate(features, now)
            holds = holds and part_holds
            stuck = stuck or (not part_holds and part_flip is None)
            flip = _earliest(flip, part_flip)
        return holds, None if stuck else flip

    def numeric_features(self) -> set[str]:
        return set().union(*(p.numeric_features() for p in self.parts))

    def inputs(self) -> set[str]:
        return set().union(*(p.inputs() for p in self.parts))


@dataclass(frozen=True)
class AnyOf(AllOf):
    def evaluate(self, features: View, now: int) -> tuple[bool, int | None]:
        holds, flip, stuck = False, None, False  # a true part that cannot change keeps the whole true
        for part in self.parts:
            part_holds, part_flip = part.evaluate(features, now)
            holds = holds or part_holds
            stuck = stuck or (part_holds and part_flip is None)
            flip = _earliest(flip, part_flip)
        return holds, None if stuck else flip


@dataclass(frozen=True)
class Not:
    part: Condition

    def evaluate(self, features: View, now: int) -> tuple[bool, int | None]:
        holds, flip = self.part.evaluate(features, now)
        return not holds, flip

    def numeric_features(self) -> set[str]:
        return self.part.numeric_features()

    def inputs(self) -> set[str]:
        return self.part.inputs()


def _feature(name: object, kind: str, kinds: Kinds, where: str) -> str:
    """``name`` if it is a known feature of ``kind``; else ValueError naming the problem."""
    if not isinstance(name, str):
        raise ValueError(f"{where}: a feature name must be a string, got {name!r}")
    try:
        found = kinds(name)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if found != kind:
        use = "compare it with since/after" if found == "time" else "compare it with feature: and an operator"
        raise ValueError(f"{where}: type mismatch: {name!r} is a {found}, not a {kind} ({use})")
    return name


def _parse_condition(spec: object, where: str, kinds: Kinds) -> Condition:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: a condition must be a mapping, got {type(spec).__name__}")
    keys = set(spec) - {"description"}
    if len(keys) == 1 and keys <= {"all", "any"}:
        (key,) = keys
        parts = spec[key]
        if not isinstance(parts, list) or not parts:
            raise ValueError(f"{where}: {key!r} needs a non-empty list of conditions")
        parsed = tuple(_parse_condition(p, f"{where}.{key}[{i}]", kinds) for i, p in enumerate(parts))
        return AllOf(parsed) if key == "all" else AnyOf(parsed)
    if keys == {"not"}:
        return Not(_parse_condition(spec["not"], f"{where}.not", kinds))
    if "since" in keys and keys <= {"since", "at_least", "at_most", "within"} and len(keys) > 1:
        if {"at_most", "within"} <= keys:
            raise ValueError(f"{where}: 'within' and 'at_most' say the same thing; give one")
        bounds = {k: _bound(spec, k, where) for k in ("at_least", "at_most", "within")}
        at_most = bounds["within"] if bounds["at_most"] is None else bounds["at_most"]
        return Since(_feature(spec["since"], "time", kinds, where), bounds["at_least"], at_most)
    if keys == {"after", "than"}:
        return After(_feature(spec["after"], "time", kinds, where), _feature(spec["than"], "time", kinds, where))
    if "feature" in keys and len(keys) == 2:
        (op,) = keys - {"feature"}
        name = spec["feature"]
        if op not in _OPERATORS:
            raise ValueError(f"{where}: unknown comparison {op!r} (use one of {' '.join(_OPERATORS)})")
        _feature(name, "number", kinds, where)
        value = spec[op]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: {name} {op} needs a number, got {value!r}")
        return Compare(str(name), op, float(value))
    raise ValueError(f"{where}: cannot read condition with keys {sorted(keys)}")


def duration_setting(settings: Mapping[str, object], key: str, default: D) -> int | D:
    """``settings[key]`` as milliseconds, ``default`` when absent; ValueError for a bad duration.

    >>> duration_setting({"gap": "30m"}, "gap", None), duration_setting({}, "gap", 5)
    (1800000, 5)
    """
    return parse_duration(settings[key]) if key in settings else default


def _bound(spec: Mapping[str, object], key: str, where: str) -> int | None:
    try:
        return duration_setting(spec, key, None)
    except ValueError as error:
        raise ValueError(f"{where}: {key}: {error}") from None


@dataclass(frozen=True)
class RuleSet:
    """Named segment conditions and the version stamped on every change they cause."""

    version: str
    segments: dict[str, Condition]

    def evaluate(self, features: View, now: int) -> tuple[set[str], int | None]:
        """Segments the customer is in at ``now``, and the earliest time that may change unprompted."""
        members: set[str] = set()
        wake: int | None = None
        for name, condition in self.segments.items():
            holds, flip = condition.evaluate(features, now)
            if holds:
                members.add(name)
            wake = _earliest(wake, flip)
        return members, wake

    def decided_by(self, segment: str, features: View) -> dict[str, float]:
        """The numeric feature values the segment's rule reads (the scores in a change; none for a
        segment no longer in the rules)."""
        condition = self.segments.get(segment)
        names = sorted(condition.numeric_features()) if condition is not None else []
        return {name: round(float(features.value(name) or 0), 4) for name in names}


def parse_rules(document: object, kinds: Kinds | None = None) -> RuleSet:
    """Build a :class:`RuleSet` from the parsed YAML document, or raise :class:`RuleError`.

    ``kinds`` names the features that exist (default: those of the default profile configuration).
    """
    if kinds is None:
        from transforms.profile import ProfileConfig, ProfileModel

        kinds = ProfileModel(ProfileConfig()).kind
    if not isinstance(document, Mapping) or not isinstance(document.get("segments"), Mapping):
        raise RuleError("rules: the document needs a 'segments' mapping of segment name -> condition")
    segments: dict[str, Condition] = {}
    for name, spec in document["segments"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise RuleError(f"rule {name!r}: segment names are lower_snake_case")
        try:
            segments[name] = _parse_condition(spec, name, kinds)
        except ValueError as error:
            where, _, problem = str(error).partition(": ")
            if where == name:
                raise RuleError(f"rule {name!r}: {problem}") from None
            if where.startswith(name + "."):
                raise RuleError(f"rule {name!r} at {where.removeprefix(name + '.')}: {problem}") from None
            raise RuleError(f"rule {name!r}: {error}") from None
    if not segments:
        raise RuleError("rules: no segments defined")
    canonical = json.dumps(document["segments"], sort_keys=True, default=str)
    version = str(document.get("version") or hashlib.sha256(canonical.encode()).hexdigest()[:12])
    return RuleSet(version=version, segments=dict(sorted(segments.items())))


def load_rules(path: str | Path, kinds: Kinds | None = None) -> RuleSet:
    """Read a YAML rule file (the ``segments`` section of the job config)."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RuleError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    return parse_rules(document, kinds)
