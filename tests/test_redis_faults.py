"""The Redis sink and the delivery workers when Redis goes away: a real redis-server stopped and
restarted mid-run, a connection cut after a batch was sent but before its answer came back, and a
redis-server out of memory (maxmemory, noeviction) filled up mid-run."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from pipelines import redis_store
from pipelines.cli import main
from pipelines.delivery_queue import register
from pipelines.redis_store import RedisSink, RedisUnavailable, retrying
from tests.conftest import NOW_MS, read_jsonl
from tests.delivery_harness import (
    SECRET,
    FaultRow,
    RedisProcess,
    check_customer_order,
    check_delivered,
    deliveries_metric,
    receiving,
    redis_state,
    run_job,
    subscriber,
    wanted,
    with_subscribers,
)
from transforms.changes import SegmentChange, change_id
from transforms.dead_letters import DeadLetter
from transforms.sample_stream import sample_lines


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def test_redis_stopped_and_restarted_mid_run_loses_nothing(
    redis_process: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(300)) + "\n", encoding="utf-8")
    url = redis_process.url
    run_job(source, url, tmp_path / "reference", "reference", with_subscribers())
    client = redis.Redis.from_url(url)
    with receiving(tmp_path / "a.jsonl") as (a, url_a), receiving(tmp_path / "b.jsonl") as (b, url_b):
        subs = [subscriber("outage-a", url_a), subscriber("outage-b", url_b, segments=["recent_buyer"])]
        job = threading.Thread(
            target=run_job, args=(source, url, tmp_path / "out", "outage", with_subscribers(*subs)), daemon=True
        )
        with caplog.at_level(logging.WARNING, logger="segstream"):
            job.start()
            while client.xlen("outage:changes") == 0:
                time.sleep(0.002)
            redis_process.stop()
            written_before = len(read_jsonl(tmp_path / "out" / "changes.jsonl"))
            assert job.is_alive()
            time.sleep(1.0)
            redis_process.start()
            job.join(timeout=120)
        assert not job.is_alive()
    changes = read_jsonl(tmp_path / "out" / "changes.jsonl")
    assert written_before < len(changes), "the outage came after the last change"
    assert "Redis unavailable" in caplog.text and "Redis is back" in caplog.text
    assert redis_state(client, "outage") == redis_state(client, "reference")
    for sub, receiver in zip(subs, (a, b), strict=True):
        check_delivered(changes, sub, receiver)
        check_customer_order(receiver)
    FaultRow(
        fault="redis-server stopped for 1 s mid-run, then restarted",
        emitted=len(changes),
        delivered={s.name: len(r.lines()) for s, r in zip(subs, (a, b), strict=True)},
        expected={s.name: len(wanted(changes, s)) for s in subs},
        retries=sum(deliveries_metric(s.name, "retried") for s in subs),
        dead_letters=sum(deliveries_metric(s.name, "dead_lettered") for s in subs),
        repeats_dropped=a.duplicates + b.duplicates,
        notes=f"stopped after the first batch ({written_before} changes emitted by then); the sink and the "
        "workers waited and reconnected",
    ).record()


class CuttingProxy:
    """A TCP proxy to Redis that, when armed, forwards the next transaction (EXEC) to Redis but cuts
    the connection before the answer gets back: the client cannot know whether it was applied."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            swallow = threading.Event()
            threading.Thread(target=self._to_server, args=(client, server, swallow), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, swallow), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        while data := _recv(client):
            cut = self.armed.is_set() and b"$4\r\nEXEC\r\n" in data
            if cut:
                swallow.set()  # the answer to this one never reaches the client
            server.sendall(data)
            if cut:
                self.armed.clear()
                time.sleep(0.2)  # Redis applies the transaction meanwhile
                self.cuts += 1
                for sock in (client, server):
                    sock.close()
                return

    def _to_client(self, server: socket.socket, client: socket.socket, swallow: threading.Event) -> None:
        while (data := _recv(server)) and not swallow.is_set():
            try:
                client.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def test_a_batch_retried_after_its_answer_was_lost_is_applied_once(redis_process: RedisProcess) -> None:
    direct = redis.Redis.from_url(redis_process.url)
    changes = [
        SegmentChange(change_id("user:1", "s", direction, seq), "user:1", "s", direction, seq, seq, "rule", "v")
        for seq, direction in ((1, "entered"), (2, "exited"), (3, "entered"))
    ]
    profile = {"customer_id": "user:1", "seq": 3, "as_of": 30, "segments": ["s"]}
    letter = DeadLetter("malformed", None, "not JSON", "{", "events.jsonl", "7")
    hooks = subscriber("cut", "http://127.0.0.1:9/")
    for prefix in ("reference", "cut"):
        register(direct, prefix, [hooks])
    RedisSink(direct, "reference").write(changes, [profile], [letter])
    proxy = CuttingProxy(redis_process.port)
    try:
        sink = RedisSink(redis.Redis(port=proxy.port, socket_timeout=5), "cut")
        proxy.armed.set()
        sink.write(changes, [profile], [letter])
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert redis_state(direct, "cut") == redis_state(direct, "reference")
    assert direct.xlen("cut:changes") == 3 and direct.xlen("cut:dead_letters") == 1
    assert direct.xlen("cut:webhooks:cut:queue") == 3  # queued once


