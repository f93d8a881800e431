"""Backend slots: the best free backend, a bounded queue served fairly across tenants, and no slot
ever leaked, whether a waiter is served, times out, is cancelled or loses its backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AsyncExitStack

import anyio
import pytest

from gateway.errors import ServiceUnavailable, Surface, error_body
from gateway.upstream.slots import (
    Candidate,
    NoBackend,
    QueueFull,
    QueueTimeout,
    Scheduler,
    Slots,
    WaiterState,
)

GPU = [Candidate("gpu", 0)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_best_free_candidate_by_priority_then_load_then_name() -> None:
    core = Scheduler(max_queue=10)
    for name in ("a", "b", "c", "d"):
        core.configure(name, 2)
    hosts = [Candidate("c", 1), Candidate("b", 1), Candidate("a", 0), Candidate("d", 5, False)]
    assert [core.try_acquire(hosts) for _ in range(5)] == ["b", "c", "b", "c", "a"]
    with pytest.raises(NoBackend):
        core.try_acquire([Candidate("d", 5, usable=False), Candidate("unknown", 9)])


def test_a_weighted_tenant_gets_that_many_grants_per_turn() -> None:
    core = Scheduler(max_queue=20)
    core.configure("gpu", 1)
    assert core.try_acquire(GPU) == "gpu"
    for _ in range(4):
        core.enqueue("heavy", 2, GPU, math.inf)
        core.enqueue("light", 1, GPU, math.inf)
    order = [core.release("gpu")[0].tenant for _ in range(8)]
    assert order == ["heavy", "heavy", "light", "heavy", "heavy", "light", "light", "light"]


def test_a_waiter_past_its_deadline_is_not_granted_a_slot() -> None:
    clock = Clock()
    core = Scheduler(max_queue=5, clock=clock)
    core.configure("gpu", 1)
    core.try_acquire(GPU)
    late = core.enqueue("t0", 1, GPU, timeout_s=1.0)
    patient = core.enqueue("t1", 1, GPU, timeout_s=5.0)
    clock.now = 2.0
    assert core.release("gpu") == [patient]
    assert late.state is WaiterState.QUEUED
    assert core.cancel(late) == []
    assert core.queued() == 0


def test_a_slot_granted_to_a_waiter_that_then_gives_up_is_passed_on() -> None:
    core = Scheduler(max_queue=5)
    core.configure("gpu", 1)
    core.try_acquire(GPU)
    first, second = core.enqueue("t0", 1, GPU, 9.0), core.enqueue("t1", 1, GPU, 9.0)
    assert core.release("gpu") == [first]
    assert core.cancel(first) == [second]  # the client left in the same instant
    assert (second.state, second.backend, core.in_flight("gpu")) == (WaiterState.GRANTED, "gpu", 1)
    assert core.cancel(first) == []  # a second report changes nothing
    assert core.release("gpu") == []
    assert core.in_flight("gpu") == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Scheduler(max_queue=-1), "max_queue"),
        (lambda: Scheduler(1).configure("gpu", -1), "max_parallel"),
        (lambda: Scheduler(1).enqueue("t0", 0, GPU, 1.0), "weight"),
    ],
)
def test_nonsense_settings_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]  # a parametrized zero-argument callable


@pytest.mark.parametrize("error", [QueueFull(), QueueTimeout()])
def test_queue_refusals_are_503_with_retry_after(error: QueueFull | QueueTimeout) -> None:
    assert error.status == 503
    assert error.headers == ((b"retry-after", b"1"),)
    assert b"retry shortly" in error_body(error, Surface.OPENAI)
    assert NoBackend().status == 503


# --- the anyio wrapper, on asyncio and trio -----------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Requests:
    """Requests through one `Slots`, each held until `done` is set, recording who got in."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.entered: list[str] = []
        self.finished: list[str] = []
        self.errors: list[ServiceUnavailable] = []
        self.done = anyio.Event()

    async def __call__(
        self, name: str, candidates: Sequence[Candidate] = GPU, timeout_s: float = 30.0
    ) -> None:
        try:
            async with self.slots.slot(name[0], 1, candidates, timeout_s) as backend:
                self.entered.append(f"{name}@{backend}")
                await self.done.wait()
                await anyio.sleep(0.001)  # holds its slot briefly
                self.finished.append(name)
        except (NoBackend, QueueFull, QueueTimeout) as error:
            self.errors.append(error)


@pytest.mark.anyio
async def test_a_tenant_with_one_request_waits_for_at_most_one_of_a_busy_tenants() -> None:
    slots = Slots(max_queue=100)
    slots.configure("gpu", 1)
    requests = Requests(slots)
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(requests, f"A{i}")
        await anyio.wait_all_tasks_blocked()
        assert (len(requests.entered), slots.queued()) == (1, 19)
        tg.start_soon(requests, "B")
        await anyio.wait_all_tasks_blocked()
        requests.done.set()
    tenants = [name[0] for name in requests.entered]
    assert tenants.index("B") <= 2  # the one running, then at most one more of A's
    assert len(requests.finished) == 21
    assert (slots.in_flight("gpu"), slots.queued()) == (0, 0)


@pytest.mark.anyio
async def test_a_full_queue_refuses_at_once() -> None:
    slots = Slots(max_queue=2)
    slots.configure("gpu", 1)
    requests = Requests(slots)
    async with anyio.create_task_group() as tg:
        for name in ("A1", "A2", "A3"):
            tg.start_soon(requests, name)
        await anyio.wait_all_tasks_blocked()
        await requests("B1")
        assert len(requests.entered) == 1
        assert [type(e) for e in requests.errors] == [QueueFull]
        assert requests.errors[0].headers == ((b"retry-after", b"1"),)
        requests.done.set()
    assert sorted(requests.finished) == ["A1", "A2", "A3"]


