"""The Flink job on a real standalone cluster (a JobManager and two TaskManagers on 127.0.0.1, from
the distribution inside the apache-flink wheel), submitted with deploy/flink/submit.sh; then a run in
which one TaskManager is killed mid-run and the job recovers from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipelines.core_engine import CoreEngine
from tests.conftest import NOW_MS, SCORE_FIELDS, make_spec, read_jsonl
from tests.flink_cluster import FlinkCluster, start_cluster
from transforms.sample_stream import sample_lines

SUBMIT = Path(__file__).resolve().parents[1] / "deploy" / "flink" / "submit.sh"
# Ranked against the population of buyers that each worker holds: at parallelism 2 a worker ranks its
# own customers only (transforms/profile.py keeps the population in the worker's CustomerLogic).
PER_WORKER_FIELDS = ("rfm", *SCORE_FIELDS)


def comparable(profile: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in profile.items() if k not in PER_WORKER_FIELDS}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("flink-cluster"), taskmanagers=2, slots=2)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(autouse=True)
def cancelled_after(cluster: FlinkCluster) -> Iterator[None]:
    """A job left running by a failed test is cancelled before the next test starts."""
    yield
    cluster.cancel_unfinished()


def submit(cluster: FlinkCluster, source: Path, redis_url: str, out: Path, *conf: str) -> subprocess.Popen[str]:
    args = [str(SUBMIT), "--", "--source", str(source), "--redis-url", redis_url, "--redis-prefix", "flink",
            "--now", str(NOW_MS), "--changes-out", str(out / "changes.jsonl"),
            "--profiles-out", str(out / "profiles.jsonl"), "--dead-letter-out", str(out / "dead_letters.jsonl"),
            "--summary-out", str(out / "summary.json"), "--flink-conf", "parallelism.default=2",
            "--flink-conf", f"execution.checkpointing.dir={(out / 'checkpoints').as_uri()}",
            *(arg for setting in conf for arg in ("--flink-conf", setting))]  # fmt: skip
    env = {**cluster.env(), "SEGSTREAM_PYTHON": sys.executable}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def core_run(source: Path, redis_url: str, out: Path) -> dict[str, int]:
    """The core loop's run of ``source``; the labels its models learnt, per task."""
    engine = CoreEngine(make_spec(source, redis_url, out, redis_prefix="core"))
    engine.run()
    assert engine.logic.models is not None
    return {task: model.n_updates for task, model in engine.logic.models.models.items()}


