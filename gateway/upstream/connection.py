"""One HTTP/1.1 connection to a backend: an asyncio protocol over llhttp (httptools).

It carries one exchange at a time. Waits end by timer, not by cancel scope: a request passes
four of them, and a timer handle costs a fraction of a scope. Failures are httpx's own
exceptions, so callers see what any httpx transport raises.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools
import httpx

# A slow reader stops the socket being read past this much, so a fast backend cannot fill the
# gateway's memory: TCP's own window then holds the backend back.
READ_HIGH_WATER_BYTES = 256 * 1024
# Status line and headers of one answer: more than any backend sends, far less than harm.
MAX_HEAD_BYTES = 64 * 1024

_NO_BODY_STATUSES = frozenset({204, 304})


class Connection(asyncio.Protocol):
    """The protocol object of one socket; `Pool` hands it out to one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.idle_since_s = 0.0
        self.used = False  # it carried an exchange before this one
        self._lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._active = False
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._until_close = True  # no length and not chunked: the body ends at EOF
        self._head_done = False
        self._chunks: deque[bytes] = deque()
        self._buffered_bytes = 0
        self._reading_paused = False
        self._complete = False
        self._keep_alive = False
        self._error: httpx.TransportError | None = None
        self.received_any = False

    # The parts of an exchange, in order.

    async def send(self, head: bytes, body: bytes, timeout_s: float | None) -> None:
        """Write the request; wait only while the socket's buffer is full."""
        self._reset()
        transport = self._transport
        if self._lost or transport is None:
            raise httpx.WriteError("the backend closed the connection")
        self._active = True
        if body:
            transport.writelines((head, body))
        else:
            transport.write(head)
        while self._write_paused and not self._lost:
            await self._wait(timeout_s, httpx.WriteTimeout, "writing to the backend timed out")

    async def head(self, timeout_s: float | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The answer's status and headers."""
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(timeout_s, httpx.ReadTimeout, "the backend did not answer in time")
        return self._status, self._headers

    async def chunk(self, timeout_s: float | None) -> bytes | None:
        """The next piece of the body as it came off the socket, or None at its end."""
        while not self._chunks:
            if self._complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait(timeout_s, httpx.ReadTimeout, "the backend went silent")
        chunk = self._chunks.popleft()
        self._buffered_bytes -= len(chunk)
        if self._reading_paused and self._buffered_bytes <= READ_HIGH_WATER_BYTES // 4:
            self._reading_paused = False
            if self._transport is not None and not self._lost:
                self._transport.resume_reading()
        return chunk

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self._lost

    @property
    def lost(self) -> bool:
        return self._lost

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def finish(self) -> None:
        """The exchange is over (the pool keeps or closes the connection)."""
        self._active = False

    async def _wait(
        self, timeout_s: float | None, expired: type[httpx.TimeoutException], why: str
    ) -> None:
        """Until the socket has news; `expired(why)` when none comes within timeout_s."""
        waiter = self._waiter = self._loop.create_future()
        timer = None if timeout_s is None else self._loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            raise expired(why) from None
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Nothing was asked: whatever this is, the connection can no longer be trusted.
            self.close()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            cause = exc.__context__
            self._fail(
                cause
                if isinstance(cause, httpx.RemoteProtocolError)
                else httpx.RemoteProtocolError("the backend's answer is not valid HTTP/1.1")
            )
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._head_done and self._until_close and not self._complete and self._error is None:
            self._complete = True
        elif not self._head_done:
            self._fail(httpx.RemoteProtocolError("the backend closed the connection unanswered"))
        else:
            self._fail(httpx.ReadError("the backend broke off its answer"))
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._complete:
            # A second answer to one request: not a byte of it joins the first, and the
            # connection is not trusted again.
            raise httpx.RemoteProtocolError("the backend sent two answers to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("the backend's headers are too large")
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or lowered == b"transfer-encoding":
            self._until_close = False

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._headers, self._head_bytes = [], 0
            return
        self._status = status
        self._head_done = True
        if status in _NO_BODY_STATUSES:
            self._until_close = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered_bytes += len(body)
        if not self._reading_paused and self._buffered_bytes > READ_HIGH_WATER_BYTES:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self._head_done:
            return  # the end of an interim answer
        # Asked now: the parser forgets the answer's version and Connection header once done.
        self._keep_alive = self._parser.should_keep_alive()
        self._complete = True
        self._wake()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