def test_the_sink_gives_up_after_the_outage_limit(redis_process: RedisProcess) -> None:
    client = redis.Redis.from_url(redis_process.url, socket_connect_timeout=0.5)
    redis_process.stop()
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="Redis unavailable for 0 s, cannot ping"):
        retrying(lambda _: client.ping(), "ping", limit_s=0.3)
    assert 0.25 < time.monotonic() - started < 3


def test_the_live_reader_waits_for_redis_and_reads_on(redis_process: RedisProcess) -> None:
    """A live source's reader holds through an outage (redis-server stopped and started with its
    data) and then reads what was added meanwhile; nothing is skipped."""
    from pipelines.redis_stream import StreamReader, StreamSpec

    client = redis.Redis.from_url(redis_process.url)
    host_port = redis_process.url.removeprefix("redis://").split("/")[0]
    reader = StreamReader(StreamSpec.parse(f"redis-stream://{host_port}/clicks"))
    assert reader.read() == []  # its own backlog from an earlier run: none
    client.xadd("clicks", {"event": b'{"n": 1}'})
    assert [event for _, event in reader.read()] == [b'{"n": 1}']
    # (the server keeps an append-only file: the restarted one has the stream and its consumer group)
    redis_process.stop()
    restart = threading.Timer(0.8, redis_process.start)
    restart.start()
    started = time.monotonic()
    assert reader.read() == []  # blocks until the server is back, then finds nothing new
    assert time.monotonic() - started >= 0.5
    restart.join()
    redis.Redis.from_url(redis_process.url).xadd("clicks", {"event": b'{"n": 2}'})
    assert [event for _, event in reader.read()] == [b'{"n": 2}']


