"""The per-IP auth-failure throttle and the client IP it counts, over real sockets with real
Postgres and Redis: blocked addresses burn no argon2, others are untouched, and only a trusted
proxy's X-Forwarded-For decides who the client is."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import anyio
import httpx
import pytest
import redis

from gateway.app import Gateway
from gateway.chain.auth import Authenticator, LocalKeyCache
from gateway.config import load_settings
from gateway.devservices import RedisServer
from gateway.errors import AuthRateLimited, ServiceUnavailable, Unauthorized
from gateway.keys import KeyHasher, generate_key
from gateway.store.pg import Database
from gateway.store.redis import Cache
from tests.integration.quota_support import bearer, run_sql
from tests.integration.test_audit import sql_key
from tests.integration.test_telemetry_gateway import settled
from tests.telemetry_support import Rig, rig

pytestmark = pytest.mark.anyio

LIMIT = 20


def wrong_keys(database_url: str, count: int) -> list[str]:
    """Keys that fail in both ways: unknown ids (a dummy verify) and a real id, wrong secret."""
    real, _ = sql_key(database_url, "acme", "target")
    keys = []
    for i in range(count):
        if i % 2:
            keys.append(generate_key("gw").full_key)
        else:
            keys.append(real[:15] + generate_key("gw").full_key[15:])
    return keys


def served(app: Gateway) -> Authenticator:
    assert app.services is not None
    return app.services.authenticator


def client_from(url: str, local_address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose socket peer, as the gateway sees it, is `local_address`."""
    transport = httpx.AsyncHTTPTransport(local_address=local_address)
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=30)


async def audited(database_url: str, count: int) -> dict[str, tuple[int, str | None, str | None]]:
    """request id → (status, error code, client ip), once `count` rows are written."""
    deadline = time.monotonic() + 15
    while True:
        rows = run_sql(
            database_url,
            "SELECT request_id, status, error_code, host(client_ip) FROM gateway.audit_log",
        )
        if len(rows) >= count or time.monotonic() > deadline:
            return {row[0]: (row[1], row[2], row[3]) for row in rows}
        await anyio.sleep(0.1)


