"""Everything the gateway holds while it runs, built in one place and torn down in reverse."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import anyio
import msgspec

from gateway.audit import AuditLog
from gateway.chain.admission import Admission
from gateway.chain.auth import Authenticator, LocalKeyCache
from gateway.chain.stream import Relay
from gateway.config import Settings
from gateway.errors import ServiceUnavailable
from gateway.keys import KeyHasher
from gateway.ledger import Ledger
from gateway.retention import Sweeper
from gateway.store.pg import Database
from gateway.store.redis import Cache
from gateway.telemetry import Telemetry
from gateway.upstream.backends import Backends
from gateway.upstream.breaker import BreakerStatus
from gateway.upstream.discovery import Discovery

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0


class BackendHealth(msgspec.Struct):
    reachable: bool
    breaker: BreakerStatus


class Readiness(msgspec.Struct):
    postgres: bool
    redis: bool
    backend: bool  # at least one backend answers
    audit: bool  # the audit buffer has room; when full, every proxied request gets 503
    backends: dict[str, BackendHealth] = {}

    @property
    def ready(self) -> bool:
        return self.postgres and self.redis and self.backend and self.audit


def hasher_for(settings: Settings) -> KeyHasher:
    return KeyHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost_kib=settings.argon2_memory_cost_kib,
        parallelism=settings.argon2_parallelism,
        max_concurrent_verifies=settings.argon2_max_concurrent_verifies,
    )


class Services:
    """The pools, clients and chain stages of one running gateway; passed down explicitly."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        cache: Cache,
        backends: Backends,
        authenticator: Authenticator,
    ) -> None:
        self.settings = settings
        self.database = database
        self.cache = cache
        self.backends = backends
        self.authenticator = authenticator
        self.audit = AuditLog(
            database,
            capacity=settings.audit_buffer_size,
            flush_interval_s=settings.audit_flush_interval_s,
        )
        self.sweeper = Sweeper(
            database,
            default_retention_days=settings.audit_log_default_retention_days,
            interval_s=settings.retention_sweep_interval_s,
        )
        self.ledger = Ledger(database, flush_interval_s=settings.ledger_flush_interval_s)
        self.admission = Admission(cache, database, self.ledger, lease_ttl_s=settings.lease_ttl_s)
        self.discovery = Discovery(
            backends,
            cache,
            refresh_s=settings.model_discovery_refresh_s,
            ttl_s=settings.model_discovery_cache_ttl_s,
        )
        self.relay = Relay(
            backends, self.discovery, queue_timeout_s=settings.backend_queue_timeout_s
        )

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Services]:
        async with AsyncExitStack() as stack:
            database = await stack.enter_async_context(
                Database.open(
                    settings.database_url.reveal(),
                    pool_size=settings.database_pool_size,
                    timeout_s=settings.database_timeout_s,
                )
            )
            cache = await stack.enter_async_context(
                Cache.open(
                    settings.redis_url.reveal(),
                    prefix=settings.redis_key_prefix,
                    timeout_s=settings.redis_timeout_s,
                    max_connections=settings.redis_max_connections,
                )
            )
            backends = await stack.enter_async_context(
                Backends.open(settings, database, os.environ)
            )
            authenticator = Authenticator(
                key_prefix=settings.key_prefix,
                hasher=hasher_for(settings),
                database=database,
                cache=cache,
                local=LocalKeyCache(
                    ttl_s=settings.local_key_cache_ttl_s,
                    max_entries=settings.local_key_cache_size,
                    clock=time.monotonic,
                ),
                shared_ttl_s=settings.redis_key_cache_ttl_s,
                default_limits=(
                    settings.default_rpm,
                    settings.default_tpm,
                    settings.default_concurrent,
                ),
                prompt_log_default_days=settings.prompt_log_default_retention_days,
                failures_per_ip_per_min=settings.auth_failure_rate_limit_per_ip_per_min,
            )
            services = cls(settings, database, cache, backends, authenticator)
            async with anyio.create_task_group() as tg:
                await tg.start(backends.run)
                await tg.start(services._follow_changes, tg)
                await tg.start(services.audit.run)
                await tg.start(services.ledger.run)
                await tg.start(services.admission.keep_leases)
                await tg.start(services.discovery.run)
                await tg.start(services.sweeper.run)
                try:
                    yield services
                finally:
                    tg.cancel_scope.cancel()

    def observe(self, telemetry: Telemetry) -> None:
        """Gauges read on the telemetry's export thread: plain reads, nothing that blocks."""
        telemetry.observe_audit_depth(lambda: self.audit.depth)
        telemetry.observe_breakers(
            lambda: {
                name: m.breaker.status().state for name, m in list(self.backends.members.items())
            }
        )

    async def _follow_changes(
        self, tg: anyio.abc.TaskGroup, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        def revoked(key_id: str) -> None:
            self.authenticator.forget(key_id)
            tg.start_soon(self._evict_shared, key_id)

        def gap() -> None:
            self.authenticator.local.clear()
            self.backends.changed()

        handlers = {
            "gateway_revocations": revoked,
            "gateway_principals": self.authenticator.changed,
            "gateway_backends": self.backends.changed,
        }
        await self.database.listen(handlers, gap, task_status=task_status)

    async def _evict_shared(self, key_id: str) -> None:
        try:
            await self.cache.evict_key(key_id)
        except ServiceUnavailable:
            # The revoking CLI evicts too, and the shared entry's TTL bounds the rest.
            log.warning("could not evict revoked key %s from Redis", key_id)

    async def readiness(self) -> Readiness:
        """Probe every dependency at once; the slowest answer bounds the wait."""
        results: dict[str, bool] = {}

        async def probe(name: str, check: Callable[[], Awaitable[bool]]) -> None:
            results[name] = await check()

        members = dict(self.backends.members)
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe, "postgres", self.database.ping)
            tg.start_soon(probe, "redis", self.cache.ping)
            for name, member in members.items():
                tg.start_soon(
                    probe, f"backend:{name}", partial(member.backend.ping, READY_TIMEOUT_S)
                )
        backends = {
            name: BackendHealth(results[f"backend:{name}"], member.breaker.status())
            for name, member in members.items()
        }
        return Readiness(
            postgres=results["postgres"],
            redis=results["redis"],
            backend=any(health.reachable for health in backends.values()),
            audit=not self.audit.full,
            backends=backends,
        )
