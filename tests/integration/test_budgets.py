"""Token budgets reserved at admission, settled to real counts, durable across Redis restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, TypedDict

import anyio
import httpx
import pytest
import redis

from gateway.chain.budget import periods_at
from gateway.chain.limits import quota_keys
from gateway.chain.values import Outcome
from gateway.services import Services
from tests.integration.quota_support import (
    CHAT,
    bearer,
    make_key,
    run_sql,
    running_gateway,
)

pytestmark = pytest.mark.anyio


class _Roomy(TypedDict):
    key_rpm: int
    tenant_rpm: int
    key_concurrent: int
    tenant_concurrent: int


ROOMY: _Roomy = {
    "key_rpm": 100_000,
    "tenant_rpm": 100_000,
    "key_concurrent": 1000,
    "tenant_concurrent": 1000,
}


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "MAX_NUM_PREDICT": "20"}


async def burst(client: httpx.AsyncClient, key: str, count: int) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    async def one() -> None:
        responses.append(await client.post("/api/chat", json=CHAT, headers=bearer(key)))

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return responses


def served_tokens(responses: list[httpx.Response]) -> int:
    return sum(
        r.json()["prompt_eval_count"] + r.json()["eval_count"]
        for r in responses
        if r.status_code == 200
    )


def ledger_total(database_url: str, key_id: str) -> int:
    rows = run_sql(
        database_url,
        "SELECT prompt_tokens + completion_tokens FROM gateway.usage_ledger "
        "WHERE key_id = %s AND period = 'total'",
        key_id,
    )
    return int(rows[0][0]) if rows else 0


async def test_concurrent_requests_never_spend_past_a_budget(
    env: dict[str, str],
    database_url: str,
    start_simulator: Callable[..., AbstractContextManager[str]],
) -> None:
    budget = 1000
    with start_simulator(chunks=50, token_delay_ms=5) as sim:
        async with running_gateway({**env, "OLLAMA_URL": sim}) as (services, client):
            key = await make_key(services, tenant_total=budget, **ROOMY)
            responses = await burst(client, key, 50)
            while True:  # keep spending until the budget says no
                more = await burst(client, key, 5)
                responses += more
                if all(r.status_code == 429 for r in more):
                    break
            await services.ledger.flush()
    served = served_tokens(responses)
    assert 0 < served <= budget
    refused = [r for r in responses if r.status_code == 429]
    assert refused
    assert {r.json()["error"] for r in refused} == {
        "the total token budget of this tenant is exhausted"
    }
    assert all("retry-after" not in r.headers for r in refused)
    # The ledger holds exactly what the backend reported, request for request.
    assert ledger_total(database_url, key[3:15]) == served


async def test_a_daily_budget_says_when_it_refills(env: dict[str, str]) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services, key_daily=10, **ROOMY)
        refused = await client.post("/api/chat", json=CHAT, headers=bearer(key))
    assert refused.status_code == 429
    assert refused.json() == {"error": "the daily token budget of this key is exhausted"}
    assert 1 <= int(refused.headers["retry-after"]) <= 86_400


async def test_openai_shaped_budget_refusal_has_its_own_code(env: dict[str, str]) -> None:
    from gateway.chain.limits import Decision, Verdict, refusal
    from gateway.errors import Surface, error_body

    decision = Decision(Verdict.TENANT_BUDGET, 0, 60, 0, 0, 100, 0, 0, 5)
    body = error_body(refusal(decision, 3600), Surface.OPENAI)
    assert b'"code":"budget_exhausted"' in body
    assert b'"type":"insufficient_quota"' in body
    assert b"monthly token budget of this tenant" in body


async def test_a_redis_restart_keeps_every_budget(
    env: dict[str, str], database_url: str, own_redis: Any
) -> None:
    restartable = {**env, "REDIS_URL": own_redis.url, "REDIS_KEY_PREFIX": "gw"}
    async with running_gateway(restartable) as (services, client):
        key = await make_key(services, key_total=100_000, **ROOMY)
        principal = await services.authenticator.authenticate([f"Bearer {key}".encode()])
        periods = periods_at(datetime.now(UTC))
        counter = quota_keys("gw", principal.tenant_id, principal.key_id, "", "").counters[2]
        spent = served_tokens(await burst(client, key, 10))
        raw = redis.Redis.from_url(own_redis.url)
        try:
            assert int(raw.get(counter) or 0) == spent
            await services.ledger.flush()
            own_redis.stop()
            own_redis.start()  # empty: nothing persisted
            assert raw.get(counter) is None
            # A serving gateway's loop sees Redis close the old connection while it restarts;
            # this one stood still through the synchronous restart. A command sent on that
            # connection would be a 503: Redis may have run it, so it is not sent again.
            await anyio.sleep(0.1)
            after = await client.post("/api/chat", json=CHAT, headers=bearer(key))
            assert after.status_code == 200
            spent += served_tokens([after])
            assert int(raw.get(counter) or 0) == spent
        finally:
            raw.close()
        await services.ledger.flush()
    assert ledger_total(database_url, principal.key_id) == spent
    assert periods.day.day >= 1


@asynccontextmanager
async def on_own_redis(
    env: dict[str, str], own_redis: Any
) -> AsyncIterator[tuple[Services, httpx.AsyncClient, str]]:
    """A gateway on the test's own Redis (1 s deadline), and a key it has served and cached."""
    async with running_gateway({**env, "REDIS_URL": own_redis.url, "REDIS_TIMEOUT_S": "1"}) as (
        services,
        client,
    ):
        key = await make_key(services, **ROOMY)
        assert (await client.post("/api/chat", json=CHAT, headers=bearer(key))).status_code == 200
        yield services, client, key


