"""Refusals that must not tell one case from another: blocked paths, and the readiness probe."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import anyio
import httpx
import pytest

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.keys import generate_key
from gateway.services import Services, hasher_for
from gateway.store import pg_keys, pg_tenants
from tests.integration.asgi import call

pytestmark = pytest.mark.anyio


BLOCKED = [
    b"/api/pull",
    b"/api/push",
    b"/api/create",
    b"/api/copy",
    b"/api/delete",
    b"/api/blobs/sha256:0123abcd",
    b"/API/PULL",
    b"/Api/Delete",
    b"/api/pull/",
    b"//api/pull",
    b"/api//pull",
    b"/api/./pull",
    b"/api/x/../pull",
    b"/api/chat/../pull",
    b"/%61pi/pull",
    b"/api/%70ull",
    b"/api%2Fpull",
    b"/api%2fdelete",
    b"/api%252Fpull",
    b"/api/pull%00",
    b"/api\\pull",
    b"/api/pull;x",
    b"/api/tags/../../api/push",
    b"/api/unknown",
    b"/api/" + b"a" * 4000,
]


async def make_key(services: Services) -> str:
    tenant = await pg_tenants.create_tenant(services.database, "acme", allow_all_models=True)
    issued = generate_key(services.settings.key_prefix)
    await pg_keys.create_key(
        services.database,
        key_id=issued.key_id,
        tenant_id=tenant.id,
        name="app",
        secret_hash=hasher_for(services.settings).hash(issued.full_key),
        expires_at=None,
    )
    return issued.full_key


@pytest.fixture
async def running(env: dict[str, str]) -> AsyncIterator[tuple[Gateway, str]]:
    app = Gateway(load_settings(env))
    async with app.running() as services:
        yield app, await make_key(services)


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE", "HEAD"])
async def test_every_spelling_of_a_blocked_path_gets_one_identical_403(
    running: tuple[Gateway, str], method: str
) -> None:
    app, key = running
    headers = [(b"authorization", f"Bearer {key}".encode())]
    answers = [await call(app, method, raw, headers, b'{"model":"m"}') for raw in BLOCKED]
    assert {a.status for a in answers} == {403}
    assert {a.body for a in answers} == {
        b'{"error":"this endpoint is not available through the gateway"}'
    }
    assert len({a.headers[b"x-request-id"] for a in answers}) == len(BLOCKED)


async def test_blocked_paths_never_reach_the_backend(
    env: dict[str, str], database_url: str
) -> None:
    from gateway.upstream.sim import SimConfig, Simulator
    from tests.servers import serve_in_thread

    sim = Simulator(SimConfig())
    with serve_in_thread(sim) as sim_url:
        app = Gateway(load_settings({**env, "OLLAMA_URL": sim_url}))
        async with app.running() as services:
            key = await make_key(services)
            # Discovery has asked for the model list by now; nothing else may follow.
            before = sim.stats.requests
            headers = [(b"authorization", f"Bearer {key}".encode())]
            for raw in BLOCKED:
                await call(app, "POST", raw, headers, b'{"model":"m","name":"m"}')
    assert sim.stats.requests == before


async def test_an_unlisted_path_outside_api_is_404_and_v1_speaks_openai(
    running: tuple[Gateway, str],
) -> None:
    app, key = running
    headers = [(b"authorization", f"Bearer {key}".encode())]
    other = await call(app, "GET", b"/favicon.ico", headers)
    assert (other.status, other.body) == (404, b'{"error":"no such endpoint"}')
    v1 = await call(app, "POST", b"/v1/nothing", headers)
    assert v1.status == 404
    assert v1.body == (
        b'{"error":{"message":"no such endpoint","type":"invalid_request_error",'
        b'"code":"not_found","param":null}}'
    )
    unauthenticated = await call(app, "POST", b"/v1/chat/completions", [])
    assert unauthenticated.status == 401
    assert b'"code":"invalid_api_key"' in unauthenticated.body


async def ready_again(checks: Callable[[], Awaitable[tuple[int, dict[str, bool]]]]) -> None:
    """A store that came back is trusted again within a few seconds (its pool reconnects)."""
    with anyio.fail_after(15):
        while (await checks())[0] != 200:  # noqa: ASYNC110 - polling another server over HTTP
            await anyio.sleep(0.2)


async def test_readiness_follows_each_dependency(
    env: dict[str, str],
    own_redis: Any,
    own_postgres: Any,
    start_simulator: Callable[..., AbstractContextManager[str]],
    serve_app: Callable[[Any], str],
) -> None:
    with start_simulator() as sim_url:
        settings = load_settings(
            {
                **env,
                "DATABASE_URL": own_postgres.url,
                "REDIS_URL": own_redis.url,
                "OLLAMA_URL": sim_url,
                "DATABASE_TIMEOUT_S": "1",
                "REDIS_TIMEOUT_S": "1",
            }
        )
        url = serve_app(Gateway(settings))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def checks() -> tuple[int, dict[str, bool]]:
                resp = await client.get("/readyz")
                checks = resp.json()["checks"]
                del checks["backends"]
                return resp.status_code, checks

            assert await checks() == (
                200,
                {"postgres": True, "redis": True, "backend": True, "audit": True},
            )
            own_redis.stop()
            assert await checks() == (
                503,
                {"postgres": True, "redis": False, "backend": True, "audit": True},
            )
            own_redis.start()
            await ready_again(checks)
            own_postgres.stop()
            assert await checks() == (
                503,
                {"postgres": False, "redis": True, "backend": True, "audit": True},
            )
            own_postgres.start()
            await ready_again(checks)
    # The simulator is gone now.
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        resp = await client.get("/readyz")
        assert resp.status_code == 503
        detail = resp.json()["checks"]
        assert detail.pop("backends")["default"]["reachable"] is False
        assert detail == {
            "postgres": True,
            "redis": True,
            "backend": False,
            "audit": True,
        }
        assert (await client.get("/healthz")).status_code == 200
