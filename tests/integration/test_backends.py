"""Several backends from the table: routing by model, failover, breakers, fair queueing,
cancellation, and changes made with the CLI reaching a running gateway."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.upstream.sim import SimConfig, Simulator
from tests.integration.cli_support import ok
from tests.integration.quota_support import bearer, run_sql
from tests.integration.test_audit import sql_key, wait_for_rows
from tests.servers import serve_in_thread

pytestmark = pytest.mark.anyio


def add_backend(database_url: str, name: str, url: str, **columns: Any) -> None:
    names = ", ".join(["name", "url", *columns])
    marks = ", ".join(["%s"] * (2 + len(columns)))
    run_sql(
        database_url,
        f"INSERT INTO gateway.backends ({names}) VALUES ({marks})",
        name,
        url,
        *columns.values(),
    )


def logged(sim: Simulator) -> list[str]:
    return [entry.request_id for entry in sim.stats.log]


def chat(model: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def test_each_model_goes_to_a_backend_that_hosts_it_and_fails_over_when_one_is_gone(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    first = Simulator(SimConfig(models=("alpha:1b", "shared:1b")))
    second = Simulator(SimConfig(models=("beta:1b", "shared:1b")))
    key, _ = sql_key(database_url, "acme", "app")
    with serve_in_thread(first) as first_url:
        add_backend(database_url, "first", first_url, priority=10)
        add_backend(database_url, "second", serve_app(second))
        url = serve_app(Gateway(load_settings(env)))
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(key)) as client:
            tags = (await client.get("/api/tags")).json()["models"]
            assert sorted(m["name"] for m in tags) == ["alpha:1b", "beta:1b", "shared:1b"]
            listed = (await client.get("/v1/models")).json()["data"]
            assert sorted(m["id"] for m in listed) == ["alpha:1b", "beta:1b", "shared:1b"]
            for model, sim in (("alpha:1b", first), ("beta:1b", second), ("shared:1b", first)):
                resp = await client.post(
                    "/api/chat", json=chat(model), headers={"X-Request-ID": f"to-{model}"}
                )
                assert resp.status_code == 200
                assert f"to-{model}" in logged(sim)
    # The first backend is gone; the model it shared is answered by the other, cleanly.
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(key)) as client:
        for protocol_path in ("/api/chat", "/v1/chat/completions"):
            resp = await client.post(
                protocol_path, json=chat("shared:1b"), headers={"X-Request-ID": "after"}
            )
            assert resp.status_code == 200
            assert "error" not in resp.json()
        # Refused, not slow: a backend error, not a timeout.
        alone = await client.post("/api/chat", json=chat("alpha:1b"))
        assert alone.status_code == 502
    assert logged(second).count("after") == 2


async def test_a_backend_dying_mid_stream_ends_the_stream_honestly_and_trips_its_breaker(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    sim = Simulator(SimConfig(chunks=8, die_after_chunks=3))
    add_backend(database_url, "gpu", serve_app(sim))
    key, _ = sql_key(database_url, "acme", "app", concurrent=1)
    live = {**env, "BREAKER_FAILURES": "2", "BREAKER_OPEN_S": "1"}
    url = serve_app(Gateway(load_settings(live)))

    async def breaker(client: httpx.AsyncClient) -> str:
        state: str = (await client.get("/readyz")).json()["checks"]["backends"]["gpu"]["breaker"][
            "state"
        ]
        return state

    async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(key)) as client:
        for _ in range(2):
            # The key may run one request at a time: the second is admitted only if the first
            # released its lease.
            resp = await client.post("/api/chat", json=chat("llama3.2:1b", stream=True))
            assert resp.status_code == 200
            frames = [msgspec.json.decode(line) for line in resp.text.splitlines()]
            assert len(frames) == 4
            assert frames[-1] == {"error": "the model backend failed to answer"}
        assert await breaker(client) == "open"
        refused = await client.post("/api/chat", json=chat("llama3.2:1b"))
        assert refused.status_code == 503
        assert len(sim.stats.log) == 2  # an open breaker sends nothing to the backend
        sim.reconfigure(SimConfig(chunks=8))
        await anyio.sleep(1.1)
        assert await breaker(client) == "half_open"
        healed = await client.post("/api/chat", json=chat("llama3.2:1b", stream=True))
        assert healed.status_code == 200
        assert msgspec.json.decode(healed.text.splitlines()[-1])["done"] is True
        assert await breaker(client) == "closed"


async def test_a_model_load_answer_is_a_whole_answer_not_a_backend_failure(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    # Ollama answers a chat with no messages by loading the model: one frame, no counts.
    add_backend(database_url, "gpu", serve_app(Simulator(SimConfig())))
    key, _ = sql_key(database_url, "acme", "app")
    url = serve_app(Gateway(load_settings({**env, "BREAKER_FAILURES": "1"})))
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(key)) as client:
        for _ in range(3):
            body = {"model": "llama3.2:1b", "messages": [], "stream": True}
            resp = await client.post("/api/chat", json=body)
            assert resp.status_code == 200
            frames = [msgspec.json.decode(line) for line in resp.text.splitlines()]
            assert [(f["done"], f["done_reason"]) for f in frames] == [(True, "load")]
        status = (await client.get("/readyz")).json()["checks"]["backends"]["gpu"]["breaker"]
        assert (status["state"], status["failures"]) == ("closed", 0)


async def test_a_tenant_with_a_full_queue_cannot_hold_back_another_tenants_request(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    sim = Simulator(SimConfig(chunks=10, token_delay_ms=20))
    add_backend(database_url, "gpu", serve_app(sim), max_parallel=1)
    busy, _ = sql_key(database_url, "busy", "app")
    other, _ = sql_key(database_url, "other", "app")
    app = Gateway(load_settings(env))
    url = serve_app(app)
    async with (
        httpx.AsyncClient(base_url=url, timeout=60) as client,
        anyio.create_task_group() as tg,
    ):

        async def ask(key: str, request_id: str) -> None:
            headers = {**bearer(key), "X-Request-ID": request_id}
            resp = await client.post("/api/chat", json=chat("llama3.2:1b"), headers=headers)
            assert resp.status_code == 200

        for i in range(20):
            tg.start_soon(ask, busy, f"busy-{i:02d}")
        assert app.services is not None
        slots = app.services.backends.slots
        # Every busy request has reached the queue or the backend; on a slow machine the first
        # may be done before the last arrives, but several must still be waiting.
        with anyio.fail_after(30):
            while slots.queued() + len(sim.stats.log) < 20:  # noqa: ASYNC110 - read from here
                await anyio.sleep(0.01)
        assert slots.queued() >= 2
        started_before = len(sim.stats.log)
        tg.start_soon(ask, other, "other")
    later = logged(sim)[started_before:]
    # At most one more of the busy tenant's requests started before the other tenant's one.
    assert later.index("other") <= 1
    assert len(logged(sim)) == 21


async def test_a_client_leaving_mid_stream_cancels_the_backend_and_is_charged_what_it_got(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    sim = Simulator(SimConfig(chunks=100, token_delay_ms=20))
    add_backend(database_url, "gpu", serve_app(sim))
    key, key_id = sql_key(database_url, "acme", "app")
    url = serve_app(Gateway(load_settings(env)))
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream(
            "POST",
            "/api/chat",
            json=chat("llama3.2:1b", stream=True),
            headers={**bearer(key), "X-Request-ID": "leaver"},
        ) as resp,
    ):
        lines = resp.aiter_lines()
        for _ in range(3):
            await anext(lines)
        left_at_s = time.monotonic()
    with anyio.fail_after(5):
        while not sim.stats.cancels:  # noqa: ASYNC110 - the simulator's thread, polled
            await anyio.sleep(0.005)
    cancel = sim.stats.cancels[0]
    assert cancel.request_id == "leaver"
    stopped_after_s = cancel.at_s - left_at_s
    print(f"the backend stopped {stopped_after_s * 1000:.1f} ms after the client left")
    assert stopped_after_s < 0.1
    rows = await wait_for_rows(database_url, 1)
    assert rows["leaver"].completion_tokens == cancel.tokens_sent
    with anyio.fail_after(5):
        while True:
            charged = run_sql(
                database_url,
                "SELECT completion_tokens FROM gateway.usage_ledger "
                "WHERE key_id = %s AND period = 'total'",
                key_id,
            )
            if charged:
                break
            await anyio.sleep(0.1)
    assert charged[0][0] == cancel.tokens_sent


async def test_backends_added_and_removed_with_the_cli_reach_a_running_gateway(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    database_url: str,
) -> None:
    extra = serve_app(Simulator(SimConfig(models=("extra:7b",))))
    key, _ = sql_key(database_url, "acme", "app")
    url = serve_app(Gateway(load_settings(env)))
    cli_env = {"DATABASE_URL": database_url}

    async def models(client: httpx.AsyncClient) -> set[str]:
        return {m["id"] for m in (await client.get("/v1/models")).json()["data"]}

    async def until(client: httpx.AsyncClient, check: Callable[[set[str]], bool]) -> float:
        since_s = time.monotonic()
        with anyio.fail_after(10):
            while not check(await models(client)):  # noqa: ASYNC110 - polling over HTTP
                await anyio.sleep(0.05)
        return time.monotonic() - since_s

    async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer(key)) as client:
        assert "llama3.2:1b" in await models(client)  # OLLAMA_URL, while the table is empty
        ok(cli_env, "backends", "add", "extra", extra)
        added_s = await until(client, lambda names: names == {"extra:7b"})
        ok(cli_env, "backends", "remove", "extra")
        removed_s = await until(client, lambda names: "llama3.2:1b" in names)
    print(f"added after {added_s:.2f} s, removed after {removed_s:.2f} s")
    assert added_s < 2
    assert removed_s < 2
