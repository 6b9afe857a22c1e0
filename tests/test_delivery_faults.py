"""The fault table: a run of the job with two subscribers, one of which fails in a scripted way (500s,
timeouts, answers dripped a byte at a time, slow answers, 429 with Retry-After, 410, connection refused,
failing throughout) or the job is killed and restarted. After each, every change reached every
subscriber, none twice after dedup by id, and Redis holds what an undisturbed run leaves. Set
SEGSTREAM_FAULT_TABLE=FILE to collect the counts.
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.redis_store import RedisSink, shared_client
from pipelines.webhook_receiver import ReceiverServer, Reply
from tests.conftest import NOW_MS, free_port, make_spec, read_jsonl
from tests.delivery_harness import (
    FAST,
    SECRET,
    Drip,
    FaultRow,
    Script,
    ScriptedReceiver,
    check_customer_order,
    check_delivered,
    deliveries_metric,
    dripping,
    receiving,
    redis_state,
    run_job,
    subscriber,
    wanted,
    with_subscribers,
)
from transforms.sample_stream import sample_lines
from transforms.subscribers import Subscriber

CUSTOMERS = 60
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "transforms" / "default_config.yaml"


def every(n: int, webhook_id: str) -> bool:
    """About one id in ``n``, the same ones every run."""
    return int(webhook_id[:4], 16) % n == 0


@pytest.fixture(scope="module")
def reference_of(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], dict[str, Any]]:
    """Redis state after an undisturbed run without webhooks over the sample stream of n customers."""
    from pipelines.cli import execute

    @functools.cache
    def state(customers: int) -> dict[str, Any]:
        directory = tmp_path_factory.mktemp("reference")
        source = directory / "events.jsonl"
        source.write_text("\n".join(sample_lines(customers)) + "\n", encoding="utf-8")
        prefix = f"reference-{customers}"
        execute(make_spec(source, redis_server, directory / "out", redis_prefix=prefix), "core")
        return redis_state(redis.Redis.from_url(redis_server), prefix)

    return state


@pytest.fixture
def reference(reference_of: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    return reference_of(CUSTOMERS)


def check_run(
    fault: str,
    changes: list[dict[str, Any]],
    pairs: list[tuple[Subscriber, ScriptedReceiver]],
    redis_url: str,
    prefix: str,
    reference: dict[str, Any],
    notes: str = "",
    ordered: bool = True,
) -> FaultRow:
    """The checks every fault ends with; record the row."""
    assert redis_state(redis.Redis.from_url(redis_url), prefix) == reference
    for sub, receiver in pairs:
        check_delivered(changes, sub, receiver)
        if ordered:
            check_customer_order(receiver)
    row = FaultRow(
        fault=fault,
        emitted=len(changes),
        delivered={sub.name: len(receiver.lines()) for sub, receiver in pairs},
        expected={sub.name: len(wanted(changes, sub)) for sub, _ in pairs},
        retries=sum(deliveries_metric(sub.name, "retried") for sub, _ in pairs),
        dead_letters=sum(deliveries_metric(sub.name, "dead_lettered") for sub, _ in pairs),
        repeats_dropped=sum(receiver.duplicates for _, receiver in pairs),
        notes=notes,
    )
    row.record()
    return row


def fail_first_two(webhook_id: str, attempt: int) -> Reply | None:
    return Reply(500) if attempt <= 2 else None


def time_out_some(webhook_id: str, attempt: int) -> float | None:
    return 0.4 if attempt == 1 and every(4, webhook_id) else None  # beyond the 150 ms timeout


def answer_slowly(webhook_id: str, attempt: int) -> float:
    return 0.02


def throttle_some(webhook_id: str, attempt: int) -> Reply | None:
    return Reply(429, {"Retry-After": "1"}) if attempt == 1 and every(5, webhook_id) else None


@pytest.mark.parametrize(
    ("fault", "script", "settings"),
    [
        ("500 on the first two attempts", fail_first_two, {}),
        ("timeouts (1 id in 4 answers after 400 ms, timeout 150 ms)", time_out_some, {"timeout": "150ms"}),
        ("slow answers (20 ms each)", answer_slowly, {}),
        ("429 with Retry-After: 1 (1 id in 5)", throttle_some, {}),
    ],
)
def test_scripted_http_faults(
    fault: str,
    script: Script,
    settings: dict[str, object],
    redis_url: str,
    sample_file: Path,
    tmp_path: Path,
    reference: dict[str, Any],
) -> None:
    prefix = script.__name__
    with (
        receiving(tmp_path / "faulty.jsonl", script) as (faulty, url),
        receiving(tmp_path / "ok.jsonl") as (ok, ok_url),
    ):
        pairs = [
            (subscriber(f"{prefix}-faulty", url, breaker_threshold=1_000, **settings), faulty),
            (subscriber(f"{prefix}-healthy", ok_url, segments=["recent_buyer"]), ok),
        ]
        changes = run_job(sample_file, redis_url, tmp_path / "out", prefix, with_subscribers(*(s for s, _ in pairs)))
    row = check_run(fault, changes, pairs, redis_url, prefix, reference)
    faulty_ids = wanted(changes, pairs[0][0])
    if script is fail_first_two:
        assert all(len(faulty.requests[i]) == 3 for i in faulty_ids) and row.retries == 2 * len(faulty_ids)
    if script is answer_slowly:
        assert row.retries == 0
    if script is throttle_some:
        throttled = [i for i in faulty_ids if every(5, i)]
        assert throttled and all(faulty.requests[i][1] - faulty.requests[i][0] >= 0.99 for i in throttled)
    if script is time_out_some:
        assert row.retries >= sum(every(4, i) for i in faulty_ids)
    assert row.dead_letters == 0


def test_answers_dripped_a_byte_at_a_time_are_cut_at_the_attempt_deadline(
    redis_url: str, sample_file: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    """1 id in 4 gets its first answer a byte every 100 ms (over 4 s), each byte well within the 300 ms
    timeout: every such attempt ends at the timeout, is retried, and the run ends long before its drain timeout."""

    def drip_some(webhook_id: str, attempt: int) -> Drip | None:
        return Drip(204) if attempt == 1 and every(4, webhook_id) else None

    prefix = "drip"
    with (
        dripping(tmp_path / "faulty.jsonl", drip_some) as (faulty, url),
        receiving(tmp_path / "ok.jsonl") as (ok, ok_url),
    ):
        pairs = [
            (subscriber(f"{prefix}-faulty", url, timeout="300ms", breaker_threshold=1_000), faulty),
            (subscriber(f"{prefix}-healthy", ok_url, segments=["recent_buyer"]), ok),
        ]
        config = with_subscribers(*(s for s, _ in pairs), drain_timeout_ms=20_000)
        started = time.monotonic()
        changes = run_job(sample_file, redis_url, tmp_path / "out", prefix, config)
        elapsed = time.monotonic() - started
    dripped = [i for i in wanted(changes, pairs[0][0]) if every(4, i)]
    row = check_run(
        "answers dripped a byte every 100 ms (1 id in 4, first attempt; timeout 300 ms)", changes, pairs,
        redis_url, prefix, reference, notes=f"{len(dripped)} attempts cut at the deadline; run {elapsed:.1f} s",
    )  # fmt: skip
    assert dripped and row.retries >= len(dripped) and row.dead_letters == 0
    # the retry came after the timeout plus a backoff (at most 100 ms), not after the 4.5 s of dripping
    assert max(faulty.requests[i][1] - faulty.requests[i][0] for i in dripped) < 0.3 + 0.1 + 1.5
    assert elapsed < 20


def config_file(path: Path, *subscribers: dict[str, object]) -> Path:
    """The default job configuration plus ``subscribers`` (given as in YAML, with the fast settings)."""
    document = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    document["webhooks"] = {"subscribers": [{**FAST, "secrets": [SECRET], **s} for s in subscribers]}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def replay_and_deliver(redis_url: str, prefix: str, config: Path) -> None:
    runner = CliRunner()
    replay = runner.invoke(main, ["deliveries", "replay", "--redis-url", redis_url, "--redis-prefix", prefix])
    assert replay.exit_code == 0, replay.output
    result = runner.invoke(
        main,
        ["deliver", "--config", str(config), "--redis-url", redis_url, "--redis-prefix", prefix, "--until-empty"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output


def test_410_is_permanent_goes_to_the_dead_letters_and_replays_with_the_original_id(
    redis_url: str, sample_file: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    gone = threading.Event()
    gone.set()

    def script(webhook_id: str, attempt: int) -> Reply | None:
        return Reply(410) if gone.is_set() and every(6, webhook_id) else None

    prefix = "gone"
    with (
        receiving(tmp_path / "faulty.jsonl", script) as (faulty, url),
        receiving(tmp_path / "ok.jsonl") as (ok, ok_url),
    ):
        sub = subscriber("gone-faulty", url)
        healthy = subscriber("gone-healthy", ok_url)
        changes = run_job(sample_file, redis_url, tmp_path / "out", prefix, with_subscribers(sub, healthy))
        refused = [i for i in wanted(changes, sub) if every(6, i)]
        dead = read_dead(redis_url, prefix, sub.name)
        assert sorted(d["change_id"] for d in dead) == sorted(refused)
        assert all(d["reason"] == "status_410" and d["attempts"] == "1" and d["last_status"] == "410" for d in dead)
        assert all(len(faulty.requests[i]) == 1 for i in refused)  # never retried
        gone.clear()  # the endpoint is fixed: replay the dead letters
        replay_and_deliver(redis_url, prefix, config_file(tmp_path / "config.yaml", {"name": sub.name, "url": url}))
    assert read_dead(redis_url, prefix, sub.name) == []
    row = check_run(
        "410 Gone (1 id in 6), then `deliveries replay`", changes, [(sub, faulty), (healthy, ok)], redis_url, prefix,
        reference, notes=f"{len(refused)} dead-lettered, replayed with the original webhook-id", ordered=False,
    )  # fmt: skip
    assert row.dead_letters == len(refused)
    check_customer_order(ok)


def read_dead(redis_url: str, prefix: str, name: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return [fields for _, fields in client.xrange(f"{prefix}:webhooks:{name}:dead")]


def test_connection_refused_until_the_endpoint_comes_up(
    redis_url: str, sample_file: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    late = ScriptedReceiver(tmp_path / "late.jsonl")
    servers: list[ReceiverServer] = []
    sub = subscriber("refused-faulty", url)

    def come_up_later() -> None:
        """Listen 0.8 s after the first refused attempt."""
        deadline = time.monotonic() + 60
        while not deliveries_metric(sub.name, "retried") and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.8)
        servers.append(late.serve(port=port))

    endpoint = threading.Thread(target=come_up_later, daemon=True)
    prefix = "refused"
    with receiving(tmp_path / "ok.jsonl") as (ok, ok_url):
        healthy = subscriber("refused-healthy", ok_url)
        endpoint.start()
        try:
            changes = run_job(sample_file, redis_url, tmp_path / "out", prefix, with_subscribers(sub, healthy))
        finally:
            endpoint.join()
            for server in servers:
                server.stop()
            late.close()
    row = check_run(
        "connection refused for 0.8 s", changes, [(sub, late), (healthy, ok)], redis_url, prefix, reference,
        notes="the circuit breaker held the retries",
    )  # fmt: skip
    assert 5 <= row.retries < 100  # breaker: 5 failures then a trial every 100 ms, not a retry storm


def test_a_subscriber_failing_throughout_is_isolated_then_replayed(
    redis_url: str, sample_file: Path, tmp_path: Path, reference: dict[str, Any]
) -> None:
    down = threading.Event()
    down.set()

    def script(webhook_id: str, attempt: int) -> Reply | None:
        return Reply(503) if down.is_set() else None

    prefix = "neighbour"
    with (
        receiving(tmp_path / "faulty.jsonl", script) as (faulty, url),
        receiving(tmp_path / "ok.jsonl") as (ok, ok_url),
    ):
        sub = subscriber("neighbour-faulty", url, max_retry_age="1s")
        healthy = subscriber("neighbour-healthy", ok_url)
        started = time.time()
        changes = run_job(sample_file, redis_url, tmp_path / "out", prefix, with_subscribers(sub, healthy))
        assert len(read_dead(redis_url, prefix, sub.name)) == len(changes)  # given up after 1 s
        healthy_last = max(line["received_at"] for line in ok.lines()) / 1000 - started
        down.clear()
        replay_and_deliver(redis_url, prefix, config_file(tmp_path / "config.yaml", {"name": sub.name, "url": url}))
    row = check_run(
        "a subscriber answering 503 throughout (max retry age 1 s), then replay", changes,
        [(sub, faulty), (healthy, ok)], redis_url, prefix, reference,
        notes=f"healthy neighbour done {healthy_last:.2f} s after the job started", ordered=False,
    )  # fmt: skip
    assert row.dead_letters == len(changes)
    check_customer_order(ok)
    assert healthy_last < 5


def start_job(source: Path, redis_url: str, prefix: str, config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--source", str(source), "--engine", "core",
         "--redis-url", redis_url, "--redis-prefix", prefix, "--config", str(config), "--now", str(NOW_MS),
         "--no-progress", "--changes-out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("phase", ["processing", "delivering"])
def test_a_job_killed_mid_run_and_restarted_loses_nothing(
    phase: str, redis_url: str, tmp_path: Path, reference_of: Callable[[int], dict[str, Any]]
) -> None:
    """SIGKILL while the job still writes changes (a larger input, killed at its first write) or while
    it delivers them (a receiver taking 10 ms per request, killed after 10 deliveries)."""
    customers = 300 if phase == "processing" else CUSTOMERS
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(customers)) + "\n", encoding="utf-8")
    prefix = f"killed-{phase}"
    client = redis.Redis.from_url(redis_url)

    def slow(webhook_id: str, attempt: int) -> float | None:
        return 0.01 if phase == "delivering" else None

    with receiving(tmp_path / "a.jsonl", slow) as (a, url_a), receiving(tmp_path / "b.jsonl", slow) as (b, url_b):
        subs = [subscriber("killed-a", url_a, concurrency=1), subscriber("killed-b", url_b, segments=["recent_buyer"])]
        config = config_file(
            tmp_path / "config.yaml",
            {"name": "killed-a", "url": url_a, "concurrency": 1},
            {"name": "killed-b", "url": url_b, "segments": ["recent_buyer"]},
        )
        job = start_job(source, redis_url, prefix, config, tmp_path / "first.jsonl")
        try:
            deadline = time.monotonic() + 60
            while (a.accepted < 10) if phase == "delivering" else (client.xlen(f"{prefix}:changes") == 0):
                assert job.poll() is None and time.monotonic() < deadline, "the job ended before the kill"
                time.sleep(0.002)
            job.send_signal(signal.SIGKILL)
            job.wait(timeout=30)
        finally:
            job.kill()
        written_before, delivered_before = client.xlen(f"{prefix}:changes"), a.accepted
        restarted = start_job(source, redis_url, prefix, config, tmp_path / "changes.jsonl")
        _, stderr = restarted.communicate(timeout=120)
        assert restarted.returncode == 0, stderr
    changes = read_jsonl(tmp_path / "changes.jsonl")  # the restart replays the whole input: every change again
    if phase == "processing":
        assert 0 < written_before < len(changes)
    row = check_run(
        f"job killed (SIGKILL) while {phase}, then restarted", changes, list(zip(subs, (a, b), strict=True)),
        redis_url, prefix, reference_of(customers),
        notes=f"{written_before} changes written and {delivered_before} delivered to killed-a before the kill "
        "(retries in the job processes not counted here)",
    )  # fmt: skip
    assert row.delivered["killed-a"] == len(changes)


def test_a_replayed_run_queues_nothing_again(redis_url: str, sample_file: Path, tmp_path: Path) -> None:
    with receiving(tmp_path / "a.jsonl") as (a, url):
        sub = subscriber("again", url)
        first = run_job(sample_file, redis_url, tmp_path / "one", "again", with_subscribers(sub))
        second = run_job(sample_file, redis_url, tmp_path / "two", "again", with_subscribers(sub))
    assert first == second and len(a.lines()) == len(first) and a.duplicates == 0
    assert RedisSink(shared_client(redis_url), "again").routes[0].name == "again"
