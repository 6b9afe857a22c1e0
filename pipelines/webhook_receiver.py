"""``segstream webhook-receiver``: a small Standard Webhooks receiver for demos and tests.

It verifies the signature (any of its secrets may match any signature of the request) and that the
timestamp is within the tolerance, answers 204, drops a repeated ``webhook-id`` (answering 204 again:
the sender must stop retrying) and appends what it accepted to a JSONL file, one line per delivery:
``{"webhook_id", "received_at" (ms), "body"}``. The ids already in the file count as seen, so a
restarted receiver still drops repeats. Bad signature or timestamp: 401; a body that is not JSON: 400.

A request body is read only up to ``max_body_bytes`` (default 1 MiB), and only with a valid
``Content-Length``: without one (or with a ``Transfer-Encoding``, e.g. chunked) the answer is 411, a
negative or malformed one 400, a larger one 413, each before any of the body is read (a client
sending ``Expect: 100-continue`` gets it instead of the go-ahead). Such a request ends its connection.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

from standardwebhooks import Webhook, WebhookVerificationError

MAX_TOLERANCE_S = 300  # the standardwebhooks package rejects timestamps more than 5 minutes off anyway
MAX_BODY_BYTES = 1 << 20  # default cap on a request body (1 MiB); a change event is well under 1 KiB


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


class WebhookReceiver:
    """Verifies, deduplicates and records deliveries; :meth:`serve` puts it on HTTP."""

    def __init__(
        self,
        secrets: Sequence[str],
        out: Path | None = None,
        tolerance_s: int = MAX_TOLERANCE_S,
        clock: Callable[[], float] = time.time,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if not 0 < tolerance_s <= MAX_TOLERANCE_S:
            raise ValueError(f"tolerance must be 1 to {MAX_TOLERANCE_S} seconds")
        if max_body_bytes < 1:
            raise ValueError("the body cap must be at least 1 byte")
        self.max_body_bytes = max_body_bytes
        self._webhooks = [Webhook(secret) for secret in secrets]
        self.tolerance_s = tolerance_s
        self.clock = clock
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._out: IO[str] | None = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.exists():
                with out.open(encoding="utf-8") as lines:
                    self._seen = {json.loads(line)["webhook_id"] for line in lines if line.strip()}
            self._out = out.open("a", encoding="utf-8")

    def handle(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Verify and record one request."""
        headers = {k.lower(): v for k, v in headers.items()}
        now = self.clock()
        try:
            stamp = float(headers.get("webhook-timestamp", ""))
        except ValueError:
            stamp = None
        if stamp is None or abs(now - stamp) > self.tolerance_s:
            return self._reject(401)
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return self._reject(400)
        if not any(self._verifies(webhook, text, headers) for webhook in self._webhooks):
            return self._reject(401)
        try:
            payload = json.loads(text)
        except ValueError:
            return self._reject(400)
        webhook_id = headers["webhook-id"]
        with self._lock:
            if webhook_id in self._seen:
                self.duplicates += 1
                return Reply(204)
            self._seen.add(webhook_id)
            self.accepted += 1
            if self._out is not None:
                line = {"webhook_id": webhook_id, "received_at": int(now * 1000), "body": payload}
                self._out.write(json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n")
                self._out.flush()
        return Reply(204)

    @staticmethod
    def _verifies(webhook: Webhook, text: str, headers: dict[str, str]) -> bool:
        try:
            webhook.verify(text, headers, json_parse=False)
        except (WebhookVerificationError, ValueError):  # ValueError: a malformed signature header
            return False
        return True

    def _reject(self, status: int) -> Reply:
        with self._lock:
            self.rejected += 1
        return Reply(status)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> ReceiverServer:
        """Start serving in a background thread (``port`` 0: any free port)."""
        return ReceiverServer(self, host, port)

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None


class ReceiverServer:
    """A threaded HTTP/1.1 server (keep-alive) around a receiver."""

    def __init__(self, receiver: WebhookReceiver, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"receiver": receiver})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/webhooks"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    receiver: WebhookReceiver

    def _length(self) -> int | Reply:
        """The body's length from the headers, or the refusal: 411 without a Content-Length or with a
        Transfer-Encoding alone, 400 for a malformed or negative one or both, 413 above the cap."""
        lengths = {value.strip() for value in self.headers.get_all("content-length") or []}
        if "transfer-encoding" in self.headers:
            return Reply(400 if lengths else 411)
        if not lengths:
            return Reply(411)
        if len(lengths) > 1 or not (length := lengths.pop()).isascii() or not length.isdigit():
            return Reply(400)
        digits = length.lstrip("0") or "0"  # (int() refuses thousands of digits)
        return Reply(413) if len(digits) > 18 or int(digits) > self.receiver.max_body_bytes else int(digits)

    def handle_expect_100(self) -> bool:
        """Refuse a body before the client sends it, when its headers already tell."""
        length = self._length()
        if isinstance(length, Reply):
            self._refuse(length)
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:
        length = self._length()
        if isinstance(length, Reply):
            self._refuse(length)
            return
        body = self.rfile.read(length)
        if len(body) < length:  # the client ended its side early
            self._refuse(Reply(400))
            return
        self._answer(self.receiver.handle(dict(self.headers.items()), body))

    def _refuse(self, reply: Reply) -> None:
        """Answer ``reply`` and end the connection: the body, unread, cannot be told from a next request."""
        self._answer(Reply(reply.status, {**reply.headers, "connection": "close"}))
        self.close_connection = True

    def _answer(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError):  # the sender gave up (its timeout)
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the receiver counts instead of logging every request."""
