"""The stream generator with ground truth (transforms/generator.py) and `segstream generate`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.sources import decode_json
from tests.conftest import NOW_MS, read_jsonl
from tests.test_end_to_end import balanced, outputs, run_cli
from transforms.cleaning import Cleaner, CleaningConfig
from transforms.dead_letters import DeadLetter, Reason
from transforms.events import Event
from transforms.generator import (
    ANON_PLACEHOLDERS,
    EMAIL_PLACEHOLDERS,
    JUNK_EMAILS,
    USER_PLACEHOLDERS,
    GeneratorConfig,
    StreamGenerator,
    truth_for_salt,
)
from transforms.identifiers import hash_email, normalize_email, normalize_identifier

SALT = "test-salt"
# Rates well above the defaults, so that a small stream measures them.
CONFIG = GeneratorConfig(
    persons=400,
    days=7,
    seed=11,
    shared_device_share=0.1,
    placeholder_rate=0.04,
    duplicate_rate=0.05,
    late_rate=0.05,
    dirty_rate=0.02,
)


def generate(config: GeneratorConfig) -> tuple[list[str], dict[str, Any]]:
    generator = StreamGenerator(config)
    lines = list(generator.lines())
    return lines, generator.truth()


@pytest.fixture(scope="module")
def stream() -> tuple[list[str], dict[str, Any]]:
    return generate(CONFIG)


@pytest.fixture(scope="module")
def cleaned(stream: tuple[list[str], dict[str, Any]]) -> list[Event | DeadLetter]:
    """Every line through the job's decoding and cleaning."""
    cleaner = Cleaner(CleaningConfig(email_salt=SALT))
    results: list[Event | DeadLetter] = []
    for number, line in enumerate(stream[0], start=1):
        raw = decode_json(line.encode(), "gen", str(number), 65536)
        if raw.error is not None:
            results.append(cleaner.dead_letter(raw.payload, raw.error, "gen", str(number)))
        else:
            results.append(cleaner.clean(raw.payload, "gen", str(number), NOW_MS))
    return results


def near(measured: float, expected: float, tolerance: float = 0.3) -> bool:
    return abs(measured - expected) <= tolerance * expected


def test_the_placeholders_are_what_cleaning_drops() -> None:
    assert all(normalize_identifier(value) is None for value in ANON_PLACEHOLDERS + USER_PLACEHOLDERS)
    assert all(normalize_email(value) is None for value in EMAIL_PLACEHOLDERS)
    assert all(normalize_email(value) is None for value in JUNK_EMAILS)  # placeholder addresses


def test_a_seed_gives_the_same_stream_and_truth_another_seed_another() -> None:
    small = GeneratorConfig(persons=40, days=3, seed=5)
    first, second = generate(small), generate(small)
    assert first == second
    other_lines, _ = generate(GeneratorConfig(persons=40, days=3, seed=6))
    assert other_lines != first[0]


def test_bad_parameters_are_refused() -> None:
    for bad in ({"persons": 0}, {"days": 0}, {"late_rate": 1.5}, {"shared_device_share": -0.1}, {"start_ms": 0}):
        with pytest.raises(ValueError):
            GeneratorConfig(**bad)  # type: ignore[arg-type]


def test_every_line_is_an_event_or_the_dead_letter_the_truth_expects(
    stream: tuple[list[str], dict[str, Any]], cleaned: list[Event | DeadLetter]
) -> None:
    _, truth = stream
    letters = Counter(result.reason for result in cleaned if isinstance(result, DeadLetter))
    assert dict(letters) == truth["counts"]["expected_dead_letters"]
    assert set(letters) <= {str(reason) for reason in Reason} - {"late", "oversized"}
    assert sum(letters.values()) < 0.1 * len(cleaned)
    assert Counter(r.type for r in cleaned if isinstance(r, Event)).keys() == truth["counts"]["types"].keys()


def test_the_shares_come_out_near_their_rates(
    stream: tuple[list[str], dict[str, Any]], cleaned: list[Event | DeadLetter]
) -> None:
    lines, truth = stream
    counts = truth["counts"]
    seen: set[str] = set()
    duplicates = out_of_order = placeholders = 0
    newest = 0
    for line, result in zip(lines, cleaned, strict=True):
        record = json.loads(line) if line.endswith("}") else None
        event_id = record.get("event_id") if isinstance(record, dict) else None
        if event_id in seen:
            duplicates += 1
            continue
        if event_id is not None:
            seen.add(event_id)
        if isinstance(record, dict) and (
            any(record.get(name) in ANON_PLACEHOLDERS + USER_PLACEHOLDERS for name in ("anonymous_id", "user_id"))
            or record.get("email") in EMAIL_PLACEHOLDERS + JUNK_EMAILS
        ):
            placeholders += 1
        if isinstance(result, Event):
            out_of_order += result.ts < newest
            newest = max(newest, result.ts)
    events = counts["events"]
    assert duplicates == counts["duplicates"] and near(duplicates / events, CONFIG.duplicate_rate)
    assert placeholders == sum(counts["placeholders"].values())
    assert near(placeholders / events, CONFIG.placeholder_rate * (1 - CONFIG.dirty_rate))
    assert near(counts["late"] / events, CONFIG.late_rate)
    assert near(sum(counts["dirty"].values()) / events, CONFIG.dirty_rate)
    # Late by seconds often passes no other event; by minutes or hours it does (and dirty ones are dropped).
    assert 0.5 * counts["late"] <= out_of_order <= counts["late"]
    assert near(counts["persons_on_shared_devices"] / counts["persons"], CONFIG.shared_device_share, 0.1)


