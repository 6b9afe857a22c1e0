"""Real public data through the job: every row accounted for, and the engines agree."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pipelines.cli import main
from tests.conftest import NOW_MS, read_jsonl, without_scores

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(source: Path, engine: str, redis_url: str, out: Path, prefix: str) -> dict:
    result = CliRunner().invoke(
        main,
        ["run", "--source", str(source), "--engine", engine, "--redis-url", redis_url, "--now", str(NOW_MS),
         "--redis-prefix", prefix, "--no-progress", "--changes-out", str(out / "changes.jsonl"),
         "--profiles-out", str(out / "profiles.jsonl"), "--summary-out", str(out / "summary.json")],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def convert(dataset: str, name: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{dataset}.jsonl.gz"
    result = CliRunner().invoke(main, ["import", dataset, str(DATA / name), str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_every_uci_online_retail_line_is_accounted_for(redis_url: str, tmp_path: Path) -> None:
    source = convert("uci-online-retail", "uci_online_retail.csv.gz", tmp_path)
    summary = run(source, "core", redis_url, tmp_path / "uci", "uci")
    assert summary["events_in"] == 541_909
    assert summary["events_in"] == summary["accepted"] + summary["duplicates"] + sum(summary["dead_letters"].values())
    assert summary["dead_letters"]["missing_identifier"] == 135_080  # rows without a CustomerID
    assert summary["duplicates"] > 5_000  # exactly repeated invoice lines
    assert summary["customers"] == 4_372


def test_rees46_clickstream_gives_identical_changes_on_beam_and_core(redis_url: str, tmp_path: Path) -> None:
    source = convert("rees46", "rees46_2019-10-01_head.csv", tmp_path)
    beam = run(source, "beam", redis_url, tmp_path / "beam", "beam")
    core = run(source, "core", redis_url, tmp_path / "core", "core")
    assert beam["events_in"] == core["events_in"] == 17_434
    assert beam["segment_changes"] == core["segment_changes"] and beam["segment_changes"]["cart_abandoner"]["entered"]
    beam_lines = sorted((tmp_path / "beam" / "changes.jsonl").read_text().splitlines())
    assert beam_lines == sorted((tmp_path / "core" / "changes.jsonl").read_text().splitlines())
    profiles = [without_scores(read_jsonl(tmp_path / engine / "profiles.jsonl")) for engine in ("beam", "core")]
    assert profiles[0] == profiles[1]
