"""A live run: events pushed to a real Redis stream, the job consuming through its consumer group,
SIGINT draining it; every entry acknowledged only after its effects were written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from click.testing import CliRunner

from pipelines.cli import main
from tests.conftest import NOW_MS, free_port, read_jsonl, without_scores
from transforms.sample_stream import sample_lines


def all_delivered(client: redis.Redis, stream: str, group: str) -> bool:
    """The group has been handed every entry of the stream (Redis 6 has no 'lag' field)."""
    groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
    last = client.xrevrange(stream, count=1)[0][0]
    return group in groups and groups[group]["last-delivered-id"] == last


def stream_source(redis_url: str, stream: str, query: str = "") -> str:
    return redis_url.replace("redis://", "redis-stream://").rsplit("/", 1)[0] + f"/{stream}{query}"


def start_job(source: str, redis_url: str, *options: str) -> subprocess.Popen[str]:
    """``segstream run`` on a live source, in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--source", source, "--redis-url", redis_url,
         "--now", str(NOW_MS), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def drain(job: subprocess.Popen[str]) -> None:
    """SIGINT, then the job must drain and exit 0."""
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=180)
    assert job.returncode == 0, stderr


def wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_live_stream_drains_on_sigint_and_matches_a_replay(redis_url: str, tmp_path: Path) -> None:
    lines = list(sample_lines(customers=40))
    client = redis.Redis.from_url(redis_url)
    for line in lines[: len(lines) // 2]:
        client.xadd("clicks", {"event": line})
    port = free_port()
    out = tmp_path / "live"
    job = start_job(
        stream_source(redis_url, "clicks", "?group=jobs"), redis_url,
        "--metrics-port", str(port), "--changes-out", str(out / "changes.jsonl"),
        "--profiles-out", str(out / "profiles.jsonl"), "--dead-letter-out", str(out / "dead.jsonl"),
        "--summary-out", str(out / "summary.json"),
    )  # fmt: skip
    try:
        wait_for(lambda: all_delivered(client, "clicks", "jobs"))
        for line in lines[len(lines) // 2 :]:
            client.xadd("clicks", {"event": line})
        wait_for(lambda: all_delivered(client, "clicks", "jobs"))
        wait_for(lambda: out.joinpath("changes.jsonl").stat().st_size > 0)  # changes flushed while live
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "segstream_events_in_total" in metrics
        drain(job)
    finally:
        job.kill()
    assert client.xpending("clicks", "jobs")["pending"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events_in"] == len(lines)
    assert summary["events_in"] == summary["accepted"] + summary["duplicates"] + sum(summary["dead_letters"].values())
    assert "late" not in summary["dead_letters"]
    assert client.xlen("segstream:dead_letters") == sum(summary["dead_letters"].values())

    replay_file = tmp_path / "events.jsonl"
    replay_file.write_text("\n".join(lines) + "\n")
    replay = tmp_path / "replay"
    result = CliRunner().invoke(
        main,
        ["run", "--source", str(replay_file), "--engine", "core", "--redis-url", redis_url, "--now", str(NOW_MS),
         "--redis-prefix", "replay", "--changes-out", str(replay / "changes.jsonl"),
         "--profiles-out", str(replay / "profiles.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    key = lambda c: (c["customer_id"], c["seq"])  # noqa: E731
    assert sorted(read_jsonl(out / "changes.jsonl"), key=key) == sorted(read_jsonl(replay / "changes.jsonl"), key=key)
    assert without_rfm(out / "profiles.jsonl") == without_rfm(replay / "profiles.jsonl")


def without_rfm(path: Path) -> list[dict[str, Any]]:
    """Profiles by customer, less RFM and model scores: a live run ranks against the population as it
    found it, and its models learn in its processing order."""
    return without_scores([{k: v for k, v in p.items() if k != "rfm"} for p in read_jsonl(path)])


def test_a_killed_live_job_loses_nothing_its_successor_rereads_the_unacknowledged(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    for line in sample_lines(customers=20):
        client.xadd("orders", {"event": line})
    source = stream_source(redis_url, "orders")

    def start(summary: Path) -> subprocess.Popen[str]:
        return start_job(source, redis_url, "--metrics-port", str(free_port()), "--summary-out", str(summary))

    first = start(tmp_path / "first.json")
    try:
        wait_for(lambda: all_delivered(client, "orders", "segstream"))
    finally:
        first.kill()  # no drain: whatever is not yet acknowledged stays pending
        first.wait()
    unacknowledged = client.xpending("orders", "segstream")["pending"]
    assert unacknowledged > 0  # the events still inside the out-of-orderness bound at least
    second = start(tmp_path / "second.json")
    try:
        # The successor has re-read every entry its predecessor left unacknowledged.
        wait_for(
            lambda: all(
                entry["times_delivered"] >= 2
                for entry in client.xpending_range("orders", "segstream", "-", "+", count=10_000)
            )
        )
        drain(second)
    finally:
        second.kill()
    assert client.xpending("orders", "segstream")["pending"] == 0
    summary = json.loads((tmp_path / "second.json").read_text())
    assert summary["events_in"] == unacknowledged
    assert summary["events_in"] == summary["accepted"] + summary["duplicates"] + sum(summary["dead_letters"].values())