async def test_wrong_keys_from_one_address_stop_reaching_argon2(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    good, _ = sql_key(database_url, "acme", "app")
    app = Gateway(load_settings({**env, "GATEWAY_TRUSTED_PROXIES": ""}))
    url = serve_app(app)
    statuses: list[int] = []
    async with client_from(url) as attacker, client_from(url, "127.0.0.2") as neighbour:
        for i, key in enumerate(wrong_keys(database_url, 25)):
            resp = await attacker.get(
                "/v1/models", headers={**bearer(key), "X-Request-ID": f"w{i}"}
            )
            statuses.append(resp.status_code)
            if i == LIMIT - 1:
                assert served(app).verifications == LIMIT
            if resp.status_code == 429:
                assert resp.json()["error"]["code"] == "auth_rate_limited"
                assert 50 <= int(resp.headers["retry-after"]) <= 60
        assert statuses == [401] * LIMIT + [429] * 5
        assert served(app).verifications == LIMIT
        # A valid key the gateway has not checked yet is refused too: nothing is verified.
        resp = await attacker.get("/v1/models", headers=bearer(good))
        assert resp.status_code == 429
        assert served(app).verifications == LIMIT
        # Another address is not affected, and its key is then proven valid...
        resp = await neighbour.get("/v1/models", headers={**bearer(good), "X-Request-ID": "n"})
        assert resp.status_code == 200
        # ... so it is served from the blocked address too; a wrong key still is not.
        assert (await attacker.get("/v1/models", headers=bearer(good))).status_code == 200
        resp = await attacker.get("/v1/models", headers=bearer(generate_key("gw").full_key))
        assert resp.status_code == 429
        assert served(app).verifications == LIMIT + 1
    rows = await audited(database_url, 28)
    assert rows["w0"] == (401, "invalid_api_key", "127.0.0.1")
    assert rows["w24"] == (429, "auth_rate_limited", "127.0.0.1")
    assert rows["n"] == (200, None, "127.0.0.2")


@pytest.fixture
def telemetry() -> Iterator[Rig]:
    with rig() as made:
        yield made


async def test_behind_a_trusted_proxy_x_forwarded_for_decides_the_address(
    env: dict[str, str], telemetry: Rig, serve_app: Callable[[Any], str], database_url: str
) -> None:
    good, _ = sql_key(database_url, "acme", "app")
    settings = load_settings({**env, "GATEWAY_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8"})
    app = Gateway(settings, telemetry=telemetry.telemetry)
    url = serve_app(app)
    async with client_from(url) as proxy:
        for i, key in enumerate(wrong_keys(database_url, LIMIT)):
            # The client forged a header of its own; the proxies appended what they saw.
            xff = f"198.51.100.{i}, 203.0.113.5, 10.1.2.3"
            resp = await proxy.get(
                "/v1/models",
                headers={**bearer(key), "X-Forwarded-For": xff, "X-Request-ID": f"a{i}"},
            )
            assert resp.status_code == 401
        blocked = {"X-Forwarded-For": "203.0.113.5", "X-Request-ID": "blocked"}
        resp = await proxy.get(
            "/v1/models", headers={**bearer(generate_key("gw").full_key), **blocked}
        )
        assert resp.status_code == 429
        # Everyone else behind the proxy is served, the proxy's own requests included.
        other = {"X-Forwarded-For": "2001:db8::7", "X-Request-ID": "other"}
        assert (await proxy.get("/v1/models", headers={**bearer(good), **other})).status_code == 200
        bare = await proxy.get("/v1/models", headers={**bearer(good), "X-Request-ID": "bare"})
        assert bare.status_code == 200
    assert served(app).verifications == LIMIT + 1
    rows = await audited(database_url, LIMIT + 3)
    assert rows["a0"] == (401, "invalid_api_key", "203.0.113.5")
    assert rows["blocked"] == (429, "auth_rate_limited", "203.0.113.5")
    assert rows["other"] == (200, None, "2001:db8::7")
    assert rows["bare"] == (200, None, "127.0.0.1")
    # The request spans name the same address as the audit rows.
    await settled(telemetry, LIMIT + 3)
    addresses = {
        dict(span.attributes or {}).get("client.address")
        for span in telemetry.spans()
        if span.parent is None
    }
    assert addresses == {"203.0.113.5", "2001:db8::7", "127.0.0.1"}


@pytest.mark.parametrize("trusted", ["", "10.0.0.0/8, ::1"])
async def test_an_untrusted_peer_cannot_choose_its_address(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str, trusted: str
) -> None:
    app = Gateway(load_settings({**env, "GATEWAY_TRUSTED_PROXIES": trusted}))
    url = serve_app(app)
    async with client_from(url) as client:
        for i, key in enumerate(wrong_keys(database_url, LIMIT + 1)):
            headers = {**bearer(key), "X-Forwarded-For": f"203.0.113.{i}", "X-Request-ID": f"u{i}"}
            resp = await client.get("/v1/models", headers=headers)
            assert resp.status_code == (429 if i == LIMIT else 401)
    rows = await audited(database_url, LIMIT + 1)
    assert {ip for _, _, ip in rows.values()} == {"127.0.0.1"}


async def test_zero_turns_the_throttle_off(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    app = Gateway(load_settings({**env, "AUTH_FAILURE_RATE_LIMIT_PER_IP_PER_MIN": "0"}))
    url = serve_app(app)
    async with client_from(url) as client:
        for key in wrong_keys(database_url, LIMIT + 3):
            assert (await client.get("/v1/models", headers=bearer(key))).status_code == 401
    assert served(app).verifications == LIMIT + 3


async def test_without_redis_the_check_fails_closed(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    database_url: str,
    own_redis: RedisServer,
) -> None:
    app = Gateway(load_settings({**env, "REDIS_URL": own_redis.url, "REDIS_TIMEOUT_S": "1"}))
    url = serve_app(app)
    bad = wrong_keys(database_url, 2)
    async with client_from(url) as client:
        assert (await client.get("/v1/models", headers=bearer(bad[0]))).status_code == 401
        own_redis.stop()
        resp = await client.get("/v1/models", headers=bearer(bad[1]))
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "unavailable"
    assert served(app).verifications == 1


# The Authenticator itself: the bound under concurrency, and what counts as a failure.


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    async with Database.open(database_url, pool_size=4, timeout_s=5) as database:
        yield database


@pytest.fixture
async def cache(redis_url: str, redis_prefix: str) -> AsyncIterator[Cache]:
    async with Cache.open(redis_url, prefix=redis_prefix, timeout_s=2) as cache:
        yield cache


def authenticator(database: Database, cache: Cache, limit: int = LIMIT) -> Authenticator:
    return Authenticator(
        key_prefix="gw",
        hasher=KeyHasher(time_cost=1, memory_cost_kib=64, parallelism=1, max_concurrent_verifies=2),
        database=database,
        cache=cache,
        local=LocalKeyCache(ttl_s=10, max_entries=100, clock=time.monotonic),
        shared_ttl_s=60,
        default_limits=(60, 100_000, 8),
        prompt_log_default_days=30,
        failures_per_ip_per_min=limit,
    )


def attempts(redis_url: str, redis_prefix: str, subject: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard(f"{redis_prefix}:authfail:{subject}"))
    finally:
        client.close()


async def test_a_concurrent_burst_gets_exactly_the_limit_of_verifies(
    database: Database, cache: Cache, database_url: str
) -> None:
    auth = authenticator(database, cache)
    refused: list[type[Exception]] = []

    async def attempt(key: str) -> None:
        try:
            await auth.authenticate(bearer_header(key), "203.0.113.9")
        except (Unauthorized, AuthRateLimited) as exc:
            refused.append(type(exc))

    async with anyio.create_task_group() as tg:
        for key in wrong_keys(database_url, 2 * LIMIT):
            tg.start_soon(attempt, key)
    assert sorted(refused, key=lambda kind: kind.__name__) == (
        [AuthRateLimited] * LIMIT + [Unauthorized] * LIMIT
    )
    assert auth.verifications == LIMIT


async def test_concurrent_callers_of_one_key_from_a_blocked_address_are_all_refused(
    database: Database, cache: Cache, database_url: str
) -> None:
    auth = authenticator(database, cache, limit=1)
    first, second = wrong_keys(database_url, 2)
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer_header(first), "203.0.113.9")
    refused: list[int] = []

    async def attempt() -> None:
        try:
            await auth.authenticate(bearer_header(second), "203.0.113.9")
        except AuthRateLimited as exc:
            refused.append(exc.status)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(attempt)
    assert refused == [429] * 5
    assert auth.verifications == 1
    # The same key from elsewhere is checked as usual.
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer_header(second), "2001:db8::1")


