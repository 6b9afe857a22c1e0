"""Segment rules and the job configuration: parsing, validation messages, evaluation and versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from transforms.config import ConfigError, JobConfig, load_config, parse_config
from transforms.features import Features
from transforms.profile import FeatureView, ProfileConfig, ProfileModel, ProfileState
from transforms.rules import (
    After,
    AllOf,
    AnyOf,
    Compare,
    Not,
    RuleError,
    RuleSet,
    Since,
    load_rules,
    parse_duration,
    parse_rules,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def one_rule(condition: object, name: str = "seg") -> Any:
    """The parsed condition of a one-segment rule document."""
    return parse_rules({"version": "t", "segments": {name: condition}}).segments[name]


def features(**last: int) -> Features:
    """Features with ``last.<type>`` times, e.g. ``features(add_to_cart=T0)``."""
    return Features(last_at=dict(last))


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("0s", 0),
        ("45s", 45_000),
        ("30m", 30 * MINUTE),
        ("24h", DAY),
        ("7d", 7 * DAY),
        (" 5 m ", 5 * MINUTE),
    ],
)
def test_parse_duration_units(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["30", "m", "1.5h", "-1h", "30 min", "", "1w", None, 30])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


# --- parsing: every leaf and branch kind -----------------------------------------------------


def test_parse_since_leaves() -> None:
    assert one_rule({"since": "last.add_to_cart", "at_least": "30m"}) == Since("last.add_to_cart", 30 * MINUTE, None)
    assert one_rule({"since": "last.purchase", "at_most": "30d"}) == Since("last.purchase", None, 30 * DAY)
    assert one_rule({"since": "first_seen", "at_least": "1s", "at_most": "2h"}) == Since("first_seen", 1000, 2 * HOUR)


def test_parse_after_leaf() -> None:
    assert one_rule({"after": "last.add_to_cart", "than": "last.purchase"}) == After(
        "last.add_to_cart", "last.purchase"
    )


@pytest.mark.parametrize("op", [">", ">=", "<", "<=", "==", "!="])
def test_parse_comparison_leaf(op: str) -> None:
    parsed = one_rule({"feature": "count.page_view", op: 3})
    assert parsed == Compare("count.page_view", op, 3.0)
    assert isinstance(parsed.value, float)


def test_parse_branches() -> None:
    spec = {
        "all": [
            {"any": [{"feature": "spend", ">=": 100}, {"feature": "orders", ">": 2.5}]},
            {"not": {"since": "last.refund", "at_most": "7d"}},
        ],
        "description": "documentation is allowed on any condition",
    }
    parsed = one_rule(spec)
    assert isinstance(parsed, AllOf) and not isinstance(parsed, AnyOf)
    first, second = parsed.parts
    assert isinstance(first, AnyOf)
    assert first.parts == (Compare("spend", ">=", 100.0), Compare("orders", ">", 2.5))
    assert second == Not(Since("last.refund", None, 7 * DAY))
    assert parsed.numeric_features() == {"spend", "orders"}


def test_segments_are_sorted_by_name() -> None:
    rules = parse_rules({"segments": {"zeta": {"feature": "spend", ">": 0}, "alpha": {"feature": "orders", ">": 0}}})
    assert list(rules.segments) == ["alpha", "zeta"]


# --- validation: the message names the rule and the problem ----------------------------------

RULE_ERRORS: list[tuple[str, object, list[str]]] = [
    ("unknown feature", {"feature": "spent", ">": 1}, ["rule 'seg'", "unknown feature 'spent'"]),
    (
        "time feature compared",
        {"feature": "last.purchase", ">": 1},
        ["type mismatch: 'last.purchase' is a time, not a number", "since/after"],
    ),
    ("unknown time feature", {"since": "last.buy", "at_most": "1d"}, ["rule 'seg'", "unknown feature 'last.buy'"]),
    (
        "number where a time is needed",
        {"after": "last.purchase", "than": "spend"},
        ["rule 'seg'", "type mismatch: 'spend' is a number, not a time"],
    ),
    (
        "unknown window",
        {"feature": "window.2d.sessions", ">": 5},
        ["rule 'seg'", "unknown window '2d' in 'window.2d.sessions' (configured: 1h, 24h, 7d, 30d)"],
    ),
    ("unknown window metric", {"feature": "window.7d.visits", ">": 5}, ["unknown window metric 'visits'"]),
    ("window as a time", {"since": "window.7d.sessions", "within": "1d"}, ["type mismatch"]),
    ("within and at_most", {"since": "last.purchase", "within": "1d", "at_most": "2d"}, ["say the same thing"]),
    ("bad within", {"since": "last.purchase", "within": "soon"}, ["rule 'seg'", "within: bad duration 'soon'"]),
    ("bad duration", {"since": "last.purchase", "at_most": "30 days"}, ["rule 'seg'", "bad duration '30 days'"]),
    ("duration without unit", {"since": "last.purchase", "at_least": 30}, ["rule 'seg'", "bad duration 30"]),
    ("unknown operator", {"feature": "spend", "=>": 1}, ["rule 'seg'", "unknown comparison '=>'"]),
    ("string value", {"feature": "spend", ">": "100"}, ["rule 'seg'", "spend > needs a number, got '100'"]),
    ("boolean value", {"feature": "orders", "==": True}, ["rule 'seg'", "orders == needs a number, got True"]),
    ("list condition", ["since", "last.purchase"], ["rule 'seg'", "a condition must be a mapping, got list"]),
    ("nested non-mapping", {"all": ["spend"]}, ["rule 'seg' at all[0]: a condition must be a mapping, got str"]),
    ("empty all", {"all": []}, ["rule 'seg'", "'all' needs a non-empty list"]),
    ("empty any", {"any": []}, ["rule 'seg'", "'any' needs a non-empty list"]),
    ("any not a list", {"any": {"feature": "spend", ">": 1}}, ["'any' needs a non-empty list"]),
    ("nested error path", {"not": {"any": [{"feature": "x", ">": 1}]}}, ["at not.any[0]", "unknown feature 'x'"]),
    ("since without bound", {"since": "last.purchase"}, ["rule 'seg'", "cannot read condition with keys ['since']"]),
    ("mixed keys", {"feature": "spend", ">": 1, "<": 5}, ["cannot read condition with keys ['<', '>', 'feature']"]),
]


@pytest.mark.parametrize(("condition", "fragments"), [c[1:] for c in RULE_ERRORS], ids=[c[0] for c in RULE_ERRORS])
def test_rule_errors_name_rule_and_problem(condition: object, fragments: list[str]) -> None:
    with pytest.raises(RuleError) as caught:
        one_rule(condition)
    for fragment in fragments:
        assert fragment in str(caught.value)
    # The job config reports the same message as a ConfigError.
    with pytest.raises(ConfigError) as via_config:
        parse_config({"segments": {"seg": condition}}, env={})
    assert str(via_config.value) == str(caught.value)


DOCUMENT_ERRORS: list[tuple[str, object, str]] = [
    ("bad segment name", {"segments": {"Cart-Abandoner": {"feature": "spend", ">": 1}}}, "rule 'Cart-Abandoner'"),
    ("numeric segment name", {"segments": {1: {"feature": "spend", ">": 1}}}, "segment names are lower_snake_case"),
    ("missing segments", {"version": "1"}, "needs a 'segments' mapping"),
    ("segments not a mapping", {"segments": ["a"]}, "needs a 'segments' mapping"),
    ("not a mapping", ["segments"], "needs a 'segments' mapping"),
    ("empty document", None, "needs a 'segments' mapping"),
    ("no segments", {"segments": {}}, "no segments defined"),
]


@pytest.mark.parametrize(
    ("document", "fragment"), [c[1:] for c in DOCUMENT_ERRORS], ids=[c[0] for c in DOCUMENT_ERRORS]
)
def test_document_errors(document: object, fragment: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(document)
    assert fragment in str(caught.value)


def test_bad_segment_name_says_why() -> None:
    with pytest.raises(RuleError, match="lower_snake_case"):
        parse_rules({"segments": {"9lives": {"feature": "spend", ">": 1}}})


def test_load_rules_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("segments: {a: [\n", encoding="utf-8")
    with pytest.raises(RuleError, match="not valid YAML") as caught:
        load_rules(path)
    assert str(path) in str(caught.value)


def test_load_rules_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: r9\nsegments:\n  big: {feature: spend, '>=': 10}\n", encoding="utf-8")
    rules = load_rules(path)
    assert rules.version == "r9"
    assert rules.segments == {"big": Compare("spend", ">=", 10.0)}


# --- the job configuration -------------------------------------------------------------------

VALID_SEGMENTS = {"big": {"feature": "spend", ">=": 100}}

CONFIG_ERRORS: list[tuple[str, object, str]] = [
    ("not a mapping", ["segments"], "config: the file must hold a YAML mapping"),
    ("empty file", None, "config: the file must hold a YAML mapping"),
    ("unknown top-level key", {"segments": VALID_SEGMENTS, "segment": {}}, "unknown top-level key(s): segment"),
    (
        "unknown stream key",
        {"segments": VALID_SEGMENTS, "stream": {"lateness": "1s"}},
        "unknown key(s) in 'stream': lateness",
    ),
    (
        "unknown cleaning key",
        {"segments": VALID_SEGMENTS, "cleaning": {"salt": "x", "max_future": "1d"}},
        "unknown key(s) in 'cleaning': salt",
    ),
    ("stream not a mapping", {"segments": VALID_SEGMENTS, "stream": "5s"}, "'stream' must be a mapping"),
    (
        "bad stream duration",
        {"segments": VALID_SEGMENTS, "stream": {"allowed_lateness": "1 minute"}},
        "stream.allowed_lateness: bad duration",
    ),
    (
        "bad cleaning duration",
        {"segments": VALID_SEGMENTS, "cleaning": {"max_future": "soon"}},
        "cleaning.max_future: bad duration",
    ),
    (
        "zero record bytes",
        {"segments": VALID_SEGMENTS, "cleaning": {"max_record_bytes": 0}},
        "max_record_bytes must be a positive integer",
    ),
    (
        "boolean record bytes",
        {"segments": VALID_SEGMENTS, "cleaning": {"max_record_bytes": True}},
        "max_record_bytes must be a positive integer",
    ),
    ("missing segments", {"stream": {}}, "needs a 'segments' mapping"),
]


@pytest.mark.parametrize(("document", "fragment"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors(document: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert fragment in str(caught.value)


def test_parse_config_values_and_salt() -> None:
    document = {
        "version": "v7",
        "segments": VALID_SEGMENTS,
        "cleaning": {"max_future": "2h", "max_record_bytes": 1024},
        "stream": {"max_out_of_orderness": "10s", "allowed_lateness": "1m", "dedup_horizon": "2d"},
    }
    config = parse_config(document, env={})
    assert config.rules.version == "v7"
    assert (config.stream.max_out_of_orderness_ms, config.stream.allowed_lateness_ms) == (10_000, MINUTE)
    assert config.stream.dedup_horizon_ms == 2 * DAY
    assert (config.cleaning.max_future_ms, config.cleaning.max_record_bytes) == (2 * HOUR, 1024)
    assert config.default_salt is True
    salted = parse_config(document, env={"SEGSTREAM_EMAIL_SALT": "pepper"})
    assert salted.cleaning.email_salt == "pepper" and salted.default_salt is False
    in_file = parse_config({**document, "cleaning": {"email_salt": "sel"}}, env={"SEGSTREAM_EMAIL_SALT": "x"})
    assert in_file.cleaning.email_salt == "sel"
    assert "phone" in config.cleaning.pii_properties
    pii = parse_config({**document, "cleaning": {"pii_properties": ["Loyalty_Card"]}}, env={})
    assert pii.cleaning.pii_properties == frozenset({"loyalty_card"})
    with pytest.raises(ConfigError, match=r"cleaning\.pii_properties must be a list of field names"):
        parse_config({**document, "cleaning": {"pii_properties": "phone"}}, env={})


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  big: {feature: spend, '>=': 100}\nstream:\n  allowed_lateness: 30s\n")
    config = load_config(path)
    assert isinstance(config, JobConfig)
    assert config.stream.allowed_lateness_ms == 30_000
    assert config.stream.max_out_of_orderness_ms == 5_000  # default kept
    # No 'cleaning' section: the cleaning defaults apply.
    assert (config.cleaning.max_future_ms, config.cleaning.max_record_bytes) == (DAY, 64 * 1024)


def test_load_config_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  big: {feature: spend, '>=': 100}\nstream: [1, 2\ncleaning: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "is not valid YAML at line 4" in message


def test_load_config_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  big: {feature: spend, '>=': 100}\nstream:\n  watermark: 5s\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in 'stream': watermark"):
        load_config(path)


def test_load_config_rule_error_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "segments:\n  churned: {since: last.purchase, at_least: 90 days}\n")
    with pytest.raises(ConfigError, match="rule 'churned': at_least: bad duration '90 days'"):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_default_config() -> None:
    config = load_config(None)
    assert {"cart_abandoner", "recent_buyer"} <= set(config.rules.segments)
    assert config.rules.version == "default-2"
    assert config.rules.segments["recent_buyer"] == Since("last.purchase", None, 30 * DAY)
    cart = config.rules.segments["cart_abandoner"]
    assert isinstance(cart, AllOf)
    assert set(cart.parts) == {
        Since("last.add_to_cart", 30 * MINUTE, None),
        Since("last.add_to_cart", None, DAY),
        After("last.add_to_cart", "last.purchase"),
    }
    assert config.stream.dedup_horizon_ms == DAY and config.stream.allowed_lateness_ms == 0


# --- evaluation and next_flip ----------------------------------------------------------------


def test_since_at_least() -> None:
    rule = Since("last.add_to_cart", 30 * MINUTE, None)
    seen = features(add_to_cart=T0)
    assert rule.evaluate(seen, T0) == (False, T0 + 30 * MINUTE)
    assert rule.evaluate(seen, T0 + 30 * MINUTE - 1) == (False, T0 + 30 * MINUTE)
    assert rule.evaluate(seen, T0 + 30 * MINUTE) == (True, None)
    assert rule.evaluate(seen, T0 + 400 * DAY) == (True, None)
    assert rule.evaluate(Features(), T0) == (False, None)


def test_since_at_most() -> None:
    rule = Since("last.purchase", None, DAY)
    seen = features(purchase=T0)
    assert rule.evaluate(seen, T0) == (True, T0 + DAY + 1)
    assert rule.evaluate(seen, T0 + DAY) == (True, T0 + DAY + 1)
    assert rule.evaluate(seen, T0 + DAY + 1) == (False, None)
    assert rule.evaluate(Features(), T0) == (False, None)


def test_since_window() -> None:
    rule = Since("last.add_to_cart", 30 * MINUTE, DAY)
    seen = features(add_to_cart=T0)
    assert rule.evaluate(seen, T0 + MINUTE) == (False, T0 + 30 * MINUTE)
    assert rule.evaluate(seen, T0 + HOUR) == (True, T0 + DAY + 1)
    assert rule.evaluate(seen, T0 + 2 * DAY) == (False, None)


def test_since_first_and_last_seen() -> None:
    history = Features(first_seen=T0, last_seen=T0 + 10 * DAY)
    assert Since("first_seen", 7 * DAY, None).evaluate(history, T0 + 10 * DAY) == (True, None)
    assert Since("last_seen", 7 * DAY, None).evaluate(history, T0 + 10 * DAY) == (False, T0 + 17 * DAY)


@pytest.mark.parametrize(
    ("cart", "purchase", "holds"),
    [
        (T0, None, True),
        (T0 + 1, T0, True),
        (T0, T0, False),
        (T0, T0 + 1, False),
        (None, T0, False),
        (None, None, False),
    ],
)
def test_after_than(cart: int | None, purchase: int | None, holds: bool) -> None:
    last = {k: v for k, v in (("add_to_cart", cart), ("purchase", purchase)) if v is not None}
    assert After("last.add_to_cart", "last.purchase").evaluate(Features(last_at=last), T0 + DAY) == (holds, None)


@pytest.mark.parametrize("op", [">", ">=", "<", "<=", "==", "!="])
@pytest.mark.parametrize("spend", [99.0, 100.0, 101.0])
def test_comparisons(op: str, spend: float) -> None:
    expected = eval(f"{spend} {op} 100.0")
    rule = one_rule({"feature": "spend", op: 100})
    assert rule.evaluate(Features(spend=spend), T0) == (expected, None)


def test_count_feature_comparison() -> None:
    rule = one_rule({"feature": "count.page_view", ">=": 2})
    assert rule.evaluate(Features(counts={"page_view": 2}), T0) == (True, None)
    assert rule.evaluate(Features(counts={"purchase": 5}), T0) == (False, None)


def test_all_any_not_values_and_flips() -> None:
    soon = Since("last.add_to_cart", 30 * MINUTE, None)  # false until T0+30m
    recent = Since("last.purchase", None, HOUR)  # true until T0+1h
    seen = features(add_to_cart=T0, purchase=T0)
    now = T0 + MINUTE
    assert AllOf((soon, recent)).evaluate(seen, now) == (False, T0 + 30 * MINUTE)
    assert AnyOf((soon, recent)).evaluate(seen, now) == (True, T0 + 30 * MINUTE)
    assert Not(recent).evaluate(seen, now) == (False, T0 + HOUR + 1)
    assert Not(soon).evaluate(seen, now) == (True, T0 + 30 * MINUTE)
    later = T0 + 2 * HOUR
    assert AllOf((soon, Not(recent))).evaluate(seen, later) == (True, None)
    assert AnyOf((recent, Compare("spend", ">", 0))).evaluate(seen, later) == (False, None)
    # A false part no timer can change keeps `all` false, a true one keeps `any` true: no wake needed.
    never = Compare("spend", ">", 0)  # false, and only an event can change it
    assert AllOf((soon, never)).evaluate(seen, now) == (False, None)
    assert AnyOf((soon, Not(never))).evaluate(seen, now) == (True, None)
    assert Not(AllOf((soon, never))).evaluate(seen, now) == (True, None)


def at(features: Features, now: int) -> FeatureView:
    """The default profile's view of ``features`` (no windowed activity) at ``now``."""
    return ProfileModel(ProfileConfig()).view(ProfileState(features=features), now)


