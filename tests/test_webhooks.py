"""Standard Webhooks signing, the sender's per-attempt deadline and the receiver (`segstream
webhook-receiver`, its body cap included), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from pipelines.webhook_receiver import MAX_BODY_BYTES, WebhookReceiver
from pipelines.webhooks import Attempt, HttpSender, Signer
from tests.conftest import free_port, read_jsonl
from tests.delivery_harness import SECRET, Drip, dripping

OLD = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA"
NEW = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw"
BODY = json.dumps({"change_id": "c1", "customer_id": "user:1", "segment": "s", "change": "entered", "seq": 1})


def test_signatures_verify_with_the_standardwebhooks_package_under_every_secret() -> None:
    now = time.time()
    headers = Signer([OLD, NEW]).headers("c1", BODY, now)
    assert headers["webhook-id"] == "c1" and headers["webhook-timestamp"] == str(int(now))
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(sig.startswith("v1,") for sig in headers["webhook-signature"].split(" "))
    for secret in (OLD, NEW):  # a receiver holding either secret accepts it (rotation)
        assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_the_receiver_verifies_deduplicates_and_records(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    receiver = WebhookReceiver([NEW], tmp_path / "in.jsonl", tolerance_s=60, clock=lambda: clock[0])
    sign = Signer([OLD, NEW]).headers
    clock[0] = time.time()
    assert receiver.handle(sign("c1", BODY, clock[0]), BODY.encode()).status == 204
    assert receiver.handle(sign("c1", BODY, clock[0]), BODY.encode()).status == 204  # a repeat: dropped
    assert receiver.handle(Signer([OLD]).headers("c2", BODY, clock[0]), BODY.encode()).status == 401  # old secret
    assert receiver.handle(sign("c3", BODY, clock[0] - 61), BODY.encode()).status == 401  # beyond tolerance
    assert receiver.handle(sign("c4", BODY, clock[0]), b'{"tampered": 1}').status == 401
    assert receiver.handle({**sign("c5", BODY, clock[0]), "webhook-signature": "garbage"}, BODY.encode()).status == 401
    assert receiver.handle({"webhook-id": "c6"}, BODY.encode()).status == 401
    assert receiver.handle(sign("c7", "not json", clock[0]), b"not json").status == 400
    receiver.close()
    assert (receiver.accepted, receiver.duplicates, receiver.rejected) == (1, 1, 6)
    [line] = read_jsonl(tmp_path / "in.jsonl")
    assert line["webhook_id"] == "c1" and line["body"] == json.loads(BODY)
    restarted = WebhookReceiver([NEW], tmp_path / "in.jsonl")  # ids in the file count as seen
    assert restarted.handle(sign("c1", BODY, time.time()), BODY.encode()).status == 204
    assert restarted.duplicates == 1 and restarted.accepted == 0


def test_the_sender_reports_statuses_retry_after_and_connection_errors(tmp_path: Path) -> None:
    receiver = WebhookReceiver([NEW], tmp_path / "in.jsonl")
    server = receiver.serve()
    try:
        sender = HttpSender(server.url, timeout_ms=2_000)
        for n in range(3):  # keep-alive connection reused
            attempt = sender.post(BODY.encode(), Signer([NEW]).headers(f"id{n}", BODY, time.time()))
            assert attempt.status == 204
        assert sender.post(BODY.encode(), {"webhook-id": "x"}).status == 401
        sender.close()
    finally:
        server.stop()
        receiver.close()
    refused = HttpSender(f"http://127.0.0.1:{free_port()}/", timeout_ms=500).post(b"{}", {})
    assert refused.status is None and refused.error.startswith("connection error")


@pytest.mark.parametrize("drip", [Drip(204), Drip(200, body=40)], ids=["status line", "body"])
def test_an_attempt_ends_at_its_deadline_however_slowly_the_answer_drips(drip: Drip, tmp_path: Path) -> None:
    """The endpoint answers a byte every 100 ms (4 s or more in all): each byte comes well within the
    timeout, yet the attempt ends at the timeout, as a timeout; the next one (answered at once) goes through."""
    sign = Signer([SECRET]).headers
    with dripping(tmp_path / "in.jsonl", lambda _, attempt: drip if attempt == 1 else None) as (receiver, url):
        sender = HttpSender(url, timeout_ms=500)
        started = time.monotonic()
        attempt = sender.post(BODY.encode(), sign("c1", BODY, time.time()))
        elapsed = time.monotonic() - started
        assert attempt == Attempt(None, error="timeout")
        assert 0.49 <= elapsed < 0.5 + 0.3
        assert sender.post(BODY.encode(), sign("c1", BODY, time.time())).status == 204
        sender.close()
    assert [line["webhook_id"] for line in receiver.lines()] == ["c1"]


@pytest.fixture
def receiver_port(tmp_path: Path) -> Iterator[tuple[WebhookReceiver, int]]:
    """A receiver with the default body cap, served on 127.0.0.1; it and its port."""
    receiver = WebhookReceiver([NEW], tmp_path / "in.jsonl")
    server = receiver.serve()
    yield receiver, server.httpd.server_address[1]
    server.stop()
    receiver.close()


def exchange(port: int, request: bytes, end: bool = False) -> bytes:
    """Send ``request`` on a raw connection (our side stays open unless ``end``) and read until the
    server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        if end:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("content-length: -1", 400),
        ("content-length: 12abc", 400),
        ("content-length: +5", 400),
        ("content-length: 5\r\ncontent-length: 6", 400),
        ("transfer-encoding: chunked\r\ncontent-length: 5", 400),
        ("", 411),
        ("transfer-encoding: chunked", 411),
        (f"content-length: {MAX_BODY_BYTES + 1}", 413),
        ("content-length: 99999999999999999999999999", 413),
    ],
)
def test_the_receiver_refuses_a_body_it_cannot_bound_without_reading_it(
    headers: str, status: int, receiver_port: tuple[WebhookReceiver, int]
) -> None:
    """The body's first bytes follow the headers, but never its end: the answer comes from the headers alone."""
    receiver, port = receiver_port
    head = "POST /webhooks HTTP/1.1\r\nhost: 127.0.0.1\r\n" + (headers + "\r\n" if headers else "") + "\r\n"
    answer = exchange(port, head.encode() + b"{" * 100)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert answer.count(b"HTTP/1.1 ") == 1 and b"connection: close" in answer.lower()  # then it hung up
    assert (receiver.accepted, receiver.rejected) == (0, 0)  # the body never reached the receiver


