"""The backends a gateway routes to: the table's (or `OLLAMA_URL` while the table is empty), each
with its client, circuit breaker and slots, kept in step with the table through its notices."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import msgspec

from gateway.chain.route import Protocol
from gateway.config import Settings
from gateway.errors import ServiceUnavailable
from gateway.store.pg import BackendRow, Database
from gateway.upstream.backend import Backend
from gateway.upstream.breaker import Breaker, BreakerState, BreakerStatus
from gateway.upstream.slots import Candidate, Slots
from gateway.upstream.spec import BackendSpec, SpecError, auth_headers, default_spec

log = logging.getLogger(__name__)

# Notices can be missed while Postgres is away; a periodic read bounds how long that matters.
RELOAD_EVERY_S = 30.0


class Member:
    """One backend as this gateway uses it. Replaced whole when its row changes."""

    __slots__ = ("_idle", "backend", "breaker", "in_flight", "spec", "stack")

    def __init__(
        self, spec: BackendSpec, backend: Backend, breaker: Breaker, stack: AsyncExitStack
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.breaker = breaker
        self.stack = stack
        self.in_flight = 0  # requests using this client now; a retired member waits for them
        self._idle: anyio.Event | None = None

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        if self.in_flight:
            self._idle = anyio.Event()
            await self._idle.wait()


def spec_of(row: BackendRow) -> BackendSpec:
    return BackendSpec(**msgspec.structs.asdict(row))


def serves(spec: BackendSpec, protocol: Protocol) -> bool:
    """`/api/*` needs an Ollama backend; any backend speaks the OpenAI routes."""
    return protocol is Protocol.OPENAI or spec.kind == "ollama"


class Backends:
    """Every backend this gateway may send a request to, by name."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._database = database
        self._environ = environ
        self._clock = clock
        self.members: dict[str, Member] = {}
        self.slots = Slots(max_queue=settings.backend_queue_size, clock=clock)
        self._retiring: set[Member] = set()
        self._wanted = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        # Called after the set of backends changed (discovery polls the new ones at once).
        self.on_change: Callable[[], None] = lambda: None

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, database: Database, environ: Mapping[str, str]
    ) -> AsyncIterator[Backends]:
        backends = cls(settings, database, environ)
        try:
            async with anyio.create_task_group() as tg:
                backends._tg = tg
                yield backends
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for member in [*backends.members.values(), *backends._retiring]:
                    await member.stack.aclose()

    def changed(self, _name: str = "") -> None:
        """A backend row changed somewhere (a notice, or a gap in them): read the table again."""
        self._wanted.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the backends now, then again on every change and every `RELOAD_EVERY_S`."""
        await self._load_logged()
        task_status.started()
        while True:
            with anyio.move_on_after(RELOAD_EVERY_S):
                await self._wanted.wait()
            self._wanted = anyio.Event()
            await self._load_logged()

    async def _load_logged(self) -> None:
        try:
            await self.load()
        except ServiceUnavailable:
            log.warning("backends: cannot read the table; keeping %d backends", len(self.members))

    async def load(self) -> None:
        """Read the table: open what is new or changed, retire what is gone."""
        rows = await self._database.list_backends()
        if rows:
            specs = [spec_of(row) for row in rows if row.enabled]
        else:
            specs = [default_spec(self._settings)]
        wanted = {spec.name: spec for spec in specs}
        before = dict(self.members)
        for name, member in list(self.members.items()):
            if wanted.get(name) != member.spec:
                del self.members[name]
                if name not in wanted:
                    self.slots.remove(name)
                self._retire(member)
        for spec in specs:
            if spec.name not in self.members:
                opened = await self._open(spec)
                if opened is not None:
                    self.members[spec.name] = opened
                    self.slots.configure(spec.name, spec.max_parallel)
        if self.members != before:
            self.on_change()

    async def _open(self, spec: BackendSpec) -> Member | None:
        problem: str | None = None
        try:
            headers = auth_headers(spec, self._environ)
        except SpecError as exc:
            problem = str(exc)  # names the variable, never holds the token
        if problem is not None:
            log.error("backend %s left out: %s", spec.name, problem)
            return None
        header, value = headers[0] if headers else (None, None)
        stack = AsyncExitStack()
        backend = await stack.enter_async_context(
            Backend.open(
                spec.name,
                spec.url,
                auth_header=header,
                auth_value=value.reveal() if value is not None else None,
                connect_timeout_s=self._settings.ollama_connect_timeout_s,
                read_timeout_s=self._settings.ollama_read_timeout_s,
                max_connections=self._settings.ollama_max_connections,
            )
        )
        breaker = Breaker(
            self._settings.breaker_failures, self._settings.breaker_open_s, self._clock
        )
        return Member(spec, backend, breaker, stack)

    def _retire(self, member: Member) -> None:
        """Close a client once the requests still using it are done; never cut them off."""
        self._retiring.add(member)

        async def close_when_idle() -> None:
            try:
                with anyio.move_on_after(self._settings.ollama_read_timeout_s):
                    await member.wait_idle()
            finally:
                with anyio.CancelScope(shield=True):
                    await member.stack.aclose()
                self._retiring.discard(member)

        assert self._tg is not None, "Backends.open() starts the task group that retires clients"
        self._tg.start_soon(close_when_idle)

    def candidates(
        self, hosts: frozenset[str], protocol: Protocol, tried: set[str]
    ) -> list[Candidate]:
        """The backends that host a model and speak the route's protocol, not yet tried."""
        return [
            Candidate(name, member.spec.priority, member.breaker.state is not BreakerState.OPEN)
            for name, member in self.members.items()
            if name in hosts and name not in tried and serves(member.spec, protocol)
        ]

    def health(self) -> dict[str, BreakerStatus]:
        return {name: member.breaker.status() for name, member in self.members.items()}