async def test_redis_down_means_503_for_every_request_and_recovery_without_restart(
    env: dict[str, str], own_redis: Any
) -> None:
    async with on_own_redis(env, own_redis) as (_, client, key):
        own_redis.stop()
        # The key is in this process's cache: auth needs no Redis, admission still does.
        for _ in range(3):
            down = await client.post("/api/chat", json=CHAT, headers=bearer(key))
            assert down.status_code == 503
            assert down.json() == {"error": "the gateway cannot serve requests right now"}
        own_redis.start()
        with anyio.fail_after(10):
            # Polling a server recovering in another process: nothing here to wait on instead.
            while (  # noqa: ASYNC110
                await client.post("/api/chat", json=CHAT, headers=bearer(key))
            ).status_code != 200:
                await anyio.sleep(0.2)


async def test_a_redis_that_stops_answering_is_a_503_once_its_deadline_passes(
    env: dict[str, str], own_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with on_own_redis(env, own_redis) as (services, client, key):
        principal = await services.authenticator.authenticate([f"Bearer {key}".encode()])
        grant = await services.admission.admit(principal, 10, 10)
        own_redis.pause()  # connections stay open; nothing comes back on them
        try:
            # Bounds far above REDIS_TIMEOUT_S: they catch a call that waits for ever.
            with anyio.fail_after(15):
                down = await client.post("/api/chat", json=CHAT, headers=bearer(key))
            assert down.status_code == 503
            # A settle runs shielded from cancellation: its own deadline still ends it.
            with anyio.CancelScope(shield=True), anyio.fail_after(15):
                await services.admission.settle(grant, Outcome())
            assert f"settle skipped: Redis unavailable (request {grant.member})" in caplog.text
        finally:
            own_redis.resume()
        again = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert again.status_code == 200


async def test_postgres_down_keeps_cached_keys_working_and_refuses_unknown_ones(
    env: dict[str, str], own_postgres: Any
) -> None:
    async with running_gateway(
        {**env, "DATABASE_URL": own_postgres.url, "DATABASE_TIMEOUT_S": "1"}
    ) as (services, client):
        key = await make_key(services, **ROOMY)
        other = await make_key(services, name="other", **ROOMY)
        assert (await client.post("/api/chat", json=CHAT, headers=bearer(key))).status_code == 200
        own_postgres.stop()
        assert (await client.post("/api/chat", json=CHAT, headers=bearer(key))).status_code == 200
        unknown = await client.post("/api/chat", json=CHAT, headers=bearer(other))
        assert unknown.status_code == 503
        own_postgres.start()