# What a record looks like in a line of output: the sample stream's ids, a JSON object.
RECORD = re.compile(r"user-\d{5}|anon-\d{5}|ev-\d{7}|customer_id|\{")
FILLER = "filler"
CHUNK = 64 << 10


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server with 16 MB of memory that refuses writes beyond (no eviction)."""
    server = RedisProcess(tmp_path / "small-redis", "--maxmemory", "16mb", "--maxmemory-policy", "noeviction")
    server.start()
    yield server
    server.stop()


def fill(client: redis.Redis, room: int = 2 << 20) -> None:
    """Use the server's memory up but ``room`` bytes (the job's own writes take it and then some:
    a write is checked before it runs, so the one that goes past maxmemory is the last let in)."""
    memory = client.info("memory")
    for n in range((memory["maxmemory"] - memory["used_memory"] - room) // CHUNK):
        client.hset(FILLER, str(n), b"\0" * CHUNK)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a worker's traceback
def test_redis_out_of_memory_mid_run_holds_the_job_until_memory_frees_and_loses_nothing(
    small_redis: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(300)) + "\n", encoding="utf-8")
    url = small_redis.url
    run_job(source, url, tmp_path / "reference", "reference", with_subscribers())
    client = redis.Redis.from_url(url)
    with receiving(tmp_path / "a.jsonl") as (a, url_a):
        sub = subscriber("full-a", url_a)
        job = threading.Thread(
            target=run_job, args=(source, url, tmp_path / "out", "full", with_subscribers(sub)), daemon=True
        )
        with caplog.at_level(logging.WARNING, logger="segstream"):
            fill(client)
            job.start()
            deadline = time.monotonic() + 60
            while "Redis is out of memory" not in caplog.text:
                assert job.is_alive() and time.monotonic() < deadline, "the job did not meet the full Redis"
                time.sleep(0.01)
            written_before = client.xlen("full:changes")
            time.sleep(1.0)
            assert job.is_alive() and client.xlen("full:changes") == written_before  # held: nothing written
            client.delete(FILLER)
            job.join(timeout=120)
        assert not job.is_alive()
    changes = read_jsonl(tmp_path / "out" / "changes.jsonl")
    assert 0 < written_before < len(changes)
    assert redis_state(client, "full") == redis_state(client, "reference")  # every change and profile, once
    check_delivered(changes, sub, a)
    check_customer_order(a)
    sink_warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Redis is out of memory")]
    assert sink_warnings == ["Redis is out of memory (used memory > maxmemory, writes refused); retrying to write "
                             "a batch for up to 600 s"]  # fmt: skip
    assert "Redis accepts writes again" in caplog.text
    output = capsys.readouterr()
    lines = caplog.text.splitlines() + output.out.splitlines() + output.err.splitlines()
    assert not [line for line in lines if RECORD.search(line)]
    FaultRow(
        fault="Redis out of memory mid-run (maxmemory 16 MB, noeviction, filled up), freed 1 s later",
        emitted=len(changes),
        delivered={sub.name: len(a.lines())},
        expected={sub.name: len(wanted(changes, sub))},
        retries=deliveries_metric(sub.name, "retried"),
        dead_letters=deliveries_metric(sub.name, "dead_lettered"),
        repeats_dropped=a.duplicates,
        notes=f"the job's writes took the last 2 MB ({written_before} changes written by then); the sink "
        "held its batch and retried; no record in the logs",
    ).record()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_redis_that_stays_out_of_memory_fails_the_job_with_one_line_and_no_record(
    small_redis: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "OUTAGE_LIMIT_S", 2.0)
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(sample_lines(300)) + "\n", encoding="utf-8")
    client = redis.Redis.from_url(small_redis.url)
    with receiving(tmp_path / "a.jsonl") as (_, hook), caplog.at_level(logging.WARNING, logger="segstream"):
        fill(client)
        started = time.monotonic()
        result = CliRunner().invoke(
            main,
            ["run", "--source", str(source), "--engine", "core", "--redis-url", small_redis.url,
             "--redis-prefix", "stuck", "--now", str(NOW_MS), "--no-progress", "--webhook", hook,
             "--webhook-secret", SECRET, "--changes-out", str(tmp_path / "changes.jsonl")],
        )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines() if not line.startswith("warning: ")] == [
        "Error: Redis out of memory for 2 s, cannot write a batch: free memory or raise its maxmemory"
    ]  # (the warnings: the built-in salt, no model key)
    assert time.monotonic() - started < 30
    assert 0 < client.xlen("stuck:changes") < len(read_jsonl(tmp_path / "changes.jsonl"))  # records were held
    lines = caplog.text.splitlines() + result.output.splitlines()
    assert "Redis is out of memory" in caplog.text
    assert not [line for line in lines if RECORD.search(line)]
