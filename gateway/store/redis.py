"""Redis through redis-py's asyncio client; the only module that sees redis-py's exceptions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from types import TracebackType
from typing import Any, NamedTuple

import anyio
import hiredis
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from gateway.chain.limits import quota_keys
from gateway.errors import ServiceUnavailable

log = logging.getLogger(__name__)

_LUA = files("gateway.store") / "lua"
Arg = str | int
# The per-request scripts keep between calls as many connections as they had in flight at once,
# up to this share of REDIS_MAX_CONNECTIONS; other calls always find the rest of the pool. A
# smaller cap costs CPU under load: at c=32, a cap of 4 took 4 to 18% more per request.
_IDLE_SHARE = 0.5


class Attempt(NamedTuple):
    """One authentication that reached the slow path, counted against its client's window."""

    subject: str  # the client's bucket (`clientip.throttle_subject`)
    member: str  # unique to this attempt
    limit: int  # attempts allowed in the window
    window_ms: int


class KeyLookup(NamedTuple):
    """The cached principal, or how long the client must wait (0: the attempt was counted)."""

    blob: bytes | None
    retry_after_ms: int


def pack_command(parts: Sequence[Arg | bytes]) -> bytes:
    """One command in RESP, encoded as redis-py does (UTF-8 text, integers in decimal).

    hiredis's C encoder: the two scripts every request runs have about 40 parts each, and it
    packs them in 6 µs where a Python loop takes 10.
    """
    packed: bytes = hiredis.pack_command(tuple(parts))  # type: ignore[arg-type] # hiredis's stub types it as a tuple of one part
    return packed


_FAILURES = (redis.exceptions.RedisError, OSError, TimeoutError)


class _Call:
    """One call to Redis: bounded by timeout_s, and redis-py's failures turned into ours.

    asyncio's deadline rather than anyio's: redis-py runs on asyncio only, and every request
    passes two of these, where `anyio.fail_after` costs 12 µs of CPU and this 4.
    """

    __slots__ = ("_deadline",)

    def __init__(self, timeout_s: float) -> None:
        self._deadline = asyncio.timeout(timeout_s)

    async def __aenter__(self) -> None:
        await self._deadline.__aenter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._deadline.__aexit__(kind, error, traceback)
        except TimeoutError:
            kind = TimeoutError
        if kind is not None and issubclass(kind, _FAILURES):
            # The type only: redis-py messages can carry the URL, and with it the password.
            log.warning("Redis call failed: %s", kind.__name__)
            raise ServiceUnavailable from None


