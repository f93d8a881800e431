"""The slot scheduler's pure core under random histories: never overfilled, never a slot leaked
or granted outside a waiter's candidates, and every tenant waiting all along served in turn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.slots import Candidate, NoBackend, QueueFull, Scheduler, Waiter, WaiterState

BACKENDS = ("a", "b", "c")
TENANTS = ("t0", "t1", "t2", "t3")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_candidates = st.lists(
    st.builds(
        Candidate,
        st.sampled_from(BACKENDS),
        st.integers(0, 2),
        st.sampled_from([True, True, True, False]),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda c: c.name,
)
_BUSY = ["request"] * 4 + ["release", "start"] * 3 + ["cancel", "configure"]
_ANY = [*_BUSY, "request", "remove", "wait"]


class Step(NamedTuple):
    verb: str
    name: str = ""  # the tenant of a request, the backend to configure or remove
    number: int = 0  # a capacity, or which held slot or waiter the step picks
    candidates: tuple[Candidate, ...] = ()


@st.composite
def _step(draw: st.DrawFn, verbs: list[str]) -> Step:
    verb = draw(st.sampled_from(verbs))
    if verb == "request":
        return Step(verb, draw(st.sampled_from(TENANTS)), candidates=tuple(draw(_candidates)))
    if verb in ("configure", "remove"):
        return Step(verb, draw(st.sampled_from(BACKENDS)), draw(st.integers(0, 3)))
    return Step(verb, number=draw(st.integers(0, 50)))


class History:
    """Drives a `Scheduler` as tasks would, and checks it after every step."""

    def __init__(self, max_queue: int, weights: dict[str, int], timeout_s: float) -> None:
        self.clock = Clock()
        # (tenant granted or None, tenants waiting, tenants that could use the freed slot)
        self.events: list[tuple[str | None, set[str], set[str]]] = []
        self.core = Scheduler(max_queue, self.clock)
        self.max_queue, self.weights, self.timeout_s = max_queue, weights, timeout_s
        self.capacity: dict[str, int] = {}
        self.held: list[str] = []  # slots held by running requests
        self.granted: list[Waiter] = []  # granted, their tasks not yet running
        self.queued: list[Waiter] = []
        self.allowed: dict[Waiter, set[str]] = {}
        for backend in BACKENDS:
            self.step(Step("configure", backend, 1))

    def step(self, step: Step) -> None:
        verb, name, number, candidates = step
        before = {b: self.core.in_flight(b) for b in BACKENDS}
        if verb == "configure":
            self.capacity[name] = number
            self.handed(self.core.configure(name, number), name)
        elif verb == "remove":
            self.capacity.pop(name, None)
            for waiter in self.core.remove(name):
                assert waiter.state is WaiterState.FAILED
                assert not self.allowed[waiter] & self.capacity.keys()
                self.queued.remove(waiter)
        elif verb == "request":
            self.request(name, candidates)
        elif verb == "release" and self.held:
            backend = self.held.pop(number % len(self.held))
            self.handed(self.core.release(backend), backend)
        elif verb == "cancel" and self.queued + self.granted:
            waiter = (self.queued + self.granted)[number % len(self.queued + self.granted)]
            (self.queued if waiter in self.queued else self.granted).remove(waiter)
            self.handed(self.core.cancel(waiter), waiter.backend)
        elif verb == "start" and self.granted:
            self.held.append(str(self.granted.pop(number % len(self.granted)).backend))
        elif verb == "wait":
            self.clock.now += 0.5 + number % 2  # half the timeout, or a whole one
        self.events.append((None, {w.tenant for w in self.queued}, set()))
        self.check(before)

    def request(self, tenant: str, candidates: tuple[Candidate, ...]) -> None:
        usable = {c.name for c in candidates if c.usable} & self.capacity.keys()
        free = [c for c in candidates if c.name in usable and self.has_room(c.name)]
        best = min(
            free, key=lambda c: (-c.priority, self.core.in_flight(c.name), c.name), default=None
        )
        try:
            got = self.core.try_acquire(candidates)
        except NoBackend:
            assert not usable
            return
        assert got == (best.name if best else None)
        if got is not None:
            self.held.append(got)
            return
        assert not any(self.has_room(name) for name in usable)
        try:
            waiter = self.core.enqueue(tenant, self.weights[tenant], candidates, self.timeout_s)
        except QueueFull:
            assert len(self.queued) >= self.max_queue
            return
        self.allowed[waiter] = usable
        self.queued.append(waiter)

    def handed(self, waiters: Sequence[Waiter], freed: str | None) -> None:
        for waiter in waiters:
            assert waiter.state is WaiterState.GRANTED
            assert waiter.backend == freed
            assert waiter.backend in self.allowed[waiter]
            could = {w.tenant for w in self.queued if freed in w.names}
            self.events.append((waiter.tenant, {w.tenant for w in self.queued}, could))
            self.queued.remove(waiter)
            self.granted.append(waiter)

    def check(self, before: dict[str, int]) -> None:
        for backend in BACKENDS:
            running = self.held.count(backend) + [w.backend for w in self.granted].count(backend)
            assert self.core.in_flight(backend) == running  # every slot accounted for
            if running > before[backend]:
                assert running <= self.capacity[backend]
        assert self.core.queued() == len(self.queued) <= self.max_queue
        for waiter in self.queued:
            assert waiter.names == self.allowed[waiter]
            assert waiter.names & self.capacity.keys()  # one whose last candidate went has failed
            if waiter.deadline > self.clock.now:  # nobody waits while a slot it may use is free
                assert not any(self.has_room(name) for name in waiter.names)

    def drain(self) -> None:
        while self.queued:
            self.step(Step("cancel"))
        while self.held or self.granted:
            self.step(Step("release" if self.held else "cancel"))
        assert all(self.core.in_flight(b) == 0 for b in BACKENDS)
        assert self.core.queued() == 0

    def has_room(self, backend: str) -> bool:
        return self.core.in_flight(backend) < self.capacity.get(backend, 0)


@given(
    max_queue=st.integers(0, 6),
    weights=st.fixed_dictionaries({t: st.integers(1, 3) for t in TENANTS}),
    timeout_s=st.sampled_from([1.0, math.inf]),
    steps=st.lists(_step(_ANY), min_size=10, max_size=60),
)
def test_random_histories_never_overfill_leak_or_misroute(
    max_queue: int, weights: dict[str, int], timeout_s: float, steps: list[Step]
) -> None:
    history = History(max_queue, weights, timeout_s)
    for step in steps:
        history.step(step)
    history.drain()


@given(steps=st.lists(_step(_BUSY), min_size=30, max_size=100))
def test_between_two_grants_to_a_tenant_every_tenant_waiting_all_along_gets_one(
    steps: list[Step],
) -> None:
    history = History(max_queue=12, weights=dict.fromkeys(TENANTS, 1), timeout_s=math.inf)
    for step in steps:
        history.step(step)
    events = history.events
    grants = [i for i, event in enumerate(events) if event[0] is not None]
    for i in grants:
        tenant = events[i][0]
        later = [j for j in grants if j > i and events[j][0] == tenant]
        if not later:
            continue
        j = later[0]
        served_between = {events[k][0] for k in grants if i < k < j}
        for other in events[j][2] - {tenant}:
            waited_throughout = all(other in events[k][1] for k in range(i, j + 1))
            assert not waited_throughout or other in served_between, (other, tenant)