def test_the_truth_covers_every_identifier_of_the_stream(
    stream: tuple[list[str], dict[str, Any]], cleaned: list[Event | DeadLetter]
) -> None:
    _, truth = stream
    salted = truth_for_salt(truth, SALT)["identifiers"]
    persons = {f"p-{n:06d}" for n in range(CONFIG.persons)}
    for result in cleaned:
        if isinstance(result, Event):
            keys = [f"{kind}:{value}" for kind, value in result.identifiers()]
            if "device_id" in result.properties:
                keys.append(f"device_id:{result.properties['device_id']}")
            for key in keys:
                owner = salted[key]
                assert owner in persons if isinstance(owner, str) else set(owner) <= persons
    for key in truth["identifiers"]:
        kind, _, value = key.partition(":")
        normalize = normalize_email if kind == "email" else normalize_identifier
        assert normalize(value) == value, key  # no placeholder, stored normalized
    owners = {p for owner in truth["identifiers"].values() for p in ([owner] if isinstance(owner, str) else owner)}
    assert owners == persons  # every person left identifiers


def test_shared_devices_map_to_several_persons_with_different_user_ids(
    stream: tuple[list[str], dict[str, Any]], cleaned: list[Event | DeadLetter]
) -> None:
    _, truth = stream
    family = {key: value for key, value in truth["shared"].items() if value["why"] == "family_computer"}
    anonymous = [key for key in family if key.startswith("anonymous_id:")]
    assert len(anonymous) == len(truth["households"]) == truth["counts"]["shared_devices"] > 5
    for key, value in truth["shared"].items():
        assert truth["identifiers"][key] == value["persons"] and len(value["persons"]) >= 2
        assert value["why"] in ("family_computer", "junk_email")
    users: dict[str, set[str]] = {key: set() for key in anonymous}
    for result in cleaned:
        if isinstance(result, Event) and result.user_id and f"anonymous_id:{result.anonymous_id}" in users:
            users[f"anonymous_id:{result.anonymous_id}"].add(result.user_id)
    for key in anonymous:
        assert family[key]["persons"] in truth["households"]
        assert len(users[key]) >= 2  # several persons log in on it with their own user_id
        assert {truth["identifiers"][f"user_id:{user}"] for user in users[key]} <= set(family[key]["persons"])


def test_link_groups_never_cross_persons(stream: tuple[list[str], dict[str, Any]]) -> None:
    _, truth = stream
    groups = truth["linked_groups"]
    assert groups and all(len(group) >= 2 for group in groups)
    assert len({key for group in groups for key in group}) == sum(len(group) for group in groups)
    for group in groups:
        owners = {truth["identifiers"][key] for key in group}
        assert len(owners) == 1 and isinstance(owners.pop(), str)
    kinds = Counter(key.split(":")[0] for group in groups for key in group)
    assert kinds["user_id"] and kinds["email"] and kinds["device_id"] and kinds["anonymous_id"]


def test_truth_for_salt_keys_emails_as_the_job_hashes_them(stream: tuple[list[str], dict[str, Any]]) -> None:
    _, truth = stream
    salted = truth_for_salt(truth, SALT)
    clear = [key for key in truth["identifiers"] if key.startswith("email:")]
    assert clear and all(
        salted["identifiers"][f"email:{hash_email(key[6:], SALT)}"] == truth["identifiers"][key] for key in clear
    )
    assert len(salted["identifiers"]) == len(truth["identifiers"]) and salted["email_keys"] == "hmac-sha256"
    with pytest.raises(ValueError):
        truth_for_salt(salted, SALT)


def test_generate_then_run_on_core(tmp_path: Path, redis_url: str) -> None:
    runner = CliRunner()
    args = ["--persons", "150", "--days", "5", "--seed", "3", "--late-rate", "0.03"]
    events = tmp_path / "events.jsonl.gz"
    result = runner.invoke(main, ["generate", str(events), "--truth", str(tmp_path / "truth.json"), *args])
    assert result.exit_code == 0, result.output
    assert "150 persons" in result.output and len(result.output.strip().splitlines()) == 1
    first = events.read_bytes()
    again = runner.invoke(main, ["generate", str(events), "--truth", str(tmp_path / "truth.json"), *args])
    assert again.exit_code == 0 and events.read_bytes() == first  # gzip too: same seed, same bytes
    truth = json.loads((tmp_path / "truth.json").read_text())
    out = tmp_path / "out"
    summary = run_cli("--source", str(events), "--engine", "core", "--redis-url", redis_url, *outputs(out))
    assert balanced(summary) and summary["events_in"] == truth["counts"]["lines"]
    letters = {reason: n for reason, n in summary["dead_letters"].items() if reason != "late"}
    assert letters == truth["counts"]["expected_dead_letters"]
    assert summary["dead_letters"].get("late", 0) > 0
    assert len(read_jsonl(out / "profiles.jsonl")) == summary["customers"] > 0


def test_generate_refuses_bad_arguments_with_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    target = [str(tmp_path / "e.jsonl"), "--truth", str(tmp_path / "t.json")]
    for extra, message in (
        (["--persons", "0"], "--persons"),
        (["--days", "-1"], "--days"),
        (["--duplicate-rate", "1.2"], "--duplicate-rate"),
        (["--start", "2025-06-01"], "--start"),
    ):
        result = runner.invoke(main, ["generate", *target, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = runner.invoke(main, ["generate", str(blocked / "e.jsonl"), "--truth", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "cannot write" in result.output
    result = runner.invoke(main, ["generate", target[0], "--truth", target[0]])
    assert result.exit_code == 2 and "--truth" in result.output