class Cache:
    """The shared cache of resolved keys, keyed so that one DEL evicts every form of a key."""

    def __init__(
        self, client: redis.asyncio.Redis, prefix: str, timeout_s: float, *, idle_max: int = 0
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.timeout_s = timeout_s
        # Registered scripts run by EVALSHA and reload themselves after a Redis restart.
        self._admit = client.register_script((_LUA / "admit.lua").read_text())
        self._settle = client.register_script((_LUA / "settle.lua").read_text())
        self._renew = client.register_script((_LUA / "renew.lua").read_text())
        self._auth_lookup = client.register_script((_LUA / "auth_lookup.lua").read_text())
        # Connections kept by `_evalsha` between calls; the pool counts them as in use.
        self._idle: list[Any] = []
        self._idle_max = idle_max

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str, *, prefix: str, timeout_s: float, max_connections: int = 64
    ) -> AsyncIterator[Cache]:
        # Blocking: a burst waits (up to the timeout) for a connection instead of failing.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            # No per-read or per-write timer: every call here runs under a deadline of timeout_s,
            # which bounds the whole call, and a socket timer costs a task per command.
            socket_timeout=None,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
            # After a Redis restart every pooled connection is dead: reconnect once, not fail.
            retry=Retry(NoBackoff(), retries=1),
            retry_on_error=[redis.exceptions.ConnectionError],
        )
        client = redis.asyncio.Redis.from_pool(pool)
        try:
            idle_max = int(max_connections * _IDLE_SHARE)
            yield cls(client, prefix, timeout_s, idle_max=idle_max)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def _key_entry(self, key_id: str) -> str:
        return f"{self._prefix}:key:{key_id}"

    def _attempts(self, subject: str) -> str:
        return f"{self._prefix}:authfail:{subject}"

    async def ping(self) -> bool:
        try:
            async with _Call(self.timeout_s):
                return bool(await self._client.ping())
        except ServiceUnavailable:
            return False

    async def get_principal(self, key_id: str, digest: bytes) -> bytes | None:
        async with _Call(self.timeout_s):
            value = await self._client.hget(self._key_entry(key_id), digest)
            return value if isinstance(value, bytes) else None

    async def lookup_principal(self, key_id: str, digest: bytes, attempt: Attempt) -> KeyLookup:
        """`get_principal` and the client's auth-failure window in one round trip: a miss is
        counted as an attempt, unless the window is full (then `retry_after_ms` is set)."""
        keys = [self._key_entry(key_id), self._attempts(attempt.subject)]
        args: list[Arg | bytes] = [digest, attempt.limit, attempt.window_ms, attempt.member]
        async with _Call(self.timeout_s):
            reply = await self._auth_lookup(keys=keys, args=args)
        blob = reply[0]
        if isinstance(blob, bytes):
            return KeyLookup(blob, 0)
        return KeyLookup(None, int(reply[1]))

    async def put_principal(
        self, key_id: str, digest: bytes, blob: bytes, ttl_s: int, *, proven: Attempt | None = None
    ) -> None:
        """Cache a resolved key; `proven` is its attempt, which no longer counts as a failure."""
        name = self._key_entry(key_id)
        async with _Call(self.timeout_s), self._client.pipeline(transaction=True) as pipe:
            pipe.hset(name, digest, blob)
            pipe.expire(name, ttl_s)
            if proven is not None:
                pipe.zrem(self._attempts(proven.subject), proven.member)
            await pipe.execute()

    async def forget_attempt(self, attempt: Attempt) -> None:
        """An attempt that neither failed nor succeeded (a store was down) counts for nothing."""
        async with _Call(self.timeout_s):
            await self._client.zrem(self._attempts(attempt.subject), attempt.member)

    async def evict_key(self, key_id: str) -> None:
        async with _Call(self.timeout_s):
            await self._client.delete(self._key_entry(key_id))

    @property
    def prefix(self) -> str:
        return self._prefix

    async def admit(self, keys: Sequence[str], args: Sequence[Arg]) -> list[int]:
        async with _Call(self.timeout_s):
            reply = await self._evalsha(self._admit, keys, args)
        return [int(value) for value in reply]

    async def settle(self, keys: Sequence[str], args: Sequence[Arg]) -> None:
        async with _Call(self.timeout_s):
            await self._evalsha(self._settle, keys, args)

    async def _evalsha(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA past redis-py's per-command layers: the two scripts every request runs.

        Connections stay checked out between calls (`_IDLE_SHARE`): taking one from the pool,
        with its lock and checks, costs more than half the CPU of the round trip itself. As the
        client would, a connection error is retried once (the connection reconnects), and a
        script Redis forgot (it restarted) is loaded and run again.
        """
        packed = pack_command(["EVALSHA", script.sha, len(keys), *keys, *args])
        pool = self._client.connection_pool
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = await pool.get_connection()  # type: ignore[no-untyped-call] # redis-py leaves it unannotated
        retried = loaded = kept = False
        try:
            while True:
                try:
                    await connection.send_packed_command(packed)
                    reply = await connection.read_response()
                except redis.exceptions.NoScriptError:
                    if loaded:
                        raise
                    loaded = True
                    # On this connection: the pool may have no other to give (and waits for it).
                    text = script.script
                    source = text if isinstance(text, str) else bytes(text)
                    await connection.send_packed_command(pack_command(["SCRIPT", "LOAD", source]))
                    await connection.read_response()
                    continue
                except redis.exceptions.ConnectionError:
                    # redis-py closed the socket; the next send opens a new one.
                    if retried:
                        raise
                    retried = True
                    continue
                kept = True
                return reply
        finally:
            if kept and len(self._idle) < self._idle_max:
                self._idle.append(connection)
            else:
                # Even when the call was cancelled: a connection not released is lost to the pool.
                with anyio.CancelScope(shield=True):
                    await pool.release(connection)

    async def renew_leases(self, leases: dict[tuple[str, str], list[str]], ttl_ms: int) -> None:
        """Extend many leases in one round trip: {(leases key, tokens key): [members]}."""
        async with _Call(self.timeout_s), self._client.pipeline(transaction=False) as pipe:
            for (lease_key, tokens_key), members in leases.items():
                await self._renew(
                    keys=[lease_key, tokens_key], args=[ttl_ms, *members], client=pipe
                )
            await pipe.execute()

    async def delete(self, *names: str) -> None:
        async with _Call(self.timeout_s):
            await self._client.delete(*names)

    async def live_reservations(self, tenant_ids: list[str]) -> dict[str, dict[str, int]]:
        """Tokens reserved by requests in flight: {tenant_id: {key_id: tokens}}. Like the
        admission script, it ignores entries whose lease has expired (their replica died)."""
        async with _Call(self.timeout_s), self._client.pipeline(transaction=False) as pipe:
            pipe.time()
            for tenant_id in tenant_ids:
                names = quota_keys(self._prefix, tenant_id, "_", "", "")
                pipe.zrange(names.leases, 0, -1, withscores=True)
                pipe.hgetall(names.lease_tokens)
            replies = await pipe.execute()
        seconds, microseconds = replies[0]
        now_ms = int(seconds) * 1000 + int(microseconds) // 1000
        reserved: dict[str, dict[str, int]] = {}
        for i, tenant_id in enumerate(tenant_ids):
            expiry_ms = {member.decode(): score for member, score in replies[1 + 2 * i]}
            per_key: dict[str, int] = {}
            for member, tokens in replies[2 + 2 * i].items():
                name = member.decode()
                if expiry_ms.get(name, now_ms + 1) > now_ms:
                    key_id = name.partition(":")[0]
                    per_key[key_id] = per_key.get(key_id, 0) + int(tokens)
            reserved[tenant_id] = per_key
        return reserved

    async def get_blob(self, name: str) -> bytes | None:
        async with _Call(self.timeout_s):
            value = await self._client.get(name)
        return value if isinstance(value, bytes) else None

    async def put_blob(self, name: str, value: bytes, *, ttl_s: int) -> None:
        async with _Call(self.timeout_s):
            await self._client.set(name, value, ex=max(ttl_s, 1))