def test_the_body_cap_is_configurable_and_holds_for_every_client(tmp_path: Path) -> None:
    receiver = WebhookReceiver([NEW], tmp_path / "in.jsonl", max_body_bytes=len(BODY))
    server = receiver.serve()
    port = server.httpd.server_address[1]
    sign = Signer([NEW]).headers
    longer = BODY + " "
    try:
        sender = HttpSender(server.url, timeout_ms=2_000)
        assert sender.post(BODY.encode(), sign("c1", BODY, time.time())).status == 204  # the cap itself
        assert sender.post(longer.encode(), sign("c2", longer, time.time())).status == 413
        sender.close()
        head = f"POST /webhooks HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(longer)}\r\n"
        # one asking to go ahead first is refused before it sends the body (no "100 Continue")
        assert exchange(port, (head + "expect: 100-continue\r\n\r\n").encode()).startswith(b"HTTP/1.1 413 ")
        # one sending a body over the cap at once gets the answer too
        eager = f"POST /webhooks HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {1 << 20}\r\n\r\n".encode()
        assert exchange(port, eager + b"x" * (1 << 20)).startswith(b"HTTP/1.1 413 ")
        # one ending its side before the whole body came: 400
        short = f"POST /webhooks HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(BODY)}\r\n\r\n{{".encode()
        assert exchange(port, short, end=True).startswith(b"HTTP/1.1 400 ")
    finally:
        server.stop()
        receiver.close()
    assert [line["webhook_id"] for line in read_jsonl(tmp_path / "in.jsonl")] == ["c1"]
    with pytest.raises(ValueError, match="at least 1 byte"):
        WebhookReceiver([NEW], max_body_bytes=0)


@pytest.mark.timeout(60)
def test_webhook_receiver_command_serves_until_sigint(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "received.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "webhook-receiver", "--port", str(port), "--secret", NEW,
         "--out", str(out), "--tolerance", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        sender = HttpSender(f"http://127.0.0.1:{port}/hooks", timeout_ms=1_000)
        deadline = time.monotonic() + 30
        while (attempt := sender.post(BODY.encode(), Signer([NEW]).headers("c1", BODY, time.time()))).status is None:
            assert time.monotonic() < deadline, attempt.error
            time.sleep(0.1)
        assert attempt.status == 204
        sender.close()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "accepted 1" in stdout
    assert [line["webhook_id"] for line in read_jsonl(out)] == ["c1"]


def test_webhook_receiver_command_rejects_a_bad_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "webhook-receiver", "--secret", "hunter2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["Error: --secret: a webhook secret starts with 'whsec_'"]
