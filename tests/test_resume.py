"""--resume: customers carry over between file replays, and a changed rule set re-evaluates them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_jsonl, without_scores
from tests.test_end_to_end import outputs, run_cli
from transforms.sample_stream import sample_lines

V1 = """version: v1
segments:
  spender: {feature: spend, ">=": 20}
  recent_buyer: {since: last.purchase, within: 30d}
"""
V2 = """version: v2
segments:
  spender: {feature: spend, ">=": 25}
  viewer: {feature: count.product_view, ">=": 3}
"""


def resumed_runs(
    engine: str, tmp_path: Path, redis_url: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Half the sample under rules v1, then (resumed) the other half under v2."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = list(sample_lines(customers=40))
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    second.write_text("\n".join(lines[len(lines) // 2 :]) + "\n")
    (tmp_path / "v1.yaml").write_text(V1)
    (tmp_path / "v2.yaml").write_text(V2)
    state = ["--resume", "--state-dir", str(tmp_path / "state"), "--redis-url", redis_url, "--engine", engine]
    run_cli("--source", str(first), "--config", str(tmp_path / "v1.yaml"), *state, *outputs(tmp_path / "one"))
    run_cli("--source", str(second), "--config", str(tmp_path / "v2.yaml"), *state, *outputs(tmp_path / "two"))
    return read_jsonl(tmp_path / "one" / "changes.jsonl"), read_jsonl(tmp_path / "two" / "changes.jsonl"), tmp_path


@pytest.mark.parametrize("engine", ["core", "beam"])
def test_a_changed_rule_set_re_evaluates_every_saved_customer(engine: str, tmp_path: Path, redis_url: str) -> None:
    before, after, out = resumed_runs(engine, tmp_path, redis_url)
    assert {c["rules_version"] for c in before} == {"v1"} and {c["rules_version"] for c in after} == {"v2"}
    # recent_buyer is gone from the rules: every member leaves it at once, by rule, without an event.
    members = {c["customer_id"] for c in before if c["segment"] == "recent_buyer" and c["change"] == "entered"}
    left = [c for c in after if c["segment"] == "recent_buyer"]
    assert members and {c["customer_id"] for c in left} == members
    assert {(c["change"], c["reason"]) for c in left} == {("exited", "rule")}
    # Customers of the first half who viewed 3+ products enter the new segment at their saved clock.
    assert any(c["segment"] == "viewer" and c["customer_id"] in members for c in after)
    # seq continues where the first run stopped.
    last_seq: dict[str, int] = {}
    for change in before + after:
        assert change["seq"] > last_seq.get(change["customer_id"], 0)
        last_seq[change["customer_id"]] = change["seq"]
    profiles = read_jsonl(out / "two" / "profiles.jsonl")
    assert len(profiles) == 40 and all(set(p["segments"]) <= {"spender", "viewer"} for p in profiles)


def test_both_engines_resume_alike(tmp_path: Path, redis_url: str) -> None:
    core = resumed_runs("core", tmp_path / "core", redis_url)
    beam = resumed_runs("beam", tmp_path / "beam", redis_url)
    key = lambda c: (c["customer_id"], c["seq"])  # noqa: E731
    assert sorted(core[1], key=key) == sorted(beam[1], key=key)
    assert without_scores(read_jsonl(core[2] / "two" / "profiles.jsonl")) == without_scores(
        read_jsonl(beam[2] / "two" / "profiles.jsonl")
    )


def test_resume_is_for_file_replays(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipelines.cli import main

    result = CliRunner().invoke(main, ["run", "--source", "redis-stream://127.0.0.1:1/s", "--resume"])
    assert result.exit_code == 2 and "--resume continues file replays" in result.output
