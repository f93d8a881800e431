"""The auth stage against real Postgres and Redis: lookup order, refusals, rotation, rehash."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
import pytest

from gateway.chain.auth import Authenticator, LocalKeyCache, bearer_token
from gateway.chain.values import Principal
from gateway.errors import ServiceUnavailable, Unauthorized
from gateway.keys import KeyHasher, cache_digest, generate_key
from gateway.store import pg_keys, pg_tenants
from gateway.store.pg import Database
from gateway.store.redis import Cache

pytestmark = pytest.mark.anyio


def hasher(time_cost: int = 1) -> KeyHasher:
    return KeyHasher(
        time_cost=time_cost, memory_cost_kib=64, parallelism=1, max_concurrent_verifies=2
    )


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database.open(database_url, pool_size=2, timeout_s=5) as database:
        yield database


@pytest.fixture
async def cache(redis_url: str, redis_prefix: str) -> AsyncIterator[Cache]:
    async with Cache.open(redis_url, prefix=redis_prefix, timeout_s=2) as cache:
        yield cache


def sql(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


async def new_key(database: Database, tenant: str = "acme", **columns: object) -> str:
    tenant_id = (
        await pg_tenants.tenant_id(database, tenant)
        or (await pg_tenants.create_tenant(database, tenant)).id
    )
    issued = generate_key("gw")
    await pg_keys.create_key(
        database,
        key_id=issued.key_id,
        tenant_id=tenant_id,
        name=f"k{issued.key_id.lower()}",
        secret_hash=hasher().hash(issued.full_key),
        expires_at=None,
    )
    return issued.full_key


def authenticator(
    database: Database,
    cache: Cache,
    *,
    key_hasher: KeyHasher | None = None,
    wall: FakeClock | None = None,
    monotonic: FakeClock | None = None,
) -> Authenticator:
    return Authenticator(
        key_prefix="gw",
        hasher=key_hasher or hasher(),
        database=database,
        cache=cache,
        local=LocalKeyCache(ttl_s=10, max_entries=100, clock=monotonic or FakeClock(0)),
        shared_ttl_s=60,
        default_limits=(60, 100_000, 8),
        prompt_log_default_days=30,
        wall_clock=wall or FakeClock(datetime.now(UTC).timestamp()),
    )


def bearer(key: str) -> list[bytes]:
    return [f"Bearer {key}".encode()]


async def test_a_valid_key_resolves_and_is_served_from_caches_afterwards(
    database: Database, cache: Cache, database_url: str
) -> None:
    key = await new_key(database)
    auth = authenticator(database, cache)
    principal = await auth.authenticate(bearer(key))
    assert principal.tenant_name == "acme"
    assert principal.key_id == key[3:15]
    assert principal.expires_at_s is None
    # Gone from Postgres, still answered: first from this process, then from Redis.
    sql(database_url, "DELETE FROM gateway.api_keys WHERE id = %s", key[3:15])
    assert await auth.authenticate(bearer(key)) == principal
    assert await authenticator(database, cache).authenticate(bearer(key)) == principal
    # A different secret under the same id is not the cached key: it goes to Postgres and fails.
    other = key[:-1] + ("x" if key[-1] != "x" else "y")
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer(other))


@pytest.mark.parametrize(
    "header",
    [
        [],
        [b"Bearer"],
        [b"Basic abc"],
        [b"Bearer gw_short"],
        [b"Bearer caf\xc3\xa9"],
        [b"Bearer a", b"Bearer b"],
    ],
)
async def test_malformed_headers_are_refused(
    database: Database, cache: Cache, header: list[bytes]
) -> None:
    with pytest.raises(Unauthorized):
        await authenticator(database, cache).authenticate(header)


def test_bearer_token_parsing() -> None:
    assert bearer_token([b"Bearer abc"]) == "abc"
    assert bearer_token([b"bearer  abc "]) == "abc"
    assert bearer_token([b"Token abc"]) is None
    assert bearer_token([b"Bearer abc", b"Bearer abc"]) is None


async def test_unknown_revoked_disabled_and_expired_keys_are_refused(
    database: Database, cache: Cache, database_url: str
) -> None:
    auth = authenticator(database, cache)
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer(generate_key("gw").full_key))
    revoked = await new_key(database)
    assert await pg_keys.revoke_key(database, revoked[3:15], "leaked") is True
    assert await pg_keys.revoke_key(database, revoked[3:15], "again") is False
    assert await pg_keys.revoke_key(database, "nosuchkey123", None) is None
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer(revoked))
    disabled = await new_key(database, tenant="gone")
    sql(database_url, "UPDATE gateway.tenants SET disabled_at = now() WHERE name = 'gone'")
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer(disabled))
    expired = await new_key(database)
    sql(
        database_url,
        "UPDATE gateway.api_keys SET expires_at = now() - interval '1 minute' WHERE id = %s",
        expired[3:15],
    )
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer(expired))


async def test_a_cached_key_stops_working_when_it_expires(
    database: Database, cache: Cache, database_url: str
) -> None:
    key = await new_key(database)
    expires = datetime.now(UTC) + timedelta(hours=1)
    sql(
        database_url,
        "UPDATE gateway.api_keys SET expires_at = %s WHERE id = %s",
        expires,
        key[3:15],
    )
    wall = FakeClock(datetime.now(UTC).timestamp())
    auth = authenticator(database, cache, wall=wall)
    assert (await auth.authenticate(bearer(key))).expires_at_s == expires.timestamp()
    wall.now = expires.timestamp() + 1
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer(key))


async def test_a_rotated_out_secret_works_only_during_its_grace(
    database: Database, cache: Cache, database_url: str
) -> None:
    old = await new_key(database)
    key_id = old[3:15]
    new = f"gw_{key_id}{generate_key('gw').full_key[15:]}"
    grace_end = datetime.now(UTC) + timedelta(minutes=5)
    sql(
        database_url,
        "UPDATE gateway.api_keys SET previous_secret_hash = secret_hash, secret_hash = %s, "
        "previous_secret_expires_at = %s WHERE id = %s",
        hasher().hash(new),
        grace_end,
        key_id,
    )
    auth = authenticator(database, cache)
    assert (await auth.authenticate(bearer(new))).expires_at_s is None
    assert (await auth.authenticate(bearer(old))).expires_at_s == grace_end.timestamp()
    sql(
        database_url,
        "UPDATE gateway.api_keys SET previous_secret_expires_at = now() - interval '1 s' "
        "WHERE id = %s",
        key_id,
    )
    await cache.evict_key(key_id)
    with pytest.raises(Unauthorized):
        await authenticator(database, cache).authenticate(bearer(old))


async def test_a_grace_that_outlives_the_key_is_cut_at_the_keys_expiry(
    database: Database, cache: Cache, database_url: str
) -> None:
    old = await new_key(database)
    key_id = old[3:15]
    expires = datetime.now(UTC) + timedelta(minutes=1)
    sql(
        database_url,
        "UPDATE gateway.api_keys SET previous_secret_hash = secret_hash, secret_hash = 'x', "
        "previous_secret_expires_at = now() + interval '1 hour', expires_at = %s WHERE id = %s",
        expires,
        key_id,
    )
    principal = await authenticator(database, cache).authenticate(bearer(old))
    assert principal.expires_at_s == expires.timestamp()


async def test_a_hash_with_old_parameters_is_replaced_on_use(
    database: Database, cache: Cache, database_url: str
) -> None:
    key = await new_key(database)
    stronger = hasher(time_cost=2)
    await authenticator(database, cache, key_hasher=stronger).authenticate(bearer(key))
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT secret_hash FROM gateway.api_keys WHERE id = %s", (key[3:15],)
        ).fetchone()
    assert row is not None
    assert not stronger.needs_rehash(row[0])
    assert await stronger.verify(row[0], key)


async def test_an_unreachable_store_denies_with_503(
    database: Database, own_redis: object, database_url: str
) -> None:
    key = await new_key(database)
    async with Cache.open(own_redis.url, prefix="t", timeout_s=1) as cache:  # type: ignore[attr-defined] # the fixture's server object
        own_redis.stop()  # type: ignore[attr-defined] # the fixture's server object
        with pytest.raises(ServiceUnavailable):
            await authenticator(database, cache).authenticate(bearer(key))
    async with (
        Cache.open("redis://127.0.0.1:1/0", prefix="t", timeout_s=1) as dead_cache,
        Database.open("postgresql://postgres@127.0.0.1:1/x", pool_size=1, timeout_s=1) as dead,
    ):
        assert not await dead.ping()
        assert not await dead_cache.ping()
        with pytest.raises(ServiceUnavailable):
            await dead.find_key("abcdefghijkl")


def test_the_local_cache_is_bounded_and_ages_out() -> None:
    clock = FakeClock(0)
    local = LocalKeyCache(ttl_s=10, max_entries=2, clock=clock)
    principal = object()
    local.put("a", b"1", principal)  # type: ignore[arg-type] # any value will do here
    local.put("b", b"2", principal)  # type: ignore[arg-type] # any value will do here
    local.put("c", b"3", principal)  # type: ignore[arg-type] # any value will do here
    assert local.get("a", b"1") is None
    assert local.get("b", b"2") is principal
    assert local.get("b", b"wrong") is None
    clock.now = 10
    assert local.get("b", b"2") is None
    assert local.get("c", b"3") is None
    local.put("d", b"4", principal)  # type: ignore[arg-type] # any value will do here
    local.evict("d")
    assert local.get("d", b"4") is None
    local.put("e", b"5", principal)  # type: ignore[arg-type] # any value will do here
    local.clear()
    assert local.get("e", b"5") is None


async def test_a_cache_entry_this_version_cannot_read_is_resolved_afresh(
    database: Database, cache: Cache
) -> None:
    key = await new_key(database)
    await cache.put_principal(key[3:15], cache_digest(key), b"\x93written-by-an-older-version", 60)
    principal = await authenticator(database, cache).authenticate(bearer(key))
    assert principal.key_id == key[3:15]
    # ... and the unreadable entry was replaced by one that reads.
    assert await authenticator(database, cache).authenticate(bearer(key)) == principal


class CountingHasher(KeyHasher):
    """The real hasher, counting its verifies; `gate` (when set) holds each verify until opened."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost_kib=64, parallelism=1, max_concurrent_verifies=2)
        self.verifies = 0
        self.verifying = anyio.Event()
        self.gate: anyio.Event | None = None

    async def verify(self, stored_hash: str, full_key: str) -> bool:
        self.verifies += 1
        self.verifying.set()
        if self.gate is not None:
            await self.gate.wait()
        return await super().verify(stored_hash, full_key)


