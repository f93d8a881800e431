"""Model discovery: poll the backend's `/api/tags`, share the result through Redis, and forget it
when it grows too old, so an unreachable backend means no models rather than stale ones."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import msgspec

from gateway.errors import GatewayError
from gateway.models import DISCOVERED_SUFFIX, DiscoveredCache, canonical_model
from gateway.store.redis import Cache
from gateway.upstream.backend import Backend

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 5.0


class _Entry(msgspec.Struct):
    name: str


class _Tags(msgspec.Struct):
    models: list[msgspec.Raw]


_decode_tags = msgspec.json.Decoder(_Tags).decode
_decode_entry = msgspec.json.Decoder(_Entry).decode
_decode_cache = msgspec.json.Decoder(DiscoveredCache).decode
_encode = msgspec.json.Encoder().encode


class Discovery:
    """The discovered models, as of the last successful poll here or on another replica."""

    def __init__(
        self,
        backend: Backend,
        cache: Cache,
        *,
        refresh_s: float,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._cache = cache
        self._refresh_s = refresh_s
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, msgspec.Raw] = {}
        self._at_s: float | None = None
        self._cache_key = f"{cache.prefix}:{DISCOVERED_SUFFIX}"

    def models(self) -> frozenset[str]:
        if self._at_s is None or self._clock() - self._at_s > self._ttl_s:
            return frozenset()
        return frozenset(self._entries)

    def entries(self, names: list[str]) -> list[msgspec.Raw]:
        return [self._entries[name] for name in names if name in self._entries]

    async def refresh(self) -> None:
        """One poll; on failure the previous answer stands until it is older than the TTL."""
        status, body = await self._backend.get("/api/tags")
        if status != 200:
            raise GatewayError("discovery: backend answered an error status")
        try:
            raw_entries = _decode_tags(body).models
            names = [canonical_model(_decode_entry(raw).name) for raw in raw_entries]
        except msgspec.DecodeError:
            raise GatewayError(
                "discovery: backend answered something that is not a tag list"
            ) from None
        self._entries = dict(zip(names, raw_entries, strict=True))
        self._at_s = self._clock()
        shared = DiscoveredCache(models=names, at_s=self._at_s, entries=raw_entries)
        await self._cache.put_blob(self._cache_key, _encode(shared), ttl_s=int(self._ttl_s))

    async def _adopt_shared(self) -> None:
        """A replica starting while the backend is unreachable uses what another one saw."""
        blob = await self._cache.get_blob(self._cache_key)
        if blob is None:
            return
        try:
            shared = _decode_cache(blob)
        except msgspec.DecodeError:
            return  # written by another version, or garbage: not worth more than no answer
        if self._at_s is None or shared.at_s > self._at_s:
            self._entries = dict(zip(shared.models, shared.entries, strict=False))
            self._at_s = shared.at_s

    async def _poll_once(self) -> None:
        try:
            with anyio.fail_after(min(self._refresh_s, POLL_TIMEOUT_S)):
                await self.refresh()
        except (GatewayError, TimeoutError) as exc:
            log.warning("model discovery failed: %s", exc)
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
            await anyio.sleep(self._refresh_s)
            await self._poll_once()
