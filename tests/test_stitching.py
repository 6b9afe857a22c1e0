"""Identity stitching end to end on the core loop and Flink: generated data with ground truth, real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.stitched import plan_components, resolve
from tests.conftest import NOW_MS, read_jsonl, without_scores
from tests.test_end_to_end import outputs, run_cli
from transforms.cleaning import Cleaner
from transforms.config import load_config
from transforms.events import Event
from transforms.generator import GeneratorConfig, StreamGenerator, truth_for_salt
from transforms.identity import IdentityGraph
from transforms.stitch_score import score_stitching

SALT = "stitch-salt"
DEFAULT_CONFIG = Path(__file__).parents[1] / "transforms" / "default_config.yaml"


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "stitch.yaml"
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    path.write_text(text + f"\nidentity:\n  stitch: true\n{extra}", encoding="utf-8")
    return path


def _generate(tmp_path: Path, persons: int = 150) -> tuple[Path, dict]:
    # No opt-outs: a customer without consent keeps only its key identifier, so profiles cannot show its links.
    config = GeneratorConfig(persons=persons, days=5, seed=3, shared_device_share=0.1, consent_opt_out_share=0.0)
    generator = StreamGenerator(config)
    source = tmp_path / "stream.jsonl"
    source.write_text("\n".join(generator.lines()) + "\n", encoding="utf-8")
    return source, truth_for_salt(generator.truth(), SALT)


def test_stitching_matches_the_truth_and_refuses_shared_devices(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGSTREAM_EMAIL_SALT", SALT)
    source, truth = _generate(tmp_path)
    out = tmp_path / "out"
    run_cli("--source", str(source), "--engine", "core", "--config", str(_config(tmp_path)), "--redis-url", redis_url,
            *outputs(out))  # fmt: skip
    profiles = read_jsonl(out / "profiles.jsonl")
    score = score_stitching(profiles, truth)
    assert score["precision"] == 1.0 and score["false_merges"] == 0
    assert score["recall_linked"] == 1.0
    assert score["customers"] < len(truth["identifiers"]) / 1.5  # identifiers really were joined

    lines = read_jsonl(out / "changes.jsonl")
    merges = [line for line in lines if line.get("kind") == "identity_merge"]
    changes = [line for line in lines if "change_id" in line]
    assert merges
    absorbed = {customer for merge in merges for customer in merge["absorbed"]}
    finals = {profile["customer_id"] for profile in profiles}
    assert not absorbed & finals  # an absorbed customer has no profile of its own
    merge_changes = [c for c in changes if c["reason"] == "merge"]
    assert {c["change"] for c in merge_changes if c["customer_id"] in absorbed} <= {"exited"}
    last_seq: dict[str, int] = {}
    for change in changes:
        assert change["seq"] > last_seq.get(change["customer_id"], 0)
        last_seq[change["customer_id"]] = change["seq"]
    for customer in absorbed:  # it left every segment it had entered
        entered = sum(1 if c["change"] == "entered" else -1 for c in changes if c["customer_id"] == customer)
        assert entered == 0

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    for profile in profiles[:50]:
        for kind, values in profile["identifiers"].items():
            for value in values:
                assert client.hget("segstream:identifiers", f"{kind}:{value}") == profile["customer_id"]
    one = sorted(absorbed)[0]
    alias = client.hgetall(f"segstream:profile:{one}")
    assert alias["merged_into"] in finals and "profile" not in alias
    stream = client.xrange("segstream:changes")
    assert sum(1 for _, fields in stream if "merge_id" in fields) == len(merges)


@pytest.mark.parametrize("engine", ["core", "beam"])
def test_stitching_is_deterministic_across_replays_and_a_resume(engine: str, tmp_path: Path, redis_url: str) -> None:
    source, _ = _generate(tmp_path, persons=60)
    config = str(_config(tmp_path))
    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    run_cli("--source", str(source), "--engine", "core", "--config", config, "--redis-url", redis_url, *outputs(whole))
    again = tmp_path / "again"
    run_cli("--source", str(source), "--engine", "core", "--config", config, "--redis-url", redis_url, *outputs(again))
    assert (whole / "changes.jsonl").read_bytes() == (again / "changes.jsonl").read_bytes()
    assert (whole / "profiles.jsonl").read_bytes() == (again / "profiles.jsonl").read_bytes()

    lines = source.read_text(encoding="utf-8").splitlines()
    halves = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    halves[0].write_text("\n".join(lines[: len(lines) // 2]) + "\n", encoding="utf-8")
    halves[1].write_text("\n".join(lines[len(lines) // 2 :]) + "\n", encoding="utf-8")
    state = ["--resume", "--state-dir", str(tmp_path / "state"), "--redis-url", redis_url, "--engine", engine]
    run_child("--source", str(halves[0]), "--config", config, *state, *outputs(first))
    run_child("--source", str(halves[1]), "--config", config, *state, *outputs(second))
    ids = lambda path: sorted(p["customer_id"] for p in read_jsonl(path))  # noqa: E731
    assert ids(second / "profiles.jsonl") == ids(whole / "profiles.jsonl")  # the graph carried over
    all_changes = lambda *dirs: sorted(line for d in dirs for line in (d / "changes.jsonl").read_text().splitlines())  # noqa: E731
    assert all_changes(first, second) == all_changes(whole)  # the merges and changes, once each


def test_stitching_on_a_live_source_is_a_clear_error(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    watched = tmp_path / "incoming"
    watched.mkdir()
    result = CliRunner().invoke(main, ["run", "--source", str(watched), "--engine", "flink", "--config", config])
    assert result.exit_code == 2 and "identity.stitch needs a bounded input" in result.output, result.output
    stream = "redis-stream://127.0.0.1:1/events"
    result = CliRunner().invoke(main, ["run", "--source", stream, "--engine", "beam", "--config", config])
    assert result.exit_code == 2 and "identity.stitch needs a bounded input" in result.output, result.output


def run_child(*args: str) -> None:
    """``segstream run`` in a child process: a Flink run earlier in this process (another test file's)
    registers PyFlink's Beam operations, which break Beam pipelines after it."""
    command = [sys.executable, "-m", "pipelines.cli", "run", "--no-progress", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _flink(source: Path, config: str, out: Path, redis_url: str, *conf: str) -> None:
    """``segstream run --engine flink`` (in a child process: PyFlink's client breaks later Beam runs)."""
    settings = [arg for item in conf for arg in ("--flink-conf", item)]
    run_child("--source", str(source), "--engine", "flink", "--config", config, "--redis-url", redis_url,
              "--redis-prefix", out.name, *outputs(out), *settings)  # fmt: skip


def _by_customer(path: Path) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for line in read_jsonl(path):
        grouped[line["customer_id"]].append(line)
    return dict(grouped)


def test_beam_and_flink_stitch_as_the_core_loop_does(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed by component (pipelines.stitched): Beam in chunks of 300 records, Flink at parallelism
    1 and 2 in batches of 100 events."""
    monkeypatch.setenv("SEGSTREAM_EMAIL_SALT", SALT)
    source, truth = _generate(tmp_path)
    config = str(_config(tmp_path))
    core = tmp_path / "core"
    run_cli("--source", str(source), "--engine", "core", "--config", config, "--redis-url", redis_url,
            "--redis-prefix", "core", *outputs(core))  # fmt: skip
    expected = _by_customer(core / "changes.jsonl")
    assert sum(1 for lines in expected.values() for line in lines if line.get("kind") == "identity_merge") > 20
    beam = tmp_path / "beam"
    run_child("--source", str(source), "--engine", "beam", "--config", config, "--redis-url", redis_url,
            "--redis-prefix", "beam", "--chunk-events", "300", *outputs(beam))  # fmt: skip
    assert _by_customer(beam / "changes.jsonl") == expected
    assert sorted(map(json.dumps, without_scores(read_jsonl(beam / "profiles.jsonl")))) == sorted(
        map(json.dumps, without_scores(read_jsonl(core / "profiles.jsonl")))
    )
    for parallelism in (1, 2):
        out = tmp_path / f"flink{parallelism}"
        _flink(source, config, out, redis_url, "segstream.batch-size=100", f"parallelism.default={parallelism}")
        assert _by_customer(out / "changes.jsonl") == expected  # changes and merge records, in order per customer
        profiles = read_jsonl(out / "profiles.jsonl")
        assert score_stitching(profiles, truth) == score_stitching(read_jsonl(core / "profiles.jsonl"), truth)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["events_in"] == summary["accepted"] + summary["duplicates"] + sum(
            summary["dead_letters"].values()
        )
    # At parallelism 1 one RFM population ranks everyone, as in the core loop: the whole profiles match.
    assert sorted(map(json.dumps, without_scores(read_jsonl(tmp_path / "flink1" / "profiles.jsonl")))) == sorted(
        map(json.dumps, without_scores(read_jsonl(core / "profiles.jsonl")))
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    merges = [line for lines in expected.values() for line in lines if line.get("kind") == "identity_merge"]
    alias = client.hgetall(f"flink2:profile:{merges[0]['absorbed'][0]}")
    assert "merged_into" in alias and "profile" not in alias
    stream = client.xrange("flink2:changes")
    assert sum(1 for _, fields in stream if "merge_id" in fields) == len(merges)


def test_plan_groups_every_merge_into_one_component(tmp_path: Path) -> None:
    source, _ = _generate(tmp_path, persons=40)
    config = load_config(_config(tmp_path))
    assert config.identity is not None
    cleaner = Cleaner(config.cleaning)
    lines = source.read_text().splitlines()
    cleaned = (cleaner.clean(json.loads(line), "test", str(n), NOW_MS) for n, line in enumerate(lines, 1))
    events = [event for event in cleaned if isinstance(event, Event)]
    components = plan_components(events, config.identity)
    graph = IdentityGraph(config.identity)
    merged = 0
    for event in events:
        resolution = resolve(graph, event)
        for absorbed in resolution.absorbed:
            merged += 1
            assert components[absorbed] == components[resolution.customer_id]
    assert merged and set(components.values()) <= set(components)


def test_identity_settings_are_validated(tmp_path: Path) -> None:
    source, _ = _generate(tmp_path, persons=5)
    bad = _config(tmp_path, "  max_identifiers_per_customer: 0\n")
    result = CliRunner().invoke(main, ["run", "--source", str(source), "--engine", "core", "--config", str(bad)])
    assert result.exit_code == 2 and "identity.max_identifiers_per_customer must be a positive integer" in result.output