def test_ruleset_evaluate_members_and_wake() -> None:
    rules = load_config(None).rules
    cart_only = features(add_to_cart=T0)
    assert rules.evaluate(at(cart_only, T0), T0) == (set(), T0 + 30 * MINUTE)
    assert rules.evaluate(at(cart_only, T0 + 30 * MINUTE), T0 + 30 * MINUTE) == ({"cart_abandoner"}, T0 + DAY + 1)
    assert rules.evaluate(at(cart_only, T0 + DAY + 1), T0 + DAY + 1) == (set(), None)
    bought = Features(last_at={"add_to_cart": T0, "purchase": T0 + MINUTE}, spend=600.0)
    members, wake = rules.evaluate(at(bought, T0 + HOUR), T0 + HOUR)
    assert members == {"recent_buyer", "big_spender"}
    # cart_abandoner is out for good (the purchase came after the cart, which no timer changes): the
    # next wake is recent_buyer's expiry, not the cart's 24 h bound.
    assert wake == T0 + MINUTE + 30 * DAY + 1
    assert rules.evaluate(at(bought, T0 + 2 * DAY), T0 + 2 * DAY) == (
        {"recent_buyer", "big_spender"},
        T0 + MINUTE + 30 * DAY + 1,
    )
    assert rules.decided_by("big_spender", at(bought, T0)) == {"spend": 600.0}
    assert rules.decided_by("recent_buyer", at(bought, T0)) == {}


