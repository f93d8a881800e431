"""An httpx transport for one backend: a bounded pool of keep-alive HTTP/1.1 connections.

The httpx API stays (`httpx.Request` in, `httpx.Response` out, httpx's exceptions); the wire is
ours: asyncio protocols and llhttp, about half the CPU of the aiohttp stack it replaced. Each
request's `timeout` extension (connect, read, write, pool; seconds) bounds its waits. A
backend's own requests skip `httpx.Request`: `exchange` takes a head built from a fixed part.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence

import httpx

from gateway.upstream.connection import Connection

# An idle connection older than this is closed rather than reused: the backend may be about to.
KEEPALIVE_EXPIRY_S = 15.0
_HTTP11 = {"http_version": b"HTTP/1.1"}


class Pool:
    """At most `max_connections` sockets to one origin; idle ones reused newest first."""

    def __init__(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None, max_connections: int
    ) -> None:
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def acquire(
        self, *, fresh: bool, pool_timeout_s: float | None, connect_timeout_s: float | None
    ) -> Connection:
        """An idle connection (unless `fresh`), else a new one, waiting for room if need be."""
        loop = asyncio.get_running_loop()
        deadline_s = None if pool_timeout_s is None else loop.time() + pool_timeout_s
        while True:
            if self._closed:
                raise httpx.ConnectError("the backend's client is closed")
            now_s = time.monotonic()
            while self._idle and not fresh:
                connection = self._idle.pop()
                if not connection.lost and now_s - connection.idle_since_s < KEEPALIVE_EXPIRY_S:
                    return connection
                self._discard(connection)
            if self._idle and self._open >= self._max_connections:
                self._discard(self._idle.pop(0))  # the oldest idle one makes room
            if self._open < self._max_connections:
                return await self._connect(loop, connect_timeout_s)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline_s):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no connection to the backend came free") from None
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the turn passes to the next
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, timeout_s: float | None
    ) -> Connection:
        self._open += 1
        try:
            async with asyncio.timeout(timeout_s):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop), self._host, self._port, ssl=self._ssl_context
                )
        except TimeoutError:
            self._closed_one()
            raise httpx.ConnectTimeout("connecting to the backend timed out") from None
        except OSError as exc:  # refused, unreachable, no such host, a certificate refused
            self._closed_one()
            # Chained: `backends probe` names the root cause (ConnectionRefusedError, gaierror).
            reason = type(exc).__name__
            raise httpx.ConnectError(f"cannot connect to the backend: {reason}") from exc
        except BaseException:
            self._closed_one()
            raise
        return connection

    def release(self, connection: Connection) -> None:
        """Back to the pool when it can carry another exchange; closed otherwise."""
        connection.finish()
        if connection.reusable and not self._closed:
            connection.used = True
            connection.idle_since_s = time.monotonic()
            self._idle.append(connection)
            self._wake_one()
        else:
            self._discard(connection)

    def _discard(self, connection: Connection) -> None:
        connection.close()
        self._closed_one()

    def _closed_one(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Body(httpx.AsyncByteStream):
    """The answer's body as the socket delivers it; closing it early drops the connection."""

    def __init__(self, pool: Pool, connection: Connection, read_timeout_s: float | None) -> None:
        self._pool = pool
        self._connection: Connection | None = connection
        self._read_timeout_s = read_timeout_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed
        while (chunk := await connection.chunk(self._read_timeout_s)) is not None:
            yield chunk

    async def aclose(self) -> None:
        if self._connection is not None:
            self._pool.release(self._connection)
            self._connection = None


class Transport(httpx.AsyncBaseTransport):
    """Sends each request to `origin` (scheme, host and port; the request's path is kept)."""

    def __init__(
        self,
        origin: httpx.URL,
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if origin.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {origin.scheme}")
        tls = origin.scheme == "https"
        port = origin.port or (443 if tls else 80)
        context = (ssl_context or ssl.create_default_context()) if tls else None
        self._pool = Pool(origin.host, port, context, max_connections)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout_s: dict[str, float | None] = request.extensions.get("timeout", {})
        return await self.exchange(request_head(request), request.content, timeout_s, request)

    async def exchange(
        self,
        head: bytes,
        body: bytes,
        timeout_s: Mapping[str, float | None],
        request: httpx.Request | None = None,
    ) -> httpx.Response:
        """Send a whole head (`request_head`, `whole_head`) and body; the answer's head back."""
        fresh = False
        while True:
            connection = await self._pool.acquire(
                fresh=fresh,
                pool_timeout_s=timeout_s.get("pool"),
                connect_timeout_s=timeout_s.get("connect"),
            )
            try:
                await connection.send(head, body, timeout_s.get("write"))
                status, headers = await connection.head(timeout_s.get("read"))
            except (httpx.WriteError, httpx.RemoteProtocolError):
                self._pool.release(connection)
                # A kept-alive socket the backend closed as we sent: once more on a new one.
                if connection.used and not connection.received_any and not fresh:
                    fresh = True
                    continue
                raise
            except BaseException:
                self._pool.release(connection)
                raise
            stream = _Body(self._pool, connection, timeout_s.get("read"))
            return httpx.Response(
                status, headers=headers, stream=stream, request=request, extensions=_HTTP11
            )

    async def aclose(self) -> None:
        self._pool.close()


def request_head(request: httpx.Request) -> bytes:
    """The request line and headers. httpx has set Host and Content-Length."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [header_line(name, value) for name, value in request.headers.raw]
    lines.append(b"\r\n")
    return b"".join(lines)


def fixed_head(method: str, url: httpx.URL, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The request line, Host and `headers`: what every request of `method` to `url` starts
    with, built once. `whole_head` ends it."""
    lines = [b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), url.raw_path)]
    lines.append(header_line(b"host", url.netloc))
    lines += [header_line(name, value) for name, value in headers]
    return b"".join(lines)


def whole_head(
    fixed: bytes, body_bytes: int | None, headers: Sequence[tuple[bytes, bytes]]
) -> bytes:
    """`fixed_head` with the Content-Length of the body (none for None: no body is meant) and
    this request's own `headers`."""
    lines = [fixed]
    if body_bytes is not None:
        lines.append(b"content-length: %d\r\n" % body_bytes)
    lines += [header_line(name, value) for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def header_line(name: bytes, value: bytes) -> bytes:
    """One header as written; one that could split the request (CR, LF or NUL in it) is refused,
    whoever built it."""
    if _splits(name) or _splits(value) or b":" in name:
        raise httpx.LocalProtocolError("a request header could split the request")
    return b"%s: %s\r\n" % (name, value)


def _splits(field: bytes) -> bool:
    return b"\r" in field or b"\n" in field or b"\0" in field
