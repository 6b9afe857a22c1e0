"""The Flink job through the command line, locally: a live directory source drained on SIGINT, and
user errors. Flink runs in child processes (PyFlink's client changes Beam's registry in its process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from pipelines.core_engine import CoreEngine
from tests.conftest import NOW_MS, make_spec, read_jsonl, without_scores
from tests.scenarios import disordered_lines


def segstream(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def test_a_live_directory_run_drains_on_sigint_to_the_core_loops_outputs(redis_url: str, tmp_path: Path) -> None:
    """Watermarks and timers (live sources use them) give what a replay of the same events gives."""
    inbox, out = tmp_path / "inbox", tmp_path / "flink"
    inbox.mkdir()
    lines = disordered_lines(60, seed=21, shuffle_within_ms=4_000)
    job = subprocess.Popen(
        segstream("run", "--engine", "flink", "--source", str(inbox), "--redis-url", redis_url, "--now", str(NOW_MS),
                  "--redis-prefix", "live", "--changes-out", str(out / "changes.jsonl"), "--profiles-out",
                  str(out / "profiles.jsonl"), "--summary-out", str(out / "summary.json"), "--no-progress"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    sentinel = json.dumps({"event_id": "sentinel", "type": "teleport", "ts": NOW_MS, "user_id": "x"})
    try:
        drop(inbox, "part-1.jsonl", lines)
        wait_until(lambda: (out / "changes.jsonl").exists() and read_jsonl(out / "changes.jsonl"), job)
        drop(inbox, "part-2.jsonl", [sentinel])  # read after part 1: a dead letter once everything is in
        dead = redis.Redis.from_url(redis_url)
        wait_until(lambda: any(b"sentinel" in f[b"dead_letter"] for _, f in dead.xrange("live:dead_letters")), job)
        job.send_signal(signal.SIGINT)
        output, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output
    replay = tmp_path / "replay.jsonl"
    replay.write_text("\n".join([*lines, sentinel]) + "\n")
    CoreEngine(make_spec(replay, redis_url, tmp_path / "core", redis_prefix="core")).run()
    got = sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(out / "changes.jsonl"))
    assert got == sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(tmp_path / "core" / "changes.jsonl"))
    profiles = [without_scores(read_jsonl(path / "profiles.jsonl")) for path in (out, tmp_path / "core")]
    assert profiles[0] == profiles[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events_in"] == len(lines) + 1 and summary["customers"] == len(read_jsonl(out / "profiles.jsonl"))


def drop(inbox: Path, name: str, lines: list[str]) -> None:
    """A file appears whole (written next to the watched directory, then moved in)."""
    staged = inbox.parent / name
    staged.write_text("\n".join(lines) + "\n")
    staged.rename(inbox / name)


def wait_until(
    check: Callable[[], object], job: subprocess.Popen[str], timeout_s: float = 120, poll_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline and job.poll() is None, "the live job did not get there"
        time.sleep(poll_s)


@pytest.mark.parametrize(
    ("source", "expected"),
    [("events.avro", "the Flink job reads JSON Lines"), ("missing.jsonl", "no such file")],
)
def test_sources_the_flink_job_cannot_read_are_user_errors(source: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / source
    if source.endswith(".avro"):
        path.write_bytes(b"Obj\x01")
    done = subprocess.run(
        segstream("run", "--engine", "flink", "--source", str(path), "--state-dir", str(tmp_path / "state")),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr


def test_process_mode_gives_the_core_loops_outputs(redis_url: str, tmp_path: Path) -> None:
    """Python in worker processes (``python.execution-mode: process``) instead of the default thread
    mode: the same changes and final profiles as the core loop."""
    source, out = tmp_path / "events.jsonl", tmp_path / "flink"
    source.write_text("\n".join(disordered_lines(40, seed=5, shuffle_within_ms=4_000)) + "\n")
    done = subprocess.run(
        segstream("run", "--engine", "flink", "--source", str(source), "--redis-url", redis_url, "--now", str(NOW_MS),
                  "--redis-prefix", "process", "--no-progress", "--flink-conf", "python.execution-mode=process",
                  "--changes-out", str(out / "changes.jsonl"), "--profiles-out", str(out / "profiles.jsonl")),
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    CoreEngine(make_spec(source, redis_url, tmp_path / "core", redis_prefix="core")).run()
    got = sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(out / "changes.jsonl"))
    assert got and got == sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(tmp_path / "core" / "changes.jsonl"))
    profiles = [without_scores(read_jsonl(path / "profiles.jsonl")) for path in (out, tmp_path / "core")]
    assert profiles[0] == profiles[1]
