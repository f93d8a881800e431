"""After the last byte: leases kept while streams run, settle and the ledger when stores fail."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import pytest

from gateway.app import Gateway
from gateway.chain.budget import periods_at
from gateway.config import load_settings
from gateway.errors import ServiceUnavailable
from gateway.ledger import Ledger
from gateway.store.pg import Database
from tests.integration.quota_support import (
    CHAT,
    FAST_ARGON2,
    bearer,
    make_key,
    run_sql,
    running_gateway,
)

pytestmark = pytest.mark.anyio


async def test_a_stream_longer_than_the_lease_keeps_its_lease(
    env: dict[str, str],
    start_simulator: Callable[..., AbstractContextManager[str]],
    serve_app: Callable[[Any], str],
) -> None:
    # 3 s leases renewed every second; a 6 s stream must hold its slot the whole time.
    with start_simulator(chunks=60, token_delay_ms=100) as slow:
        live = {**FAST_ARGON2, **env, "OLLAMA_URL": slow, "LEASE_TTL_S": "3"}
        async with running_gateway(live) as (services, _):
            key = await make_key(services, key_concurrent=1, key_rpm=1000, tenant_rpm=1000)
        url = serve_app(Gateway(load_settings(live)))
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            request = client.build_request(
                "POST", "/api/chat", json={**CHAT, "stream": True}, headers=bearer(key)
            )
            stream = await client.send(request, stream=True)
            assert stream.status_code == 200
            await anyio.sleep(4.5)
            refused = await client.post("/api/chat", json=CHAT, headers=bearer(key))
            assert refused.status_code == 429
            assert refused.json() == {"error": "too many requests in flight for this key"}
            await stream.aread()
            await stream.aclose()
            # The lease goes right after the last byte, which the client may see a moment sooner.
            for _ in range(50):
                after = await client.post("/api/chat", json=CHAT, headers=bearer(key))
                if after.status_code != 429:
                    break
                await anyio.sleep(0.05)
            assert after.status_code == 200


async def test_redis_lost_mid_stream_still_finishes_and_the_ledger_keeps_the_tokens(
    env: dict[str, str],
    database_url: str,
    own_redis: Any,
    start_simulator: Callable[..., AbstractContextManager[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with start_simulator(chunks=25, token_delay_ms=100) as slow:
        live = {**env, "OLLAMA_URL": slow, "REDIS_URL": own_redis.url, "LEASE_TTL_S": "3"}
        async with running_gateway(live) as (services, client):
            key = await make_key(services, key_total=100_000)
            request = client.build_request("POST", "/api/chat", json=CHAT, headers=bearer(key))
            response_task: list[Any] = []

            async def ask() -> None:
                response_task.append(await client.send(request))

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await anyio.sleep(0.5)
                own_redis.stop()
            (response,) = response_task
            assert response.status_code == 200
            served = response.json()["prompt_eval_count"] + response.json()["eval_count"]
            await services.ledger.flush()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("could not renew 1 leases") for m in messages)
    assert any(m.startswith("settle skipped: Redis unavailable") for m in messages)
    rows = run_sql(
        database_url,
        "SELECT prompt_tokens + completion_tokens, requests FROM gateway.usage_ledger "
        "WHERE key_id = %s AND period = 'total'",
        key[3:15],
    )
    assert rows == [(served, 1)]


async def test_the_ledger_keeps_what_postgres_refused_and_counts_it_as_unflushed(
    own_postgres: Any, caplog: pytest.LogCaptureFixture
) -> None:
    periods = periods_at(datetime.now(UTC))
    tenant = "00000000-0000-0000-0000-000000000001"
    async with Database.open(own_postgres.url, pool_size=1, timeout_s=1) as database:
        ledger = Ledger(database, flush_interval_s=0.05)
        ledger.record(tenant, "keyAAAAAAAAA", periods, 10, 5)
        ledger.record(tenant, "keyBBBBBBBBB", periods, 1, 1)
        ledger.record("00000000-0000-0000-0000-000000000002", "keyCCCCCCCCC", periods, 7, 7)
        assert ledger.unflushed(tenant, "keyAAAAAAAAA", periods) == (15, 15, 15, 17, 17, 17)
        own_postgres.stop()
        with pytest.raises(ServiceUnavailable):
            await ledger.flush()
        assert ledger.unflushed(tenant, "keyAAAAAAAAA", periods) == (15, 15, 15, 17, 17, 17)
        async with anyio.create_task_group() as tg:
            await tg.start(ledger.run)
            with anyio.fail_after(10):
                while not any("rows kept" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            own_postgres.start()
            with anyio.fail_after(10):
                while ledger.unflushed(tenant, "keyAAAAAAAAA", periods) != (0,) * 6:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        usage = await database.usage_now(tenant, "keyAAAAAAAAA", periods.day, periods.month)
    assert (usage.key_total, usage.tenant_total) == (15, 17)


async def test_a_ledger_write_cancelled_midway_keeps_its_tokens(own_postgres: Any) -> None:
    """A shutdown can cancel a flush while Postgres is writing it: the tokens must not vanish."""
    periods = periods_at(datetime.now(UTC))
    tenant = "00000000-0000-0000-0000-000000000001"
    async with Database.open(own_postgres.url, pool_size=2, timeout_s=5) as database:
        ledger = Ledger(database, flush_interval_s=60)
        ledger.record(tenant, "keyAAAAAAAAA", periods, 10, 5)
        async with database.transaction() as blocker:
            # Holds the ledger's rows: the flush's write waits for this transaction.
            await blocker.execute("LOCK TABLE gateway.usage_ledger IN EXCLUSIVE MODE")
            with anyio.move_on_after(0.5) as waited:
                await ledger.flush()
            assert waited.cancelled_caught
        assert ledger.unflushed(tenant, "keyAAAAAAAAA", periods) == (15, 15, 15, 15, 15, 15)
        await ledger.flush()
        usage = await database.usage_now(tenant, "keyAAAAAAAAA", periods.day, periods.month)
    assert (usage.key_total, usage.tenant_total) == (15, 15)


async def test_a_limits_change_reaches_the_cached_principal(env: dict[str, str]) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services, key_rpm=1000, tenant_rpm=1000)
        first = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert first.headers["x-ratelimit-limit-requests"] == "1000"
        principal = await services.authenticator.authenticate([f"Bearer {key}".encode()])
        run_sql(
            services.settings.database_url.reveal(),
            "UPDATE gateway.api_keys SET rpm = 7 WHERE id = %s",
            principal.key_id,
        )
        await services.cache.evict_key(principal.key_id)
        await services.database.notify_principals(f"k:{principal.key_id}")
        with anyio.fail_after(5):
            while (  # noqa: ASYNC110
                await client.post("/api/chat", json=CHAT, headers=bearer(key))
            ).headers.get("x-ratelimit-limit-requests") != "7":
                await anyio.sleep(0.05)
        run_sql(
            services.settings.database_url.reveal(),
            "UPDATE gateway.tenants SET tpm = 12345 WHERE id = %s",
            principal.tenant_id,
        )
        await services.cache.evict_key(principal.key_id)
        await services.database.notify_principals(f"t:{principal.tenant_id}")
        with anyio.fail_after(5):
            while (  # noqa: ASYNC110
                await client.post("/api/chat", json=CHAT, headers=bearer(key))
            ).headers.get("x-ratelimit-limit-tokens") != "12345":
                await anyio.sleep(0.05)
