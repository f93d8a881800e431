"""Backend slots: a backend serves at most `max_parallel` requests at once, and the rest wait in one
bounded queue served round-robin across tenants. A pure scheduler, and a thin anyio wrapper."""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import anyio
import msgspec

from gateway.errors import ServiceUnavailable


class Candidate(msgspec.Struct, frozen=True):
    """A backend that hosts the model; `usable` is false while its breaker is open."""

    name: str
    priority: int
    usable: bool = True


def _retry_after(seconds: int) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"retry-after", str(seconds).encode()),)


class QueueFull(ServiceUnavailable):
    """Every usable backend is full and so is the queue."""

    message = "every backend for this model is busy; retry shortly"

    def __init__(self, retry_after_s: int = 1) -> None:
        super().__init__(headers=_retry_after(retry_after_s))


class QueueTimeout(ServiceUnavailable):
    """The request waited its whole timeout without a backend becoming free."""

    message = "no backend for this model became free in time; retry shortly"

    def __init__(self, retry_after_s: int = 1) -> None:
        super().__init__(headers=_retry_after(retry_after_s))


class NoBackend(ServiceUnavailable):
    """No candidate is usable: all are unknown, removed, or have an open breaker."""

    message = "no backend can serve this model right now"


class WaiterState(enum.Enum):
    QUEUED = "queued"
    GRANTED = "granted"  # holds a slot on `backend`, which its owner must release
    FAILED = "failed"  # its last candidate was removed
    CANCELLED = "cancelled"


class Waiter:
    """One queued request. Identity matters: the scheduler hands these back to wake."""

    __slots__ = ("backend", "deadline", "names", "state", "tenant")

    def __init__(self, tenant: str, names: frozenset[str], deadline: float) -> None:
        self.tenant = tenant
        self.names = names  # the usable candidates it may be granted, while they are configured
        self.deadline = deadline
        self.state = WaiterState.QUEUED
        self.backend: str | None = None


class _Tenant:
    __slots__ = ("served", "waiters", "weight")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.served = 0  # grants in its current turn
        self.waiters: dict[Waiter, None] = {}  # FIFO with O(1) removal


class Scheduler:
    """The pure core: capacities, in-flight counts and the tenant queues. No awaits.

    Tenants with waiters stand in a ring in the order they joined. A freed slot on backend X goes
    to the first tenant in the ring with a waiter that may use X (its oldest such waiter); after
    `weight` grants the tenant's turn ends and it moves to the back. A tenant that was waiting
    all along is therefore ahead of one that was served meanwhile. A slot is counted as taken the
    moment it is granted, so nobody can take it between the wake-up and the waiter running.
    """

    def __init__(self, max_queue: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self._max_queue = max_queue
        self._clock = clock
        self._capacity: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}  # kept for a removed backend until its last release
        self._ring: OrderedDict[str, _Tenant] = OrderedDict()
        self._queued = 0

    def in_flight(self, backend: str) -> int:
        return self._in_flight.get(backend, 0)

    def queued(self) -> int:
        return self._queued

    def configure(self, backend: str, capacity: int) -> list[Waiter]:
        """Add a backend or change its capacity; returns the waiters granted a new slot."""
        if capacity < 0:
            raise ValueError("max_parallel must not be negative")
        self._capacity[backend] = capacity
        return self._fill(backend)

    def remove(self, backend: str) -> list[Waiter]:
        """Forget a backend; its in-flight requests still release. Returns the waiters that lost
        their last configured candidate (now FAILED). The others wait for their other ones."""
        if self._capacity.pop(backend, None) is None:
            return []
        failed = []
        for entry in list(self._ring.values()):
            for waiter in [w for w in entry.waiters if backend in w.names]:
                if not waiter.names & self._capacity.keys():
                    self._dequeue(waiter)
                    waiter.state = WaiterState.FAILED
                    failed.append(waiter)
        return failed

    def try_acquire(self, candidates: Sequence[Candidate]) -> str | None:
        """Take a free slot on the best usable candidate, or None when all of them are full."""
        names = self._usable(candidates)
        free = [c for c in candidates if c.name in names and self._has_room(c.name)]
        if not free:
            return None
        best = min(free, key=lambda c: (-c.priority, self.in_flight(c.name), c.name))
        self._take(best.name)
        return best.name

    def enqueue(
        self, tenant: str, weight: int, candidates: Sequence[Candidate], timeout_s: float
    ) -> Waiter:
        if weight < 1:
            raise ValueError("weight must be at least 1")
        names = self._usable(candidates)
        if self._queued >= self._max_queue:
            raise QueueFull
        entry = self._ring.get(tenant)
        if entry is None:
            entry = self._ring[tenant] = _Tenant(weight)  # a newcomer joins at the back
        entry.weight = weight
        waiter = Waiter(tenant, names, self._clock() + timeout_s)
        entry.waiters[waiter] = None
        self._queued += 1
        return waiter

    def release(self, backend: str) -> list[Waiter]:
        """Free one slot; returns the waiters it was granted to (none or one)."""
        left = self._in_flight[backend] - 1
        if left:
            self._in_flight[backend] = left
        else:
            del self._in_flight[backend]
        return self._fill(backend)

    def cancel(self, waiter: Waiter) -> list[Waiter]:
        """The waiter's request gave up. A slot granted to it is passed on; returns who got it."""
        if waiter.state is WaiterState.QUEUED:
            self._dequeue(waiter)
        elif waiter.state is WaiterState.GRANTED and waiter.backend is not None:
            waiter.state = WaiterState.CANCELLED
            return self.release(waiter.backend)
        waiter.state = WaiterState.CANCELLED
        return []

    def _usable(self, candidates: Iterable[Candidate]) -> frozenset[str]:
        names = frozenset(c.name for c in candidates if c.usable and c.name in self._capacity)
        if not names:
            raise NoBackend
        return names

    def _has_room(self, backend: str) -> bool:
        return self.in_flight(backend) < self._capacity.get(backend, 0)

    def _take(self, backend: str) -> None:
        self._in_flight[backend] = self.in_flight(backend) + 1

    def _fill(self, backend: str) -> list[Waiter]:
        granted = []
        now = self._clock()
        while self._has_room(backend) and (found := self._next_for(backend, now)) is not None:
            name, entry, waiter = found
            self._dequeue(waiter)
            entry.served += 1
            if name in self._ring and entry.served >= entry.weight:
                entry.served = 0
                self._ring.move_to_end(name)
            waiter.state = WaiterState.GRANTED
            waiter.backend = backend
            self._take(backend)
            granted.append(waiter)
        return granted

    def _next_for(self, backend: str, now: float) -> tuple[str, _Tenant, Waiter] | None:
        for name, entry in self._ring.items():
            for waiter in entry.waiters:
                # A waiter past its deadline is about to give up: a slot would be wasted on it.
                if backend in waiter.names and waiter.deadline > now:
                    return name, entry, waiter
        return None

    def _dequeue(self, waiter: Waiter) -> None:
        entry = self._ring[waiter.tenant]
        del entry.waiters[waiter]
        self._queued -= 1
        if not entry.waiters:
            del self._ring[waiter.tenant]


