"""One scenario suite, three engines: the plain core loop, Beam (DirectRunner) and Flink (local
mini-cluster) must emit the same segment changes (ids, seq, per-customer order), final profiles,
dead letters and counts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from tests.conftest import NOW_MS, read_jsonl, without_scores
from tests.scenarios import disordered_lines, with_consent, with_rejected_timestamps
from transforms.sample_stream import sample_lines

ENGINES = ("core", "beam", "flink")
SCENARIOS = {
    # name: (lines, extra options)
    "in_order": (lambda: list(sample_lines(60, seed=11)), []),
    "disordered_within_bound_and_late": (lambda: disordered_lines(60, seed=12, shuffle_within_ms=4_000), []),
    "beyond_bound_then_as_of": (
        lambda: disordered_lines(40, seed=13, shuffle_within_ms=20_000, late=3),
        ["--as-of", "2025-07-15T00:00:00Z"],
    ),
    "consent_revoked_and_granted": (lambda: with_consent(40, seed=14), []),
    "rejected_records_weeks_ahead": (lambda: with_rejected_timestamps(60, seed=15), []),
}


def run(engine: str, source: Path, out: Path, redis_url: str, extra: list[str]) -> dict[str, Any]:
    """``segstream run`` in this process; Flink in a child process (PyFlink's client registers Beam
    operations of its own, which break later Beam pipelines in the same process)."""
    args = ["run", "--source", str(source), "--engine", engine, "--now", str(NOW_MS), "--no-progress",
            "--redis-url", redis_url, "--redis-prefix", engine, "--changes-out", str(out / "changes.jsonl"),
            "--profiles-out", str(out / "profiles.jsonl"), "--dead-letter-out", str(out / "dead_letters.jsonl"),
            "--summary-out", str(out / "summary.json"), "--chunk-events", "97", *extra]  # fmt: skip
    if engine == "flink":
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


def per_customer(changes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Changes grouped by customer, in the order each engine wrote them."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for change in changes:
        grouped[change["customer_id"]].append(change)
    return dict(grouped)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_core_beam_and_flink_emit_identical_changes_and_profiles(scenario: str, redis_url: str, tmp_path: Path) -> None:
    make_lines, extra = SCENARIOS[scenario]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(make_lines()) + "\n")
    results = {}
    for engine in ENGINES:
        out = tmp_path / engine
        summary = run(engine, source, out, redis_url, extra)
        results[engine] = {
            "changes": per_customer(read_jsonl(out / "changes.jsonl")),
            "profiles": without_scores(read_jsonl(out / "profiles.jsonl")),
            "dead_letters": sorted(map(json.dumps, read_jsonl(out / "dead_letters.jsonl"))),
            "counts": {
                k: summary[k]
                for k in (
                    "events_in",
                    "accepted",
                    "duplicates",
                    "no_consent",
                    "consent_revocations",
                    "dead_letters",
                    "customers",
                    "segment_changes",
                )
            },
        }
    core = results["core"]
    assert sum(map(len, core["changes"].values())) > 20
    for customer_changes in core["changes"].values():
        seqs = [c["seq"] for c in customer_changes]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for engine in ENGINES[1:]:
        for part in ("changes", "profiles", "dead_letters", "counts"):
            assert results[engine][part] == core[part], f"{engine} differs from the core loop in {part}"