def redis_view(redis_url: str, prefix: str) -> dict[str, Any]:
    """Profiles, segment members and change ids as readers see them."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    profiles = {
        key.split(":", 2)[2]: json.loads(client.hget(key, "profile")) for key in client.scan_iter(f"{prefix}:profile:*")
    }
    segments = {key.split(":", 2)[2]: client.smembers(key) for key in client.scan_iter(f"{prefix}:segment:*")}
    changes = [fields["change_id"] for _, fields in client.xrange(f"{prefix}:changes")]
    return {"profiles": profiles, "segments": segments, "changes": changes}


def assert_same_outputs(flink: Path, core: Path, redis_url: str, learnt: dict[str, int]) -> None:
    flink_ids = [c["change_id"] for c in read_jsonl(flink / "changes.jsonl")]
    assert len(flink_ids) == len(set(flink_ids)), "a change was written twice"
    assert sorted(flink_ids) == sorted(c["change_id"] for c in read_jsonl(core / "changes.jsonl"))
    by_id = {p["customer_id"]: comparable(p) for p in read_jsonl(core / "profiles.jsonl")}
    assert {p["customer_id"]: comparable(p) for p in read_jsonl(flink / "profiles.jsonl")} == by_id
    got, want = redis_view(redis_url, "flink"), redis_view(redis_url, "core")
    assert {k: comparable(p) for k, p in got["profiles"].items()} == {
        k: comparable(p) for k, p in want["profiles"].items()
    }
    assert got["segments"] == want["segments"]
    assert sorted(got["changes"]) == sorted(want["changes"])  # none lost, none twice
    summary = json.loads((flink / "summary.json").read_text())
    assert summary["events_in"] == summary["accepted"] + summary["duplicates"] + sum(summary["dead_letters"].values())
    assert summary["customers"] == len(by_id)
    # The two workers' models learnt every label once between them: none lost, none twice (after a
    # restore they continue from the models in the checkpoint).
    assert summary["model_updates"] == learnt and sum(learnt.values()) > 0


def test_submit_script_runs_the_job_on_a_standalone_cluster(
    cluster: FlinkCluster, redis_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(150, seed=3)) + "\n")
    job = submit(cluster, source, redis_url, tmp_path / "flink")
    output = finish(job, cluster, 300)
    assert "segstream run on flink" in output
    learnt = core_run(source, redis_url, tmp_path / "core")
    assert_same_outputs(tmp_path / "flink", tmp_path / "core", redis_url, learnt)


def test_the_job_recovers_from_a_lost_taskmanager_with_the_same_outputs(
    cluster: FlinkCluster, redis_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(2500, seed=5)) + "\n")
    out = tmp_path / "flink"
    # Small batches: the job is still running after its first checkpoint and 1,000 changes. Aligned
    # checkpoints: a barrier never passes a send of the reader, so the models it holds are exact.
    job = submit(cluster, source, redis_url, out, "execution.checkpointing.interval=2s", "segstream.batch-size=500",
                 "execution.checkpointing.unaligned.enabled=false")  # fmt: skip
    try:
        job_id = wait_for(cluster, lambda: running_job(cluster), 120, "the job to start")
        wait_for(cluster, lambda: completed_checkpoints(cluster, job_id) >= 1, 120, "a completed checkpoint")
        wait_for(cluster, lambda: len(read_jsonl(out / "changes.jsonl")) >= 1000, 120, "changes written")
        changes_before = len(read_jsonl(out / "changes.jsonl"))
        victim = cluster.taskmanager_pids()[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(cluster, lambda: recovered(cluster, job_id), 120, "the job to restore from its checkpoint")
        recovery_s = time.monotonic() - killed_at
        finish(job, cluster, 300)
    finally:
        if job.poll() is None:
            job.kill()
        cluster.daemon("taskmanager.sh", "start")  # back to two for the next test
    learnt = core_run(source, redis_url, tmp_path / "core")
    assert_same_outputs(out, tmp_path / "core", redis_url, learnt)
    changes_after = len(read_jsonl(out / "changes.jsonl"))
    print(f"\nTaskManager killed with {changes_before} changes written; job restored from its checkpoint and "
          f"running again after {recovery_s:.1f} s; {changes_after} changes at the end, 0 lost, 0 twice")  # fmt: skip
    assert recovery_s < 60


def finish(job: subprocess.Popen[str], cluster: FlinkCluster, timeout_s: float) -> str:
    """The output of ``flink run``, which must end well within ``timeout_s``; a failure says why."""
    try:
        output, _ = job.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        job.kill()
        output, _ = job.communicate()
        explanation = f"{output}\n{cluster.diagnostics()}"
        raise AssertionError(f"flink run still running after {timeout_s} s:\n{explanation}") from None
    assert job.returncode == 0, f"{output}\n{cluster.diagnostics()}"
    return output


def wait_for(cluster: FlinkCluster, check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}\n{cluster.diagnostics()}")


def running_job(cluster: FlinkCluster) -> str | None:
    jobs = cluster.rest("/jobs/overview")["jobs"]
    return next((j["jid"] for j in jobs if j["state"] == "RUNNING"), None)


def completed_checkpoints(cluster: FlinkCluster, job_id: str) -> int:
    return cluster.rest(f"/jobs/{job_id}/checkpoints")["counts"]["completed"]


def recovered(cluster: FlinkCluster, job_id: str) -> bool:
    """Restored from a checkpoint, with every task running again (or done)."""
    if not cluster.rest(f"/jobs/{job_id}/checkpoints")["counts"]["restored"]:
        return False
    job = cluster.rest(f"/jobs/{job_id}")
    return job["state"] in ("RUNNING", "FINISHED") and all(
        v["status"] in ("RUNNING", "FINISHED") for v in job["vertices"]
    )
