"""The audit trail under stress: Postgres away, a full buffer, and SIGTERM with live streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.devservices import PostgresServer, free_port
from tests.integration.quota_support import bearer
from tests.integration.test_audit import CHAT, audit_rows, rid, sql_key, wait_for_rows
from tests.secret_watch import WATCH

pytestmark = pytest.mark.anyio


def outage_env(env: dict[str, str], own_postgres: PostgresServer, **extra: str) -> dict[str, str]:
    return {**env, "DATABASE_URL": own_postgres.url, "DATABASE_TIMEOUT_S": "1", **extra}


async def test_requests_are_served_while_postgres_is_away_and_every_row_lands_after(
    env: dict[str, str], serve_app: Callable[[Any], str], own_postgres: PostgresServer
) -> None:
    key, _ = sql_key(own_postgres.url, "acme", "app")
    url = serve_app(Gateway(load_settings(outage_env(env, own_postgres))))
    sent = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def chat() -> int:
            nonlocal sent
            sent += 1
            resp = await client.post(
                "/v1/chat/completions", json=CHAT, headers={**bearer(key), **rid(sent)}
            )
            return resp.status_code

        assert await chat() == 200  # the key is cached from here on
        own_postgres.stop()
        away_until = time.monotonic() + 10
        while time.monotonic() < away_until:
            assert await chat() == 200
            await anyio.sleep(0.2)
        own_postgres.start()
        assert await chat() == 200
    rows = await wait_for_rows(own_postgres.url, sent)
    assert sorted(rows) == [f"req-{i:04d}" for i in range(1, sent + 1)]
    assert {row.status for row in rows.values()} == {200}
    assert sent > 40


async def test_a_full_buffer_refuses_with_503_until_it_drains(
    env: dict[str, str], serve_app: Callable[[Any], str], own_postgres: PostgresServer
) -> None:
    key, _ = sql_key(own_postgres.url, "acme", "app")
    url = serve_app(Gateway(load_settings(outage_env(env, own_postgres, AUDIT_BUFFER_SIZE="4"))))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def chat(i: int) -> httpx.Response:
            return await client.post(
                "/v1/chat/completions", json=CHAT, headers={**bearer(key), **rid(i)}
            )

        assert (await chat(1)).status_code == 200
        await wait_for_rows(own_postgres.url, 1)
        own_postgres.stop()
        assert [(await chat(i)).status_code for i in range(2, 6)] == [200] * 4
        # A row is recorded after its answer's last byte and the settle that follows it, so
        # the fourth can land a moment after the client has its answer.
        deadline = time.monotonic() + 10
        while (await client.get("/readyz")).json()["checks"]["audit"] is not False:
            assert time.monotonic() < deadline, "four rows never filled a buffer of four"
            await anyio.sleep(0.05)
        refused = await chat(6)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "unavailable"
        own_postgres.start()
        deadline = time.monotonic() + 20
        i = 7
        while (await chat(i)).status_code != 200:
            assert time.monotonic() < deadline, "the gateway never left deny mode"
            await anyio.sleep(0.2)
            i += 1
    served = [f"req-{n:04d}" for n in (*range(1, 6), i)]
    rows = await wait_for_rows(own_postgres.url, len(served) + 1, including=served)
    # Every served request has its row; refusals have theirs while there is room to spare.
    assert set(served) <= set(rows)
    assert {rows[r].status for r in served} == {200}
    assert rows["req-0006"].status == 503


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the gateway exited during start-up"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not start")


async def test_sigterm_lets_live_streams_finish_and_flushes_their_rows(
    env: dict[str, str], start_simulator: Callable[..., Any], database_url: str
) -> None:
    key, _ = sql_key(database_url, "acme", "app")
    port = free_port()
    with start_simulator(chunks=20, token_delay_ms=100) as sim_url:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, before any request is made
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env, "OLLAMA_URL": sim_url, "SHUTDOWN_GRACE_S": "20"},
            stdout=WATCH.output_file("gateway serve"),
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process)
            started = anyio.Event()
            first_lines = 0
            finished: list[dict[str, Any]] = []

            async def stream(client: httpx.AsyncClient, i: int) -> None:
                nonlocal first_lines
                body = {**CHAT, "stream": True}
                headers = {**bearer(key), **rid(i)}
                async with client.stream("POST", "/api/chat", json=body, headers=headers) as resp:
                    lines = resp.aiter_lines()
                    frames = [msgspec.json.decode(await anext(lines))]
                    first_lines += 1
                    if first_lines == 20:
                        started.set()
                    frames += [msgspec.json.decode(line) async for line in lines if line]
                finished.append(frames[-1])

            async with (
                httpx.AsyncClient(base_url=url, timeout=60) as client,
                anyio.create_task_group() as tg,
            ):
                for i in range(20):
                    tg.start_soon(stream, client, i)
                with anyio.fail_after(30):
                    await started.wait()
                process.send_signal(signal.SIGTERM)
            assert len(finished) == 20
            assert all(frame["done"] is True for frame in finished)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    rows = audit_rows(database_url)
    assert sorted(rows) == [f"req-{i:04d}" for i in range(20)]
    assert {(row.status, row.error_code) for row in rows.values()} == {(200, None)}