async def test_concurrent_lookups_of_one_key_share_one_verify(
    database: Database, cache: Cache
) -> None:
    key = await new_key(database)
    counting = CountingHasher()
    auth = authenticator(database, cache, key_hasher=counting)
    found: list[Principal] = []
    refused: list[Unauthorized] = []

    async def good() -> None:
        found.append(await auth.authenticate(bearer(key)))

    async def bad() -> None:
        try:
            await auth.authenticate(bearer(key[:-1] + ("x" if key[-1] != "x" else "y")))
        except Unauthorized as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(good)
            tg.start_soon(bad)
    assert len(found) == 20
    assert len({id(p) for p in found}) == 1
    assert len(refused) == 20
    assert counting.verifies == 2  # one for the key, one for the wrong secret


async def test_a_lookup_whose_client_left_does_not_strand_the_ones_waiting_on_it(
    database: Database, cache: Cache
) -> None:
    key = await new_key(database)
    counting = CountingHasher()
    counting.gate = anyio.Event()
    auth = authenticator(database, cache, key_hasher=counting)
    found: list[Principal] = []

    async def wait_and_resolve() -> None:
        found.append(await auth.authenticate(bearer(key)))

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as leader:
            async with anyio.create_task_group() as inner:
                inner.start_soon(auth.authenticate, bearer(key))
                await counting.verifying.wait()  # the leader is in its verify, held by the gate
                tg.start_soon(wait_and_resolve)
                await anyio.sleep(0.1)  # the second caller is now waiting on the first
                leader.cancel()
        counting.gate.set()
    # The second caller saw the first give up without an answer and looked the key up itself.
    assert counting.verifies == 2
    assert len(found) == 1
    assert found[0].key_id == key[3:15]