def test_ruleset_empty_wake_without_timed_rules() -> None:
    rules = parse_rules({"segments": {"big": {"feature": "spend", ">=": 1}}})
    assert rules.evaluate(Features(spend=2.0), T0) == ({"big"}, None)
    assert rules.evaluate(Features(), T0) == (set(), None)


# --- rules_version ---------------------------------------------------------------------------

SEGMENTS = {
    "recent_buyer": {"since": "last.purchase", "at_most": "30d"},
    "big": {"feature": "spend", ">=": 500},
}


def test_rules_version_from_document() -> None:
    assert parse_rules({"version": "2024-05", "segments": SEGMENTS}).version == "2024-05"
    assert parse_rules({"version": 3, "segments": SEGMENTS}).version == "3"


def test_rules_version_hash_is_stable() -> None:
    version = parse_rules({"segments": SEGMENTS}).version
    assert len(version) == 12 and int(version, 16) >= 0
    assert parse_rules({"segments": dict(SEGMENTS)}).version == version
    reordered = dict(reversed(list(SEGMENTS.items())))
    assert parse_rules({"segments": reordered}).version == version


@pytest.mark.parametrize(
    "changed",
    [
        {**SEGMENTS, "big": {"feature": "spend", ">=": 501}},
        {**SEGMENTS, "recent_buyer": {"since": "last.purchase", "at_most": "31d"}},
        {"recent_buyer": SEGMENTS["recent_buyer"]},
        {**SEGMENTS, "loyal": {"feature": "orders", ">=": 3}},
    ],
)
def test_rules_version_hash_changes_with_rules(changed: dict[str, Any]) -> None:
    assert parse_rules({"segments": changed}).version != parse_rules({"segments": SEGMENTS}).version


def test_ruleset_is_plain_value() -> None:
    rules = parse_rules({"version": "v", "segments": SEGMENTS})
    assert isinstance(rules, RuleSet)
    assert rules == parse_rules({"version": "v", "segments": SEGMENTS})
