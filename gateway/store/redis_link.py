"""One Redis connection shared by every request: the commands of one loop turn go out in one
write, and each reply goes back, in order, to the call that is still waiting for it."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis


class ErrorReply(Exception):
    """Redis answered a command with an error (`NOSCRIPT ...`, `ERR ...`)."""


class _Wire(asyncio.Protocol):
    """The connection's two ends: queued commands out, replies in, matched by their order.

    A call that is cancelled leaves its future behind; its reply still arrives in its place
    and is dropped, so no later call ever reads another's reply.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ErrorReply)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._outgoing: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future = self._waiting.popleft()
                if future.done():
                    continue
                if isinstance(reply, ErrorReply):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            # Bytes that are not RESP, or a reply nobody asked for: nothing after is trusted.
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the Redis connection was lost"))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; it is written with the rest of this loop turn's."""
        if self.closed or self._transport is None:
            raise ConnectionError("the Redis connection is closed")
        loop = asyncio.get_running_loop()
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(packed)
        future = loop.create_future()
        self._waiting.append(future)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and not self.closed:
            self._transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True


Connect = Callable[[Callable[[], _Wire]], Awaitable[_Wire]]


class Link:
    """Calls over one shared connection, made again when the last one closed.

    A call that outlives its deadline closes the connection it was sent on: a reply that late
    means the connection cannot be trusted, and the next call makes a new one. A call whose
    connection is lost after its command went out fails, and is not sent again: Redis may
    have run it.
    """

    def __init__(self, connect: Connect, handshake: tuple[bytes, ...] = ()) -> None:
        """`connect` opens a connection to the given protocol; `handshake` holds the packed
        commands every new connection runs first (AUTH, SELECT)."""
        self._connect = connect
        self._handshake = handshake
        self._wire: _Wire | None = None
        self._opening = asyncio.Lock()

    async def call(self, packed: bytes, deadline: float) -> Any:
        """Send one packed command and wait, until loop time `deadline`, for its reply."""
        wire = None
        try:
            async with asyncio.timeout_at(deadline):
                wire = self._wire
                if wire is None or wire.closed:
                    wire = await self._open()
                return await wire.send(packed)
        except TimeoutError:
            if wire is not None:
                wire.close()
            raise

    async def _open(self) -> _Wire:
        """A new connection; callers that arrive while it is made wait for it and share it."""
        async with self._opening:
            wire = self._wire
            if wire is None or wire.closed:
                wire = await self._connect(_Wire)
                try:
                    replies = [wire.send(command) for command in self._handshake]
                    for reply in replies:
                        await reply
                except BaseException:
                    wire.close()
                    raise
                self._wire = wire
            return wire

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
