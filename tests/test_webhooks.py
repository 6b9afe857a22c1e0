"""Standard Webhooks signing and the receiver (`segstream webhook-receiver`), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from pipelines.webhook_receiver import WebhookReceiver
from pipelines.webhooks import HttpSender, Signer
from tests.conftest import free_port, read_jsonl

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
