"""A bare task a request owns ends before its owner goes on, and its failure reaches the owner."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the request path's bare tasks are asyncio's


async def _slow_to_end(cleaned: list[int], turns: int) -> None:
    """Blocks until cancelled, then takes `turns` loop turns to clean up (none: ends at once)."""
    try:
        await asyncio.Event().wait()
    finally:
        for turn in range(turns):
            await asyncio.sleep(0)
            cleaned.append(turn)


async def test_a_task_waiting_on_something_is_ended_and_nothing_is_raised() -> None:
    task = asyncio.get_running_loop().create_task(_slow_to_end([], 0))
    await asyncio.sleep(0)  # now blocked on its event
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_not_yet_started_is_ended_too() -> None:
    task = asyncio.get_running_loop().create_task(_slow_to_end([], 0))
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_that_takes_turns_to_end_is_waited_for() -> None:
    cleaned: list[int] = []
    task = asyncio.get_running_loop().create_task(_slow_to_end(cleaned, 5))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done()
    assert cleaned == [0, 1, 2, 3, 4]


async def test_what_the_task_failed_with_is_raised_to_its_owner() -> None:
    async def fails() -> None:
        raise LookupError("the watcher's own failure")

    task = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(LookupError, match="the watcher's own failure"):
        await cancel_and_wait(task)


async def test_an_owner_cancelled_while_it_waits_still_sees_the_task_end_first() -> None:
    cleaned: list[int] = []

    async def owner(task: asyncio.Task[None], outer: anyio.CancelScope) -> None:
        with outer:
            outer.cancel()  # delivered at the owner's next await: the turn it gives the task
            await cancel_and_wait(task)
        assert task.done()
        assert cleaned == [0, 1, 2]

    task = asyncio.get_running_loop().create_task(_slow_to_end(cleaned, 3))
    await asyncio.sleep(0)
    outer = anyio.CancelScope()
    await owner(task, outer)
    assert outer.cancelled_caught
