"""Hypercorn's connection, with its keep-alive deadline on a timer and an answer's head and body
written together.

Hypercorn starts a task (and `wait_for` a second) each time a connection goes idle, and cancels
and awaits it when the next request's head arrives: several loop turns before every request
reaches the app. It writes an answer's head and its body with a system call each. It offers no
setting for either, so each worker swaps this class in at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import hypercorn.asyncio.run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import AsyncioSingleTask
from hypercorn.events import Event, RawData, Updated
from hypercorn.typing import TaskGroup

from gateway.app import Gateway, create_app


class IdleDeadline(AsyncioSingleTask):
    """Hypercorn's idle task (`restart`, `stop`) as a timer: its action starts at the deadline.

    Nothing runs while a connection is idle, and a request arriving costs one timer cancelled.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        super().__init__()
        self._loop = loop
        self._delay_s = delay_s
        self._timer: asyncio.TimerHandle | None = None
        self._start: Callable[[], None] | None = None

    async def restart(self, task_group: TaskGroup, action: Callable[[], Any]) -> None:
        self._cancel()
        self._start = partial(task_group.spawn, action)
        self._timer = self._loop.call_later(self._delay_s, self.expire)

    async def stop(self) -> None:
        self._cancel()

    def expire(self) -> None:
        """Start the action now if the connection is idle (the deadline passed, or shutdown)."""
        start = self._start
        self._cancel()
        if start is not None:
            start()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._start = None


class Connection(TCPServer):
    """One client connection, served as hypercorn serves it but for the idle deadline and the
    answer's first write.

    The first bytes written after a request arrives (an answer's head) wait for the next write
    (its body) in the same turn of the event loop, and go out with it; at the end of the turn
    they go out alone, so an answer whose body comes later loses no time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_task = self._idle = IdleDeadline(self.loop, self.config.keep_alive_timeout)
        self._hold_next = False
        self._held = b""

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if self._hold_next:
                self._hold_next = False
                self._held = event.data
                self.loop.call_soon(self._send_held)
                return
            if self._held:
                event = RawData(self._held + event.data)
                self._held = b""
            if not event.data:
                return  # h11's end of an answer with a Content-Length: nothing to write
        elif isinstance(event, Updated) and not event.idle:
            self._hold_next = True
        await super().protocol_send(event)

    def _send_held(self) -> None:
        held, self._held = self._held, b""
        if held:
            # If the client is gone, the connection's next read or write finds out.
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.writer.write(held)

    async def _close(self) -> None:
        self._send_held()
        await super()._close()

    async def _idle_timeout(self) -> None:
        # Hypercorn's action waits out the deadline itself; this one starts when it has passed.
        await asyncio.shield(self._initiate_server_close())

    async def _read_data(self) -> None:
        # Hypercorn's idle task also ended an idle connection as soon as the worker began to
        # shut down; one task per connection (not per request) keeps that.
        watch = self._task_group._task_group.create_task(self._close_if_idle_at_shutdown())
        try:
            await super()._read_data()
        finally:
            watch.cancel()

    async def _close_if_idle_at_shutdown(self) -> None:
        await self.context.terminated.wait()
        self._idle.expire()


def use_gateway_connections() -> None:
    """Serve every connection of this process's asyncio hypercorn servers with `Connection`.

    Hypercorn's worker builds each connection from this module global and has no setting for
    it; pyproject.toml holds hypercorn below 0.19, and the lock at the version this was built on.
    """
    hypercorn.asyncio.run.TCPServer = Connection  # type: ignore[attr-defined] # hypercorn has no hook; the subclass keeps its interface


def worker_app() -> Gateway:
    """What a gateway worker imports (`gateway.serving:worker_app()`)."""
    use_gateway_connections()
    return create_app()
