"""The online models inside the job: labels in event time, scores in profiles and rules, snapshots."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from online_models import TASKS, Example, ModelRegistry, Models, dump_model, read_header
from pipelines.cli import main
from pipelines.metrics import METRICS
from pipelines.model_publisher import KEY_ENV, KEY_FILE_ENV, ModelPublisher
from tests.conftest import NOW_MS, read_jsonl
from tests.forged_snapshots import RunsCode, snapshot_of
from tests.test_live_stream import all_delivered, stream_source, wait_for
from transforms.config import ConfigError, parse_config
from transforms.customer import CustomerLogic
from transforms.events import Event
from transforms.sample_stream import sample_lines

DAY = 86_400_000
DEFAULT_CONFIG = Path(__file__).parents[1] / "transforms" / "default_config.yaml"
T0 = 1_717_200_000_000 // DAY * DAY  # a midnight
BUYER = {"buyer": {"feature": "orders", ">=": 1}}


def logic_for(extra: dict[str, Any] | None = None, segments: dict[str, Any] | None = None) -> CustomerLogic:
    document = {"segments": segments or BUYER, **(extra or {})}
    return parse_config(document, env={}).logic()


def purchase(n: int, ts: int, amount: float = 20.0) -> Event:
    return Event(f"p{n}", "purchase", ts, user_id="u1", order_id=f"o{n}", amount=amount, currency="EUR")


def view(n: int, ts: int) -> Event:
    return Event(f"v{n}", "page_view", ts, user_id="u1")


def test_a_purchase_labels_earlier_snapshots_and_the_timer_labels_the_rest() -> None:
    logic = logic_for({"models": {"refresh": "1d"}})
    models = logic.models
    assert models is not None
    state = logic.new_state("user:u1")
    logic.advance(state, [view(1, T0 + 1000)], T0 + 1000)
    assert state.labels is not None and len(state.labels["propensity"]) == len(state.labels["churn"]) == 1
    logic.advance(state, [view(2, T0 + 2000)], T0 + 2000)  # the same day: no second snapshot
    assert len(state.labels["propensity"]) == 1
    # Silent days 1 and 2 were snapshotted by the daily refresh; the purchase labels all three days'
    # propensity snapshots (positive) and the week's churn snapshot (negative).
    logic.advance(state, [purchase(1, T0 + 3 * DAY)], T0 + 3 * DAY)
    assert [e.task for e in models.waiting].count("propensity") == 3 and models.flush() == 4  # learn_batch: 32
    assert {task: m.n_updates for task, m in models.models.items()} == {"propensity": 3, "churn": 1, "ltv": 0}
    assert models.validation["propensity"].pairs[-1][1] is True and models.validation["churn"].pairs[-1][1] is False
    # The purchase day's snapshot waits 14 days for propensity, then the timer labels it negative.
    step = logic.advance(state, [], T0 + 3 * DAY + 14 * DAY + 1)
    assert len(models.waiting) == 1 and models.flush() == 1
    assert models.models["propensity"].n_updates == 4 and models.validation["propensity"].pairs[-1][1] is False
    assert step.touched  # the scores moved on: the profile is written again


def test_the_snapshot_of_a_millisecond_sees_all_its_events() -> None:
    logic = logic_for()
    state = logic.new_state("user:u1")
    lines = [purchase(n, T0 + 1000, amount=10.0 * n) for n in (1, 2, 3)]  # one invoice, three lines
    logic.advance(state, [purchase(0, T0 - 20 * DAY)], T0 - 20 * DAY)
    logic.advance(state, lines, T0 + 1000)
    assert state.labels is not None
    (_, snapshot), *_ = (s for s in state.labels["propensity"].snapshots if s[0] == T0 + 1000)
    assert snapshot["spend"] == 20.0 + 10.0 + 20.0 + 30.0 and snapshot["orders"] == 4.0


def test_a_forget_within_a_millisecond_leaves_the_models_nothing_from_before_it() -> None:
    logic = logic_for()
    state = logic.new_state("user:u1")
    # Ids order them within the millisecond: the purchase, the forget, then a new customer's view.
    events = [purchase(1, T0), Event("p2-forget", "forget", T0, user_id="u1"), view(3, T0)]
    logic.advance(state, events, T0)
    assert state.labels is not None
    assert state.labels["propensity"].purchases == {} and state.labels["churn"].purchases == {}
    ((_, snapshot),) = state.labels["propensity"].snapshots
    assert snapshot["orders"] == 0.0 and snapshot["count.page_view"] == 1.0


def test_pending_snapshots_stay_bounded_per_customer() -> None:
    logic = logic_for()
    state = logic.new_state("user:u1")
    for day in range(200):  # an event every day, never a purchase
        logic.advance(state, [view(day, T0 + day * DAY + 5)], T0 + day * DAY + 5)
        assert state.labels is not None
        assert len(state.labels["propensity"]) <= 15 and len(state.labels["churn"]) <= 13


def test_profiles_carry_scores_that_rise_in_silence() -> None:
    logic = logic_for()
    models = logic.models
    assert models is not None
    for n in range(60):  # teach churn: silence predicts churn (snapshots on the silent days too)
        quiet = logic.new_state(f"user:q{n}")
        logic.advance(quiet, [view(n, T0)], T0)
        logic.advance(quiet, [], T0 + 200 * DAY)
        busy = logic.new_state(f"user:b{n}")
        logic.advance(busy, [purchase(day, T0 + day * DAY) for day in range(0, 200, 3)], T0 + 200 * DAY)
    state = logic.new_state("user:u1")
    logic.advance(state, [purchase(1, T0 + 200 * DAY)], T0 + 200 * DAY)
    soon = logic.profile(state)["churn_score"]
    step = logic.advance(state, [], T0 + 260 * DAY)  # 60 silent days: refresh timers fired
    later = logic.profile(state)["churn_score"]
    assert 0.0 <= soon < later <= 1.0 and step.touched
    assert 0.0 <= logic.profile(state)["propensity_score"] <= 1.0


def spy_on_learning(logic: CustomerLogic) -> list[Example]:
    """The examples the models learn from now on, in order."""
    models = logic.models
    assert models is not None
    learnt: list[Example] = []
    learn = models.learn

    def recording(examples: Iterable[Example]) -> int:
        examples = list(examples)
        learnt.extend(examples)
        return learn(examples)

    models.learn = recording  # type: ignore[method-assign]
    return learnt


def test_a_silent_customer_is_snapshotted_every_horizon_and_revisited_as_the_silence_doubles() -> None:
    """Silent, a customer is snapshotted at every propensity horizon (+1 ms) of silence, with its
    features as of then; but its timer fires only at revisits, after 1, 2, 4, 8, ... such steps
    (which take the snapshots since the last one and recompute the scores), and when a label falls
    due."""
    logic = logic_for()
    learnt = spy_on_learning(logic)
    state = logic.new_state("user:u1")
    for day in range(5):  # five active days, no purchase: five propensity snapshots
        logic.advance(state, [view(day, T0 + day * DAY + 5)], T0 + day * DAY + 5)
    last, silence, end = T0 + 4 * DAY + 5, 14 * DAY + 1, T0 + 300 * DAY
    timers = []
    while state.model_wake is not None and state.model_wake <= end:
        timers.append(state.model_wake)
        logic.advance(state, [], state.model_wake)
    revisits = [last + silence * 2**k for k in range(5)]  # up to 16 steps of silence (224 days)
    assert revisits[-1] <= end < last + silence * 32 and set(revisits) <= set(timers)
    # a revisit's snapshot falls due a step later (3, 5, 9, 17 steps): the other silent points get no timer
    assert not set(timers) & {last + silence * j for j in (6, 7, *range(10, 16))}
    propensity = [e for e in learnt if e.task == "propensity"]
    assert all(e.label is False for e in learnt if e.task == "propensity")
    silent = [last + silence * j for j in range(1, 17)]  # up to the last revisit; the last falls due at 17
    assert sorted(e.snapshot_ts for e in propensity) == [T0 + day * DAY + 5 for day in range(5)] + silent
    for example in propensity[5:]:  # each as of its own time, not the revisit's
        assert example.features["days_since_seen"] == pytest.approx((example.snapshot_ts - last) / DAY)
    churn = [e for e in learnt if e.task == "churn"]
    assert churn and all(e.label is True and e.label_ts == e.snapshot_ts + 90 * DAY for e in churn)
    # The timers: the revisits and the times labels fall due (of the active days' snapshots, of the
    # revisits' and of the churn snapshots), nothing else. A snapshot taken at a revisit after its
    # churn horizon had passed is labelled there.
    dues = {T0 + day * DAY + 5 + silence for day in range(4)} | {p + silence for p in revisits[1:]}
    assert set(revisits) | dues <= set(timers) <= set(revisits) | dues | {e.label_ts + 1 for e in churn}


def test_an_event_after_silence_first_takes_the_silent_snapshots_before_it() -> None:
    """A purchase three and a half propensity horizons into a silence labels the snapshot of the third
    (no revisit came since the second) positive: it is taken, as of its time, before the purchase."""
    logic = logic_for()
    learnt = spy_on_learning(logic)
    state = logic.new_state("user:u1")
    logic.advance(state, [view(1, T0)], T0)
    silence = 14 * DAY + 1
    back = T0 + 3 * silence + 7 * DAY
    logic.advance(state, [purchase(1, back)], back)
    positive = [e for e in learnt if e.task == "propensity" and e.label]
    assert [(e.snapshot_ts, e.label_ts) for e in positive] == [(T0 + 3 * silence, back)]
    assert positive[0].features["days_since_seen"] == pytest.approx(3 * silence / DAY)
    churn = [e for e in learnt if e.task == "churn"]  # came back: every churn snapshot negative
    assert {e.snapshot_ts for e in churn} == {T0, *(T0 + j * silence for j in (1, 2, 3))}
    assert not any(e.label for e in churn)


@pytest.mark.parametrize("refresh", [None, "1d"])
def test_a_rule_on_a_score_changes_with_reason_model(refresh: str | None) -> None:
    extra = {"models": {"refresh": refresh}} if refresh else {}
    logic = logic_for(extra, segments={"at_risk": {"feature": "churn_score", ">": 0.5}})
    models = logic.models
    assert models is not None
    silent, active = {"days_since_seen": 50.0, "tenure_days": 50.0}, {"days_since_seen": 0.0, "tenure_days": 0.0}
    models.learn([Example("churn", x, y, 0, 0) for _ in range(3000) for x, y in ((silent, True), (active, False))])
    state = logic.new_state("user:u1")
    first = logic.advance(state, [view(1, T0)], T0)
    assert first.changes == []
    step = logic.advance(state, [], T0 + 40 * DAY)  # no event: a model timer re-evaluates the rule
    assert [(c.segment, c.change, c.reason) for c in step.changes] == [("at_risk", "entered", "model")]
    change = step.changes[0]
    assert change.scores["churn_score"] > 0.5
    if refresh:  # at a daily refresh boundary
        assert change.event_time % DAY == 0
    else:  # when a snapshot fell due: every propensity horizon (and 1 ms) of silence
        assert (change.event_time - T0) % (14 * DAY + 1) == 0


def test_scores_in_rules_need_the_models() -> None:
    with pytest.raises(ConfigError, match=r"churn_score.*models\.enabled"):
        parse_config({"segments": {"r": {"feature": "churn_score", ">": 0.5}}, "models": {"enabled": False}}, env={})
    with pytest.raises(ConfigError, match="unknown model 'svm'"):
        parse_config({"segments": BUYER, "models": {"name": "svm"}}, env={})
    with pytest.raises(ConfigError, match=r"models\.params"):
        parse_config({"segments": BUYER, "models": {"params": {"nope": 1}}}, env={})
    with pytest.raises(ConfigError, match="churn_days must be at least"):
        parse_config({"segments": BUYER, "models": {"churn_days": 2}}, env={})
    for bad in (-0.1, 2, "0.1", True):
        with pytest.raises(ConfigError, match=r"models\.score_write_delta must be a number from 0 to 1"):
            parse_config({"segments": BUYER, "models": {"score_write_delta": bad}}, env={})
    for key, bad in (("learn_batch", 0), ("learn_batch", 1.5), ("learn_batch", None), ("validation_window", None)):
        with pytest.raises(ConfigError, match=rf"models\.{key} must be a positive integer"):
            parse_config({"segments": BUYER, "models": {key: bad}}, env={})
    with pytest.raises(ConfigError, match=r"models\.learn_wait must be positive"):
        parse_config({"segments": BUYER, "models": {"learn_wait": "0s"}}, env={})
    assert parse_config({"segments": BUYER, "models": {"enabled": False}}, env={}).logic().models is None


def test_a_silent_snapshot_taken_late_sees_the_windows_of_its_own_time() -> None:
    """With a 90-day window, the snapshot at six steps of silence (84 days, taken at the revisit at
    eight) still counts the three active days: the window data it needs was kept."""
    logic = logic_for({"windows": {"90d": {"size": "90d", "slide": "1d"}}})
    learnt = spy_on_learning(logic)
    state = logic.new_state("user:u1")
    for day in range(3):
        logic.advance(state, [view(day, T0 + day * DAY)], T0 + day * DAY)
    while state.model_wake is not None and state.model_wake <= T0 + 130 * DAY:
        logic.advance(state, [], state.model_wake)
    silence, last = 14 * DAY + 1, T0 + 2 * DAY
    at = {e.snapshot_ts: e.features for e in learnt if e.task == "propensity"}
    assert at[last + 6 * silence]["window.events"] == 3.0
    assert at[last + 7 * silence]["window.events"] == 0.0  # 100 days: all slid out


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_a_revisit_writes_the_profile_again_when_a_score_moved_by_the_delta(delta: float) -> None:
    logic = logic_for({"models": {"score_write_delta": delta}})
    state = logic.new_state("user:u1")
    logic.advance(state, [view(1, T0)], T0)
    logic.profile(state)  # written once: its scores are the ones readers have
    revisit = T0 + 14 * DAY + 1
    step = logic.advance(state, [], revisit)
    assert step.touched is (delta == 0.0)  # any move, or none can be large enough
    expected = logic.model.scores(state.profile, revisit)
    assert {name: logic.profile(state)[name] for name in expected} == expected


def test_an_identity_merge_merges_pending_labels() -> None:
    logic = logic_for()
    into, other = logic.new_state("user:u1"), logic.new_state("anon:a1")
    logic.advance(into, [view(1, T0)], T0)
    logic.advance(other, [Event("a", "page_view", T0 + 2 * DAY, anonymous_id="a1")], T0 + 2 * DAY)
    logic.absorb(into, other)
    assert into.labels is not None
    assert [ts for ts, _ in into.labels["propensity"].snapshots] == [T0, T0 + 2 * DAY]
    assert into.model_wake == T0 + 14 * DAY + 1  # the first snapshot falls due


def run(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["run", "--engine", "core", "--no-progress", "--now", str(NOW_MS), *args])
    assert result.exit_code == 0, result.output
    return result


def days_later(line: str, days: int = 20) -> str:
    """A sample line moved ``days`` later in event time under a new event id (dirty lines as they are)."""
    try:
        record = json.loads(line)
        record["ts"] += days * DAY
        record["event_id"] = f"later-{record['event_id']}"
    except (ValueError, KeyError, TypeError):
        return line
    return json.dumps(record) + "\n"


def test_the_job_publishes_versioned_models_and_resume_continues_them(
    sample_file: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    args = ["--source", str(sample_file), "--redis-url", redis_url, "--state-dir", str(tmp_path / "state"), "--resume",
            "--summary-out", str(tmp_path / "summary.json"), "--profiles-out", str(tmp_path / "p.jsonl")]  # fmt: skip
    run(*args)
    first = json.loads((tmp_path / "summary.json").read_text())["models"]
    assert first["propensity"]["n_updates"] > 0 and first["propensity"]["validation"]["n"] > 0
    client = redis.Redis.from_url(redis_url)
    registry = ModelRegistry(client, "segstream", MODEL_KEY.encode())
    assert registry.latest_version("churn") is not None
    assert registry.load("propensity").n_updates == first["propensity"]["n_updates"]
    scores = [p["propensity_score"] for p in read_jsonl(tmp_path / "p.jsonl")]
    assert all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1
    later = sample_file.with_name("later.jsonl")
    later.write_text("".join(map(days_later, sample_file.read_text().splitlines(keepends=True))))
    run(*[str(later) if a == str(sample_file) else a for a in args])
    second = json.loads((tmp_path / "summary.json").read_text())["models"]
    assert second["propensity"]["n_updates"] > first["propensity"]["n_updates"]  # continued, not restarted


def test_learning_in_runs_leaves_the_final_profiles_and_the_validation_as_learning_each_at_once(
    sample_file: Path, redis_url: str, tmp_path: Path
) -> None:
    outputs = {}
    for batch in (1, 32):
        config = tmp_path / f"learn_batch_{batch}.yaml"
        config.write_text(DEFAULT_CONFIG.read_text() + f"\nmodels: {{learn_batch: {batch}, learn_wait: 30d}}\n")
        out = tmp_path / str(batch)
        run("--source", str(sample_file), "--redis-url", redis_url, "--config", str(config),
            "--profiles-out", str(out / "profiles.jsonl"), "--summary-out", str(out / "summary.json"),
            "--as-of", str(max_ts(sample_file) + 40 * DAY))  # fmt: skip
        summary = json.loads((out / "summary.json").read_text())["models"]
        outputs[batch] = (read_jsonl(out / "profiles.jsonl"), summary)
    profiles, summary = outputs[32]
    assert sum(task["n_updates"] for task in summary.values()) > 64  # learnt in runs of 32
    assert len({p["propensity_score"] for p in profiles}) > 1
    assert outputs[1] == outputs[32]


def test_horizon_options_reach_the_models(sample_file: Path, redis_url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "--source", str(sample_file), "--engine", "core", "--redis-url", redis_url, "--churn-days", "3"]
    )
    assert result.exit_code == 2 and "models.churn_snapshot_every" in result.output
    default = tmp_path / "default.json"
    run("--source", str(sample_file), "--redis-url", redis_url, "--summary-out", str(default))
    assert json.loads(default.read_text())["models"]["churn"]["validation"]["positive_rate"] in (0.0, None)
    config = tmp_path / "c.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + "\nmodels: {churn_snapshot_every: 1d}\n")
    short = tmp_path / "short.json"
    run("--source", str(sample_file), "--redis-url", redis_url, "--config", str(config), "--churn-days", "1",
        "--summary-out", str(short), "--as-of", str(max_ts(sample_file) + 3 * DAY))  # fmt: skip
    assert json.loads(short.read_text())["models"]["churn"]["validation"]["positive_rate"] > 0  # 1 day: churned


# --- model snapshots are signed: what anyone who can write Redis puts there is never unpickled ------

MODEL_KEY = "model-key-of-the-tests-0123"


@pytest.fixture(autouse=True)
def no_model_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key from the environment the tests run in: each test sets the one it means."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def taught(n: int = 40) -> Models:
    models = Models()
    tasks = list(models.models)
    models.learn([Example(task, {"orders": float(i % 3)}, i % 2 == 0, 0, 0) for i in range(n) for task in tasks])
    models.flush()
    return models


def updates(models: Models) -> dict[str, int]:
    return {task: model.n_updates for task, model in models.models.items()}


def test_a_restarted_job_continues_from_its_signed_snapshots(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    ModelPublisher(redis_url, "signed", taught()).publish()
    fresh = Models()
    assert ModelPublisher(redis_url, "signed", fresh).restore() is True
    assert updates(fresh) == dict.fromkeys(fresh.models, 40)


def _forged(marker: Path) -> bytes:
    """A snapshot that claims to be the job's model, its payload code, its MAC a genuine one's."""
    genuine = read_header(dump_model(taught().models["churn"], mac_key=MODEL_KEY.encode()))
    return snapshot_of({**genuine, "n_updates": 10**6}, pickle.dumps(RunsCode(marker)))


def _bit_flipped(marker: Path) -> bytes:
    data = bytearray(dump_model(taught().models["churn"], mac_key=MODEL_KEY.encode()))
    data[-5] ^= 0x10
    return bytes(data)


def _unsigned(marker: Path) -> bytes:
    header = {k: v for k, v in read_header(_forged(marker)).items() if k != "mac"}
    return snapshot_of(header, pickle.dumps(RunsCode(marker)))


FAULTS: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "forged": (_forged, "signature does not match"),
    "bit-flipped": (_bit_flipped, "signature does not match"),
    "unsigned": (_unsigned, "not signed"),
    "another key": (lambda marker: dump_model(RunsCode(marker), mac_key=b"an-attackers-own-key-42"), "does not match"),
    "not a snapshot": (lambda marker: b"\x80\x04garbage" + str(marker).encode(), "bad magic"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_restore_refuses_a_bad_snapshot_with_one_line_and_starts_fresh(
    fault: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    client = redis.Redis.from_url(redis_url)
    marker = tmp_path / "ran"
    make, refusal = FAULTS[fault]
    for task in TASKS:
        client.set(f"segstream:model:{task}:v1", make(marker))
        client.set(f"segstream:model:{task}:latest", b"1")
    fresh = Models()
    with caplog.at_level(logging.WARNING, logger="segstream"):
        assert ModelPublisher(redis_url, "segstream", fresh).restore() is False
    [record] = caplog.records
    message = record.getMessage()
    assert refusal in message and "segstream:model:" in message and "fresh models" in message
    assert record.exc_info is None and "\n" not in message and str(marker) not in message
    assert not marker.exists()
    assert updates(fresh) == dict.fromkeys(fresh.models, 0)


def test_a_latest_that_is_not_a_version_is_refused_with_one_line(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    client = redis.Redis.from_url(redis_url)
    for task in TASKS:
        client.set(f"segstream:model:{task}:latest", b"../../v1 with a payload")
    with caplog.at_level(logging.WARNING, logger="segstream"):
        assert ModelPublisher(redis_url, "segstream", Models()).restore() is False
    [record] = caplog.records
    assert "does not hold a version number" in record.getMessage() and "payload" not in record.getMessage()


def test_without_a_key_no_snapshot_is_published_or_loaded(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, MODEL_KEY)
    ModelPublisher(redis_url, "nokey", taught()).publish()  # a genuine snapshot is there
    monkeypatch.delenv(KEY_ENV)
    ModelPublisher(redis_url, "nokey", taught(10)).publish()
    client = redis.Redis.from_url(redis_url)
    assert client.get("nokey:model:churn:latest") == b"1" and client.get("nokey:model:churn:v2") is None
    assert METRICS.models is not None and METRICS.models["churn"]["n_updates"] == 10  # the figures still go out
    fresh = Models()
    with caplog.at_level(logging.WARNING, logger="segstream"):
        assert ModelPublisher(redis_url, "nokey", fresh).restore() is False
    [record] = caplog.records
    assert "not loaded without a key" in record.getMessage() and KEY_FILE_ENV in record.getMessage()
    assert updates(fresh) == dict.fromkeys(fresh.models, 0)


def test_a_live_job_over_forged_snapshots_continues_from_fresh_models(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    marker = tmp_path / "ran"
    for task in TASKS:  # what anyone who can write Redis could leave for the job's next start
        client.set(f"segstream:model:{task}:v1", _forged(marker))
        client.set(f"segstream:model:{task}:latest", b"1")
    for line in sample_lines(customers=40):
        client.xadd("clicks", {"event": line})
    out = tmp_path / "live"
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_FILE_ENV)}
    key_file = tmp_path / "model.key"
    key_file.write_text(MODEL_KEY + "\n")
    job = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--source", stream_source(redis_url, "clicks", "?group=jobs"),
         "--redis-url", redis_url, "--now", str(NOW_MS), "--summary-out", str(out / "summary.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**env, KEY_FILE_ENV: str(key_file)},
    )  # fmt: skip
    try:
        wait_for(lambda: all_delivered(client, "clicks", "jobs"))
        job.send_signal(signal.SIGINT)  # drains, publishes and exits 0
        _, stderr = job.communicate(timeout=180)
    finally:
        job.kill()
    assert job.returncode == 0, stderr
    refused = [line for line in stderr.splitlines() if "model snapshot" in line]
    assert len(refused) == 1 and "signature does not match" in refused[0], stderr
    assert "Traceback" not in stderr and not marker.exists()
    learnt = json.loads((out / "summary.json").read_text())["models"]["propensity"]["n_updates"]
    assert 0 < learnt < 10**6  # from a fresh model, not from the forged snapshot's claim
    registry = ModelRegistry(client, "segstream", MODEL_KEY.encode())
    assert registry.latest_version("propensity") == 2  # after the forged v1, never over it
    assert registry.load("propensity").n_updates == learnt


def max_ts(path: Path) -> int:
    stamps = []
    for line in path.read_text().splitlines():
        try:
            stamps.append(int(json.loads(line)["ts"]))
        except (ValueError, KeyError, TypeError):
            continue
    return max(stamps)


def test_scores_beyond_the_silence_the_labels_covered_are_counted_and_logged(
    sample_file: Path, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    summary_path = tmp_path / "summary.json"
    args = ["--source", str(sample_file), "--redis-url", redis_url, "--summary-out", str(summary_path)]
    with caplog.at_level(logging.WARNING, logger="segstream"):
        run(*args, "--as-of", str(max_ts(sample_file) + 400 * DAY))  # final profiles after 400 silent days
    summary = json.loads(summary_path.read_text())
    assert set(summary["models"]) == {"churn", "propensity", "ltv"}
    for figures in summary["models"].values():
        silence = figures["silence"]
        assert 0 < silence["covered_days"] < 400
        # every final profile is scored beyond what the labels covered
        assert summary["customers"] <= silence["scored_beyond"] <= silence["scored"]
    warnings = [r.getMessage() for r in caplog.records if "longer silence" in r.getMessage()]
    assert len(warnings) == 3 and all("progressive validation cannot see them" in w for w in warnings)