@pytest.mark.anyio
async def test_a_request_that_waits_its_whole_timeout_is_refused() -> None:
    slots = Slots(max_queue=5)
    slots.configure("gpu", 1)
    requests = Requests(slots)
    async with anyio.create_task_group() as tg:
        tg.start_soon(requests, "A")
        await anyio.wait_all_tasks_blocked()
        await requests("B1", GPU, 0.05)
        await requests("B2", GPU, 0.0)
        assert [type(e) for e in requests.errors] == [QueueTimeout, QueueTimeout]
        assert slots.queued() == 0
        requests.done.set()
    assert requests.finished == ["A"]
    assert slots.in_flight("gpu") == 0


@pytest.mark.anyio
async def test_a_waiter_that_leaves_gives_up_its_place() -> None:
    slots = Slots(max_queue=5)
    slots.configure("gpu", 1)
    requests = Requests(slots)
    async with anyio.create_task_group() as tg:
        tg.start_soon(requests, "A")
        await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as client:
            client.start_soon(requests, "B")
            await anyio.wait_all_tasks_blocked()
            assert slots.queued() == 1
            client.cancel_scope.cancel()  # B's client goes away
        await anyio.wait_all_tasks_blocked()
        assert slots.queued() == 0
        requests.done.set()
    assert (requests.entered, requests.finished) == (["A@gpu"], ["A"])
    assert slots.in_flight("gpu") == 0


@pytest.mark.parametrize("client_leaves_first", [True, False])
@pytest.mark.anyio
async def test_a_slot_granted_as_its_waiter_leaves_goes_to_the_next_waiter(
    client_leaves_first: bool,
) -> None:
    slots = Slots(max_queue=5)
    slots.configure("gpu", 1)
    requests = Requests(slots)
    requests.done.set()
    async with anyio.create_task_group() as tg:
        held = AsyncExitStack()
        await held.enter_async_context(slots.slot("A", 1, GPU, 30.0))
        async with anyio.create_task_group() as client:
            client.start_soon(requests, "B")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(requests, "C", GPU, 5.0)  # a leaked slot: C times out, and fails this
            await anyio.wait_all_tasks_blocked()
            assert slots.queued() == 2
            # In one instant, with no checkpoint between: A's slot goes to B, and B's client
            # goes away (in either order).
            if client_leaves_first:
                client.cancel_scope.cancel()
            await held.aclose()
            client.cancel_scope.cancel()
            assert (slots.in_flight("gpu"), slots.queued()) == (1, 1)  # granted to B
        await anyio.wait_all_tasks_blocked()
    assert requests.finished == ["C"]  # B never finished; its slot was not lost
    assert (slots.in_flight("gpu"), slots.queued()) == (0, 0)


@pytest.mark.anyio
async def test_raising_a_backends_capacity_wakes_that_many_waiters() -> None:
    slots = Slots(max_queue=10)
    slots.configure("gpu", 1)
    requests = Requests(slots)
    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(requests, f"A{i}")
        await anyio.wait_all_tasks_blocked()
        slots.configure("gpu", 3)
        await anyio.wait_all_tasks_blocked()
        assert (len(requests.entered), slots.in_flight("gpu"), slots.queued()) == (3, 3, 2)
        requests.done.set()
    assert len(requests.finished) == 5


@pytest.mark.anyio
async def test_a_removed_backend_sends_its_waiters_elsewhere_or_away() -> None:
    slots = Slots(max_queue=10)
    slots.configure("x", 1)
    slots.configure("y", 1)
    both = [Candidate("x", 1), Candidate("y", 0)]
    requests = Requests(slots)
    async with anyio.create_task_group() as tg:
        tg.start_soon(requests, "A1", both)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(requests, "A2", both)
        await anyio.wait_all_tasks_blocked()
        assert requests.entered == ["A1@x", "A2@y"]  # priority first, then the free one
        tg.start_soon(requests, "B", both)
        tg.start_soon(requests, "C", [Candidate("x", 0)])
        await anyio.wait_all_tasks_blocked()
        slots.remove("x")
        await anyio.wait_all_tasks_blocked()
        assert [type(e) for e in requests.errors] == [NoBackend]  # C: nowhere left to go
        assert (slots.queued(), slots.in_flight("x")) == (1, 1)  # A1 runs on where it started
        requests.done.set()
        await anyio.wait_all_tasks_blocked()
    assert requests.entered[2:] == ["B@y"]
    assert sorted(requests.finished) == ["A1", "A2", "B"]
    assert (slots.in_flight("x"), slots.in_flight("y")) == (0, 0)


@pytest.mark.anyio
async def test_no_usable_candidate_refuses_at_once_without_queueing() -> None:
    slots = Slots(max_queue=10)
    slots.configure("gpu", 1)
    requests = Requests(slots)
    requests.done.set()
    await requests("A", [Candidate("gpu", 0, usable=False), Candidate("gone", 0)])
    assert [type(e) for e in requests.errors] == [NoBackend]
    assert (requests.entered, slots.queued()) == ([], 0)
    slots.remove("gone")  # a backend it never knew: nothing happens
    with pytest.raises(ValueError, match="weight"):
        async with slots.slot("A", 0, GPU, 1.0):
            pass
    await requests("B")
    assert requests.finished == ["B"]
