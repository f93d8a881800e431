"""The request path's asyncio forms of anyio habits: a cancel scope whose own cancellation stays in
it, clean-up shielded from a shutdown's cancellation, and a bare task ended before its owner goes
on, with its failure raised to the owner."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from gateway.tasks import Cancellable, cancel_and_wait, run_to_end

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


async def test_a_cancelled_scope_ends_its_body_and_its_owner_goes_on() -> None:
    reached: list[str] = []

    async def body(scope: Cancellable) -> None:
        async with scope:
            scope.cancel()
            await asyncio.Event().wait()
            reached.append("after the wait")  # pragma: no cover - the cancel ends the wait
        reached.append("after the scope")

    await body(Cancellable())
    assert reached == ["after the scope"]


async def test_a_scope_cancelled_from_another_task_ends_at_the_body_s_next_turn() -> None:
    scope = Cancellable()
    ended = asyncio.Event()

    async def relay() -> None:
        async with scope:
            await asyncio.Event().wait()
        ended.set()

    task = asyncio.get_running_loop().create_task(relay())
    await asyncio.sleep(0)
    scope.cancel()
    await asyncio.wait_for(ended.wait(), 5)
    assert not task.cancelled()


async def test_a_timeout_error_of_the_body_s_own_goes_through_the_scope() -> None:
    with pytest.raises(TimeoutError, match="the backend's"):
        async with Cancellable():
            raise TimeoutError("the backend's")


async def test_a_cancellation_from_outside_goes_through_the_scope() -> None:
    async def relay() -> None:
        async with Cancellable():
            await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(relay())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_outside_in_the_same_turn_as_the_scope_s_goes_through() -> None:
    scope = Cancellable()

    async def relay() -> None:
        async with scope:
            await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(relay())
    await asyncio.sleep(0)
    scope.cancel()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_a_scope_already_left_does_nothing() -> None:
    scope = Cancellable()
    async with scope:
        pass
    scope.cancel()
    await asyncio.sleep(0)  # nothing is due to cancel this task in the next turn


async def _three_turns(done: list[int]) -> None:
    for turn in range(3):
        await asyncio.sleep(0)
        done.append(turn)


async def test_clean_up_during_a_cancellation_runs_whole_and_the_cancellation_follows() -> None:
    done: list[int] = []
    with anyio.CancelScope() as outer:
        outer.cancel()  # level-triggered: every await in the scope would be cancelled
        try:
            await asyncio.sleep(0)
        finally:
            await run_to_end(_three_turns(done))
    assert done == [0, 1, 2]
    assert outer.cancelled_caught


async def test_clean_up_with_no_cancellation_under_way_is_not_shielded_from_a_later_one() -> None:
    done: list[int] = []
    task = asyncio.get_running_loop().create_task(run_to_end(_three_turns(done)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == []  # cancelled in its first turn
