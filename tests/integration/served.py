"""A gateway on a real loopback socket, with the hypercorn configuration it runs with for real."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from anyio.abc import SocketStream

from gateway.app import Gateway
from gateway.config import Settings
from gateway.devservices import free_port
from gateway.server import gateway_config
from tests.servers import SHUTDOWN_TIMEOUT_S, STARTUP_TIMEOUT_S, _accepts_connections, _ServerThread


@contextmanager
def serve_gateway(settings: Settings) -> Iterator[int]:
    """Serve a `Gateway` with `gateway_config(settings)` on a free port; yields the port."""
    port = free_port()
    config = gateway_config(settings, host="127.0.0.1", port=port)
    config.graceful_timeout = 1.0
    # Through logging, so a test's caplog sees what hypercorn reports.
    config.errorlog = logging.getLogger("hypercorn.error")
    thread = _ServerThread(Gateway(settings), config)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _accepts_connections(port):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {thread.error!r}")
            time.sleep(0.01)
        yield port
    finally:
        thread.stop.set()
        thread.join(SHUTDOWN_TIMEOUT_S)
    if thread.is_alive() or thread.error is not None:
        raise RuntimeError(f"gateway did not stop cleanly: {thread.error!r}")


async def read_until_closed(stream: SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = bytearray()
    try:
        while True:
            received += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return bytes(received)


async def read_response(stream: SocketStream) -> bytes:
    """One whole response with a Content-Length (headers and body), leaving the socket open."""
    received = bytearray()
    while b"\r\n\r\n" not in received:
        received += await stream.receive()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        body += await stream.receive()
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def headers_of(response: bytes) -> dict[bytes, bytes]:
    head = response.partition(b"\r\n\r\n")[0]
    pairs = (line.partition(b":") for line in head.split(b"\r\n")[1:])
    return {name.strip().lower(): value.strip() for name, _, value in pairs}


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]
