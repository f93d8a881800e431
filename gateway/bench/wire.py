"""A lean HTTP/1.1 keep-alive client connection for the bundled load generator.

A raw asyncio Protocol (not anyio, unlike the gateway: a load generator must stay cheap) with a
hand-written response parser (Content-Length or chunked) that times a stream's first body byte.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast
from urllib.parse import urlsplit


class ConnectionLost(Exception):
    """The server closed the connection before the answer was complete."""


class Answer:
    """One response as the generator sees it: status, time to first body byte, time to end."""

    __slots__ = ("done_at", "first_byte_at", "status")

    def __init__(self) -> None:
        self.status = 0
        self.first_byte_at = 0.0
        self.done_at = 0.0


def build_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, the raw POST bytes) for url."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Client(asyncio.Protocol):
    """Sends one request at a time and parses the answer as its bytes arrive."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer = Answer()
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers_waiter: asyncio.Future[int] | None = None
        self._in_headers = True
        self._remaining = 0  # body bytes still due (Content-Length), or -1 for chunked
        self._chunk_left = 0  # bytes of the current chunk plus its CRLF still due
        self.closed = False
        self._closing = False
        self._close_after = False  # the server said `Connection: close`

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for waiter in (self._waiter, self._headers_waiter):
            if waiter is not None and not waiter.done():
                # A close of our own is no error, and nobody may be waiting to hear of it.
                if self._closing:
                    waiter.cancel()
                else:
                    waiter.set_exception(ConnectionLost())

    def send(self, raw: bytes) -> asyncio.Future[Answer]:
        """Write one request; the future resolves when its answer is complete."""
        if self.closed or self._transport is None:
            raise ConnectionLost
        loop = asyncio.get_running_loop()
        self._answer = Answer()
        self._in_headers, self._buffer = True, bytearray()
        self._waiter = loop.create_future()
        self._headers_waiter = loop.create_future()
        self._transport.write(raw)
        return self._waiter

    def headers_received(self) -> asyncio.Future[int]:
        """Resolves with the status as soon as the status line and headers are in."""
        assert self._headers_waiter is not None
        return self._headers_waiter

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._in_headers:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._start(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        if self._remaining >= 0:
            self._plain_body()
        else:
            self._chunked_body()

    def _start(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self._answer.status = int(lines[0].split(b" ", 2)[1])
        self._in_headers = False
        self._remaining = 0
        self._close_after = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._remaining = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._remaining, self._chunk_left = -1, 0
            elif name == b"connection" and b"close" in value.lower():
                # Hypercorn ends a connection after keep_alive_max_requests (1000) answers.
                self._close_after = True
        if self._headers_waiter is not None and not self._headers_waiter.done():
            self._headers_waiter.set_result(self._answer.status)

    def _plain_body(self) -> None:
        if self._buffer and not self._answer.first_byte_at:
            self._answer.first_byte_at = time.perf_counter()
        self._remaining -= len(self._buffer)
        self._buffer.clear()
        if self._remaining <= 0:
            self._finish()

    def _chunked_body(self) -> None:
        buffer = self._buffer
        while True:
            if self._chunk_left:
                taken = min(self._chunk_left, len(buffer))
                del buffer[:taken]
                self._chunk_left -= taken
                if self._chunk_left:
                    return
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
            if size == 0:
                # The last chunk; this client sends no TE: trailers, so only CRLF follows.
                if len(buffer) < end + 4:
                    return
                del buffer[: end + 4]
                self._finish()
                return
            if not self._answer.first_byte_at:
                self._answer.first_byte_at = time.perf_counter()
            del buffer[: end + 2]
            self._chunk_left = size + 2

    def _finish(self) -> None:
        self._answer.done_at = time.perf_counter()
        if self._close_after:
            self.close()
            self.closed = True  # the next request takes a new connection
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._answer)
