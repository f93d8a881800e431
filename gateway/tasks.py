"""Ending a bare asyncio task that a request owns without a task group, as a task group would."""

from __future__ import annotations

import asyncio

import anyio


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