async def test_successes_and_store_failures_leave_nothing_counted(
    database: Database, cache: Cache, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    good, _ = sql_key(database_url, "acme", "app")
    await authenticator(database, cache).authenticate(bearer_header(good), "203.0.113.9")
    assert attempts(redis_url, redis_prefix, "203.0.113.9") == 0
    async with Database.open(
        "postgresql://postgres@127.0.0.1:1/x", pool_size=1, timeout_s=1
    ) as dead:
        auth = authenticator(dead, cache, limit=2)
        for _ in range(3):
            with pytest.raises(ServiceUnavailable):
                await auth.authenticate(bearer_header(generate_key("gw").full_key), "203.0.113.9")
    assert attempts(redis_url, redis_prefix, "203.0.113.9") == 0
    with pytest.raises(Unauthorized):
        await authenticator(database, cache).authenticate(
            bearer_header(generate_key("gw").full_key), "203.0.113.9"
        )
    assert attempts(redis_url, redis_prefix, "203.0.113.9") == 1


async def test_the_window_frees_after_a_minute(
    database: Database, cache: Cache, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    auth = authenticator(database, cache, limit=2)
    for key in wrong_keys(database_url, 2):
        with pytest.raises(Unauthorized):
            await auth.authenticate(bearer_header(key), "203.0.113.9")
    with pytest.raises(AuthRateLimited) as refused:
        await auth.authenticate(bearer_header(generate_key("gw").full_key), "203.0.113.9")
    ((header, value),) = refused.value.headers
    assert header == b"retry-after"
    assert 55 <= int(value) <= 60
    # Age the failures by a minute, as the clock would.
    client = redis.Redis.from_url(redis_url)
    try:
        name = f"{redis_prefix}:authfail:203.0.113.9"
        scores = cast(list[tuple[bytes, float]], client.zrange(name, 0, -1, withscores=True))
        client.zadd(name, {member: score - 60_001 for member, score in scores})
    finally:
        client.close()
    with pytest.raises(Unauthorized):
        await auth.authenticate(bearer_header(generate_key("gw").full_key), "203.0.113.9")


def bearer_header(key: str) -> list[bytes]:
    return [f"Bearer {key}".encode()]
