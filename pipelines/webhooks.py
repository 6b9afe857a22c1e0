"""Standard Webhooks requests: signing (the ``standardwebhooks`` package) and one HTTP attempt.

Headers: ``webhook-id`` (the change id, so a retry or a replay is recognisable), ``webhook-timestamp``
(seconds, the time of the attempt) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
``id.timestamp.body``, once per secret, space-separated, so a receiver holding either the old or the
new secret accepts the request while secrets rotate.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from standardwebhooks import Webhook

USER_AGENT = "segstream-webhooks/0.1"
MAX_RESPONSE_BYTES = 64 * 1024


class Signer:
    """Signs request bodies with every secret of a subscriber."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._webhooks = [Webhook(secret) for secret in secrets]

    def headers(self, webhook_id: str, body: str, now_s: float) -> dict[str, str]:
        timestamp = datetime.fromtimestamp(int(now_s), UTC)
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now_s)),
            "webhook-signature": " ".join(w.sign(webhook_id, timestamp, body) for w in self._webhooks),
            "content-type": "application/json",
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST got: a status, or no response at all (``status`` None, ``error`` says why)."""

    status: int | None
    retry_after: str | None = None
    error: str = ""


class _Deadlines:
    """Ends requests at their deadline. ``http.client``'s timeout bounds each socket operation, so a
    peer sending its answer a byte at a time would hold a request for ever; here one thread per
    sender shuts down the socket of every request still running at its deadline, which ends a send
    or read blocked on it at once (a connect is bounded by the socket timeout, which is as long)."""

    RECHECK_S = 0.01  # an expired request is shut again while it runs (its socket may be new: TLS)

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: dict[int, tuple[float, http.client.HTTPConnection]] = {}  # id -> (deadline, connection)
        self._expired: set[int] = set()
        self._ids = itertools.count()
        self._stop: threading.Event | None = None  # the running thread's; None: no thread

    def start(self, connection: http.client.HTTPConnection, timeout_s: float) -> int:
        """Watch a request on ``connection`` from now on; its id for :meth:`end`."""
        with self._changed:
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(target=self._run, args=(self._stop,), name="webhook-deadlines", daemon=True).start()
            request = next(self._ids)
            self._running[request] = (time.monotonic() + timeout_s, connection)
            if len(self._running) == 1:  # else the thread wakes before this later deadline anyway
                self._changed.notify()
        return request

    def end(self, request: int) -> bool:
        """Stop watching ``request`` (its socket is not touched afterwards); whether it ran past its deadline."""
        with self._changed:
            del self._running[request]
            if request in self._expired:
                self._expired.discard(request)
                return True
            return False

    def close(self) -> None:
        """Stop the thread (a later :meth:`start` starts another)."""
        with self._changed:
            if self._stop is not None:
                self._stop.set()
                self._stop = None
                self._changed.notify_all()

    def _run(self, stop: threading.Event) -> None:
        with self._changed:
            while not stop.is_set():
                now = time.monotonic()
                wait: float | None = None
                for request, (deadline, connection) in self._running.items():
                    if now >= deadline:
                        self._expired.add(request)
                        _shut(connection.sock)
                        left = self.RECHECK_S
                    else:
                        left = deadline - now
                    wait = left if wait is None else min(wait, left)
                self._changed.wait(wait)


def _shut(sock: socket.socket | None) -> None:
    """Shut ``sock`` down both ways (not close: its owner does), waking whoever is blocked on it."""
    if sock is not None:
        with contextlib.suppress(OSError):  # not connected (yet, or any more)
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: an SSLSocket's drops its state


class HttpSender:
    """POSTs to one URL, one keep-alive connection per sending thread; never retries nor follows redirects.
    Each attempt (connect, send, answer) ends by ``timeout_ms``, however the peer paces its bytes.

    (``http.client`` directly: about 1.7x the requests per second of urllib3 on loopback.)"""

    def __init__(self, url: str, timeout_ms: int) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout_s = timeout_ms / 1000
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._deadlines = _Deadlines()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is not None and connection.sock is not None and _dropped(connection.sock):
            connection.close()  # the server closed the idle connection: reconnect rather than fail
        if connection is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            connection = kind(self.host, self.port, timeout=self.timeout_s)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def post(self, body: bytes, headers: dict[str, str]) -> Attempt:
        """One attempt; an answer not complete by the deadline is a timeout, whatever came before."""
        connection = self._connection()
        request = self._deadlines.start(connection, self.timeout_s)
        try:
            attempt, finished = self._exchange(connection, body, headers)
        finally:
            expired = self._deadlines.end(request)
        if expired:
            attempt, finished = Attempt(None, error="timeout"), False
        if not finished:
            connection.close()
        return attempt

    def _exchange(
        self, connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
    ) -> tuple[Attempt, bool]:
        """The request and its answer; whether the answer was read to its end (the connection can
        carry the next request)."""
        try:
            connection.request("POST", self.target, body=body, headers={**headers, "user-agent": USER_AGENT})
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
        except TimeoutError:
            return Attempt(None, error="timeout"), False
        except (OSError, http.client.HTTPException) as error:
            return Attempt(None, error=f"connection error: {type(error).__name__}"), False
        return Attempt(response.status, response.getheader("retry-after")), response.isclosed()

    def close(self) -> None:
        self._deadlines.close()
        with self._lock:
            for connection in self._connections:
                connection.close()


def _dropped(sock: socket.socket) -> bool:
    """An idle keep-alive connection is readable only when the server closed it (or sent garbage)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
