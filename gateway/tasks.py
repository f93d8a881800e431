"""asyncio's own forms of anyio habits for the request path, where anyio's cost shows: a cancel
scope, a shield for clean-up, and ending a bare task as a task group would."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import anyio


class Cancellable:
    """A scope whose body `cancel()` ends, and whose own cancellation goes no further.

    An asyncio deadline with none set, brought forward to now. In a request's task, which the
    server makes anew for every request, an anyio scope cost about 4% of the request's CPU at
    c=8 (PERFORMANCE.md). A cancellation from outside still propagates, as it would out of an
    anyio scope.
    """

    __slots__ = ("_deadline", "_open")

    def __init__(self) -> None:
        self._deadline = asyncio.timeout(None)
        self._open = False

    def cancel(self) -> None:
        """Cancel the body in the next turn; nothing outside the scope."""
        if self._open:
            self._deadline.reschedule(0.0)  # a deadline in the past

    async def __aenter__(self) -> Cancellable:
        await self._deadline.__aenter__()
        self._open = True
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        self._open = False
        try:
            await self._deadline.__aexit__(kind, error, traceback)
        except TimeoutError:
            return True  # the body's cancellation was ours
        return False


async def run_to_end(work: Coroutine[Any, Any, None]) -> None:
    """Await clean-up `work`, shielded from a cancellation already under way (a shutdown past its
    grace), not from one that lands while it runs.

    For work whose effect is under way at its first step, so that a cancellation landing later
    loses only its reply. A shielded anyio scope on every request cost about 6% of the request's
    CPU at c=8 (PERFORMANCE.md); this checks the task's count of cancellations instead.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        with anyio.CancelScope(shield=True):
            await work
    else:
        await work


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and return once it has ended, raising what it failed with, if anything.

    A cancelled task that does not fight its cancellation ends at its next step, which the loop
    runs before it resumes the caller of a `sleep(0)`. That one turn is the usual case, and costs
    about a tenth of a wait under a shielded scope; the wait is still there for a task that
    takes longer, and for a caller cancelled in that turn.
    """
    task.cancel()
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        await _wait_shielded(task)
        raise
    if not task.done():
        await _wait_shielded(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


async def _wait_shielded(task: asyncio.Task[None]) -> None:
    with anyio.CancelScope(shield=True):
        await asyncio.wait((task,))
