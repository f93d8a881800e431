"""Serve an ASGI app with hypercorn on a real loopback socket, from a thread with its own loop."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
from hypercorn.asyncio import serve
from hypercorn.config import Config

from gateway.devservices import free_port

STARTUP_TIMEOUT_S = 30.0
# Hypercorn's graceful_timeout plus lifespan shutdown, with room to spare.
SHUTDOWN_TIMEOUT_S = 15.0


class _ServerThread(threading.Thread):
    """Runs hypercorn until `stop` is set; remembers why it ended if it failed."""

    def __init__(self, app: Any, config: Config) -> None:
        super().__init__(name="hypercorn-test-server", daemon=True)
        self.app = app
        self.config = config
        self.stop = threading.Event()
        self.error: BaseException | None = None

    async def _shutdown_trigger(self) -> None:
        await anyio.to_thread.run_sync(self.stop.wait, abandon_on_cancel=True)

    async def _serve(self) -> None:
        await serve(self.app, self.config, shutdown_trigger=self._shutdown_trigger)

    def run(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as error:  # reported to the test thread instead
            self.error = error


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def serve_in_thread(app: Any, *, graceful_timeout_s: float = 1.0) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port; yields its base URL `http://127.0.0.1:PORT`.

    On exit the server shuts down (in-flight requests get graceful_timeout_s) and its thread is
    joined; a server that fails to start or to stop raises RuntimeError.
    """
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    # Through logging rather than stderr, so pytest shows server errors with the failing test.
    config.errorlog = logging.getLogger("hypercorn.error")
    thread = _ServerThread(app, config)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _accepts_connections(port):
            if not thread.is_alive():
                raise RuntimeError(
                    f"test server failed to start: {thread.error!r}"
                ) from thread.error
            if time.monotonic() > deadline:
                raise RuntimeError(f"test server did not listen on port {port} in time")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        thread.stop.set()
        thread.join(SHUTDOWN_TIMEOUT_S)
    if thread.is_alive():
        raise RuntimeError(f"test server on port {port} did not stop in {SHUTDOWN_TIMEOUT_S} s")
    if thread.error is not None:
        raise RuntimeError(f"test server ended with an error: {thread.error!r}") from thread.error
