"""Redis through redis-py's asyncio client; the only module that sees redis-py's exceptions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import anyio
import hiredis
import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.credentials import UsernamePasswordCredentialProvider

from gateway.chain.limits import quota_keys
from gateway.errors import ServiceUnavailable
from gateway.store.redis_link import Connect, ErrorReply, Link

log = logging.getLogger(__name__)

_LUA = files("gateway.store") / "lua"
Arg = str | int
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


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


_FAILURES = (redis.exceptions.RedisError, ErrorReply, OSError, TimeoutError)


def link_endpoint(pool: redis.asyncio.ConnectionPool) -> tuple[Connect, tuple[bytes, ...]]:
    """How the link connects: where to, and what it says first, read from redis-py's own
    parse of the URL (host or socket path, TLS, credentials, database, client name)."""
    template = pool.connection_class(**pool.connection_kwargs)
    handshake: list[bytes] = []
    provider = template.credential_provider
    if provider is None and (template.username or template.password):
        provider = UsernamePasswordCredentialProvider(template.username, template.password)
    if provider is not None:
        handshake.append(pack_command(["AUTH", *provider.get_credentials()]))
    if template.db:
        handshake.append(pack_command(["SELECT", template.db]))
    if template.client_name:
        handshake.append(pack_command(["CLIENT", "SETNAME", template.client_name]))

    async def connect(protocol: Callable[[], _P]) -> _P:
        loop = asyncio.get_running_loop()
        if isinstance(template, UnixDomainSocketConnection):
            _, wire = await loop.create_unix_connection(protocol, template.path)
            return wire
        assert isinstance(template, redis.asyncio.Connection)
        tls = template.ssl_context.get() if isinstance(template, SSLConnection) else None
        _, wire = await loop.create_connection(protocol, template.host, template.port, ssl=tls)
        return wire

    return connect, tuple(handshake)


class _Mapped:
    """The link's failures and redis-py's turned into ours: the one place they are.

    The link keeps its own deadline; redis-py's calls take theirs from `_Call`.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None and issubclass(kind, _FAILURES):
            # The type only: redis-py messages can carry the URL, and with it the password.
            log.warning("Redis call failed: %s", kind.__name__)
            raise ServiceUnavailable from None


_MAPPED = _Mapped()


class _Call:
    """One call to Redis: bounded by timeout_s, and redis-py's failures turned into ours.

    asyncio's deadline rather than anyio's: redis-py runs on asyncio only, and
    `anyio.fail_after` costs 12 µs of CPU where this costs 4.
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
        _MAPPED.__exit__(kind, error, traceback)


class Cache:
    """The shared cache of resolved keys, keyed so that one DEL evicts every form of a key."""

    def __init__(
        self, client: redis.asyncio.Redis, link: Link, prefix: str, timeout_s: float
    ) -> None:
        self._client = client
        # The request path's calls share one connection, where each turn of the loop writes
        # them at once; everything else goes through redis-py's pool.
        self._link = link
        self._prefix = prefix
        self.timeout_s = timeout_s
        # Registered scripts run by EVALSHA and reload themselves after a Redis restart.
        self._admit = client.register_script((_LUA / "admit.lua").read_text())
        self._settle = client.register_script((_LUA / "settle.lua").read_text())
        self._renew = client.register_script((_LUA / "renew.lua").read_text())
        self._auth_lookup = client.register_script((_LUA / "auth_lookup.lua").read_text())

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
        link = Link(*link_endpoint(pool))
        try:
            yield cls(client, link, prefix, timeout_s)
        finally:
            link.close()
            with anyio.CancelScope(shield=True):
                await client.aclose()

    def _deadline(self) -> float:
        """When a call over the link started now must have its reply, in loop time."""
        return asyncio.get_running_loop().time() + self.timeout_s

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
        packed = pack_command(["HGET", self._key_entry(key_id), digest])
        with _MAPPED:
            value = await self._link.call(packed, self._deadline())
        return value if isinstance(value, bytes) else None

    async def lookup_principal(self, key_id: str, digest: bytes, attempt: Attempt) -> KeyLookup:
        """`get_principal` and the client's auth-failure window in one round trip: a miss is
        counted as an attempt, unless the window is full (then `retry_after_ms` is set)."""
        keys = [self._key_entry(key_id), self._attempts(attempt.subject)]
        args: list[Arg | bytes] = [digest, attempt.limit, attempt.window_ms, attempt.member]
        reply = await self._script(self._auth_lookup, keys, args)
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
        reply = await self._script(self._admit, keys, args)
        return [int(value) for value in reply]

    async def settle(self, keys: Sequence[str], args: Sequence[Arg]) -> None:
        await self._script(self._settle, keys, args)

    async def _script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg | bytes]
    ) -> Any:
        """EVALSHA over the shared link: the scripts on the request's path.

        A script Redis forgot (it restarted) is loaded and run again.
        """
        packed = pack_command(["EVALSHA", script.sha, len(keys), *keys, *args])
        deadline = self._deadline()
        with _MAPPED:
            try:
                return await self._link.call(packed, deadline)
            except ErrorReply as error:
                if not str(error).startswith("NOSCRIPT"):
                    raise
            text = script.script
            source = text if isinstance(text, str) else bytes(text)
            await self._link.call(pack_command(["SCRIPT", "LOAD", source]), deadline)
            return await self._link.call(packed, deadline)

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