class Slots:
    """The scheduler for anyio tasks: `slot` holds a backend slot for one request."""

    def __init__(self, *, max_queue: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._core = Scheduler(max_queue, clock)
        self._events: dict[Waiter, anyio.Event] = {}

    def configure(self, backend: str, max_parallel: int) -> None:
        self._wake(self._core.configure(backend, max_parallel))

    def remove(self, backend: str) -> None:
        self._wake(self._core.remove(backend))

    def in_flight(self, backend: str) -> int:
        return self._core.in_flight(backend)

    def queued(self) -> int:
        return self._core.queued()

    @asynccontextmanager
    async def slot(
        self, tenant: str, weight: int, candidates: Sequence[Candidate], timeout_s: float
    ) -> AsyncIterator[str]:
        """Hold one slot on the best usable candidate; yields its name; frees it on exit.

        Raises `NoBackend` at once when no candidate is usable, `QueueFull` when it would have to
        wait and the queue is full, `QueueTimeout` after waiting `timeout_s`.
        """
        if weight < 1:
            raise ValueError("weight must be at least 1")  # here too: a free slot needs no queue
        backend = self._core.try_acquire(candidates)
        if backend is None:
            backend = await self._wait(tenant, weight, candidates, max(0.0, timeout_s))
        try:
            yield backend
        finally:
            self._wake(self._core.release(backend))

    async def _wait(
        self, tenant: str, weight: int, candidates: Sequence[Candidate], timeout_s: float
    ) -> str:
        waiter = self._core.enqueue(tenant, weight, candidates, timeout_s)
        event = self._events[waiter] = anyio.Event()
        try:
            with anyio.move_on_after(timeout_s):
                await event.wait()
        except BaseException:
            # The client left. A slot granted to it in the same instant goes to the next waiter.
            self._wake(self._core.cancel(waiter))
            raise
        finally:
            del self._events[waiter]
        if waiter.state is WaiterState.GRANTED and waiter.backend is not None:
            return waiter.backend
        failed = waiter.state is WaiterState.FAILED
        self._core.cancel(waiter)  # still queued: leaves the queue; nothing was granted
        if failed:
            raise NoBackend
        raise QueueTimeout

    def _wake(self, waiters: list[Waiter]) -> None:
        for waiter in waiters:
            self._events[waiter].set()
