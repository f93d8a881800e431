"""Model discovery: poll every backend's model list at once, share what was seen through Redis, and
forget a backend's models when they grow too old, so an unreachable backend hosts nothing rather
than stale models."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import msgspec

from gateway.errors import GatewayError
from gateway.models import DISCOVERED_SUFFIX, DiscoveredCache, canonical_model
from gateway.store.redis import Cache
from gateway.upstream.backends import Backends, Member

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 5.0


class _Entry(msgspec.Struct):
    name: str


class _Tags(msgspec.Struct):
    models: list[msgspec.Raw]


class _OpenAIModel(msgspec.Struct):
    id: str


class _OpenAIModels(msgspec.Struct):
    data: list[_OpenAIModel]


class _Seen(msgspec.Struct, frozen=True):
    """One backend's models as of `at_s`; `entries` are the tag entries of an Ollama backend."""

    models: frozenset[str]
    entries: dict[str, msgspec.Raw]
    at_s: float


_decode_tags = msgspec.json.Decoder(_Tags).decode
_decode_entry = msgspec.json.Decoder(_Entry).decode
_decode_openai = msgspec.json.Decoder(_OpenAIModels).decode
_decode_cache = msgspec.json.Decoder(DiscoveredCache).decode
_encode = msgspec.json.Encoder().encode


class Discovery:
    """What each backend hosts, as of its last successful poll here or on another replica."""

    def __init__(
        self,
        backends: Backends,
        cache: Cache,
        *,
        refresh_s: float,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backends = backends
        self._cache = cache
        self._refresh_s = refresh_s
        self._ttl_s = ttl_s
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        # What every request reads (the model check, routing), worked out once per change.
        self._snapshot: tuple[float, dict[str, _Seen], frozenset[str]] | None = None
        self._cache_key = f"{cache.prefix}:{DISCOVERED_SUFFIX}"
        self._poked = anyio.Event()
        backends.on_change = self.poke

    def poke(self) -> None:
        """Poll now rather than at the next interval (a backend was added or changed)."""
        self._snapshot = None
        self._poked.set()

    def _saw(self, backend: str, seen: _Seen) -> None:
        self._seen[backend] = seen
        self._snapshot = None

    def _current(self) -> tuple[dict[str, _Seen], frozenset[str]]:
        """The answers still fresh, of current backends, and their union; kept until one of them
        grows too old or anything changes."""
        now_s = self._clock()
        if self._snapshot is not None and now_s < self._snapshot[0]:
            return self._snapshot[1], self._snapshot[2]
        members = self._backends.members
        fresh = {
            name: seen
            for name, seen in self._seen.items()
            if seen.at_s >= now_s - self._ttl_s and name in members
        }
        union = frozenset().union(*(seen.models for seen in fresh.values()))
        expires_s = min((seen.at_s for seen in fresh.values()), default=now_s) + self._ttl_s
        self._snapshot = (expires_s, fresh, union)
        return fresh, union

    def _fresh(self) -> dict[str, _Seen]:
        return self._current()[0]

    def models(self) -> frozenset[str]:
        """Every model some current backend hosts: the union, de-duplicated."""
        return self._current()[1]

    def hosts(self, model: str) -> frozenset[str]:
        """The backends that host `model`."""
        return frozenset(name for name, seen in self._fresh().items() if model in seen.models)

    def entries(self, names: list[str]) -> list[msgspec.Raw]:
        """Ollama tag entries for these names, the first backend's where several host one."""
        found: dict[str, msgspec.Raw] = {}
        for seen in self._fresh().values():
            for name, entry in seen.entries.items():
                found.setdefault(name, entry)
        return [found[name] for name in names if name in found]

    async def refresh(self) -> None:
        """Poll every backend at once; raises if none answered. A backend that fails keeps its
        previous answer until that is older than the TTL."""
        failed: list[str] = []

        async def poll(member: Member) -> None:
            try:
                with anyio.fail_after(min(self._refresh_s, POLL_TIMEOUT_S)):
                    self._saw(member.spec.name, await self._poll(member))
            except (GatewayError, TimeoutError) as exc:
                log.warning("model discovery of backend %s failed: %s", member.spec.name, exc)
                failed.append(member.spec.name)

        members = list(self._backends.members.values())
        async with anyio.create_task_group() as tg:
            for member in members:
                tg.start_soon(poll, member)
        if len(failed) < len(members):
            await self._share()
        if failed:
            raise GatewayError(f"discovery: {len(failed)} of {len(members)} backends failed")

    async def _poll(self, member: Member) -> _Seen:
        kind = member.spec.kind
        status, body = await member.backend.get("/api/tags" if kind == "ollama" else "/v1/models")
        if status != 200:
            raise GatewayError("the backend answered an error status")
        try:
            if kind == "ollama":
                raw_entries = _decode_tags(body).models
                names = [canonical_model(_decode_entry(raw).name) for raw in raw_entries]
                entries = dict(zip(names, raw_entries, strict=True))
                return _Seen(frozenset(names), entries, self._clock())
            listed = _decode_openai(body).data
            return _Seen(frozenset(canonical_model(m.id) for m in listed), {}, self._clock())
        except msgspec.DecodeError:
            raise GatewayError("the backend answered something that is not a model list") from None

    async def _share(self) -> None:
        fresh = self._fresh()
        shared = DiscoveredCache(
            models=sorted(self.models()),
            at_s=self._clock(),
            entries=[e for seen in fresh.values() for e in seen.entries.values()],
            hosts={name: sorted(seen.models) for name, seen in fresh.items()},
        )
        await self._cache.put_blob(self._cache_key, _encode(shared), ttl_s=int(self._ttl_s))

    async def _adopt_shared(self) -> None:
        """A replica that cannot reach a backend uses what another one saw of it, if newer."""
        blob = await self._cache.get_blob(self._cache_key)
        if blob is None:
            return
        try:
            shared = _decode_cache(blob)
            by_name = {canonical_model(_decode_entry(raw).name): raw for raw in shared.entries}
        except msgspec.DecodeError:
            return  # written by another version, or garbage: not worth more than no answer
        for backend, models in shared.hosts.items():
            seen = self._seen.get(backend)
            if seen is None or shared.at_s > seen.at_s:
                entries = {m: by_name[m] for m in models if m in by_name}
                self._saw(backend, _Seen(frozenset(models), entries, shared.at_s))

    async def _poll_once(self) -> None:
        try:
            await self.refresh()
        except GatewayError:
            try:
                await self._adopt_shared()
            except GatewayError:
                log.warning("model discovery: no shared answer in Redis either")

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._poll_once()
        task_status.started()
        while True:
            with anyio.move_on_after(self._refresh_s):
                await self._poked.wait()
            self._poked = anyio.Event()
            await self._poll_once()
