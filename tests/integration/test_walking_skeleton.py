"""One authenticated request end to end: a CLI-made key streams through a served gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import Any

import anyio
import httpx
import msgspec
import psycopg
import pytest

from gateway.app import Gateway
from gateway.config import load_settings
from tests.integration.cli_support import watch_cli

pytestmark = pytest.mark.anyio


CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hello"}]}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    watch_cli(args, env, None, result)
    return result


def create_key(env: dict[str, str], tenant: str = "acme", name: str = "app") -> str:
    if cli(env, "tenants", "list", "--json").stdout.find(f'"{tenant}"') < 0:
        assert cli(env, "tenants", "create", tenant, "--allow-all-models").returncode == 0
    created = cli(env, "keys", "create", "--tenant", tenant, "--name", name, "--json")
    assert created.returncode == 0, created.stderr
    key = msgspec.json.decode(created.stdout)["key"]
    assert isinstance(key, str)
    return key


def run_sql(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


@pytest.fixture
def key(env: dict[str, str]) -> str:
    return create_key(env)


@pytest.fixture
def gateway_url(env: dict[str, str], serve_app: Callable[[Any], str]) -> str:
    return serve_app(Gateway(load_settings(env)))


@pytest.fixture
async def client(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_cli_key_streams_chat_line_by_line(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    start_simulator: Callable[..., AbstractContextManager[str]],
    key: str,
) -> None:
    with start_simulator(chunks=5, token_delay_ms=150) as slow_sim:
        url = serve_app(Gateway(load_settings({**env, "OLLAMA_URL": slow_sim})))
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            started = time.monotonic()
            arrivals: list[float] = []
            lines: list[dict[str, Any]] = []
            async with client.stream("POST", "/api/chat", json=CHAT, headers=auth(key)) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"] == "application/x-ndjson"
                assert resp.headers["x-request-id"]
                async for line in resp.aiter_lines():
                    if line:
                        arrivals.append(time.monotonic() - started)
                        lines.append(msgspec.json.decode(line))
    assert len(lines) == 6
    assert [line["message"]["content"] for line in lines[:5]] == [f"tok{i} " for i in range(5)]
    assert lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == 5
    assert lines[-1]["prompt_eval_count"] > 0
    # Forwarded as produced, not buffered: the first line long before the last (4 x 150 ms).
    assert arrivals[-1] - arrivals[0] > 0.3


async def test_generate_streams_and_answers_whole(client: httpx.AsyncClient, key: str) -> None:
    body = {"model": "llama3.2:1b", "prompt": "hi"}
    async with client.stream("POST", "/api/generate", json=body, headers=auth(key)) as resp:
        lines = [msgspec.json.decode(line) async for line in resp.aiter_lines() if line]
    assert resp.status_code == 200
    assert "".join(line.get("response", "") for line in lines) == "".join(
        f"tok{i} " for i in range(8)
    )
    assert lines[-1]["done"] is True
    assert lines[-1]["eval_count"] == 8

    whole = await client.post("/api/generate", json={**body, "stream": False}, headers=auth(key))
    assert whole.status_code == 200
    assert whole.headers["content-type"].startswith("application/json")
    assert whole.json()["eval_count"] == 8


async def test_num_predict_is_capped_on_the_way_to_the_backend(
    env: dict[str, str], serve_app: Callable[[Any], str], key: str
) -> None:
    url = serve_app(Gateway(load_settings({**env, "MAX_NUM_PREDICT": "3"})))
    async with httpx.AsyncClient(base_url=url) as client:
        asked = {**CHAT, "stream": False, "options": {"num_predict": 1000}}
        resp = await client.post("/api/chat", json=asked, headers=auth(key))
    assert resp.json()["eval_count"] == 3
    assert resp.json()["done_reason"] == "length"


async def test_every_kind_of_bad_key_gets_the_same_401(
    env: dict[str, str], client: httpx.AsyncClient, key: str
) -> None:
    revoked = create_key(env, name="revoked")
    assert cli(env, "keys", "revoke", revoked[:15]).returncode == 0
    expired = create_key(env, name="expired")
    run_sql(
        env["DATABASE_URL"],
        "UPDATE gateway.api_keys SET expires_at = now() - interval '1 s' WHERE id = %s",
        expired[3:15],
    )
    wrong_secret = key[:15] + ("A" if key[15] != "A" else "B") + key[16:]
    unknown_id = "gw_" + "Z" * 12 + key[15:]
    variants: list[dict[str, str] | list[tuple[str, str]]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic " + key},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer " + key.replace("gw_", "nz_")},
        auth(wrong_secret),
        auth(unknown_id),
        auth(revoked),
        auth(expired),
        [("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {key}")],
    ]
    bodies = set()
    for headers in variants:
        resp = await client.post("/api/chat", json=CHAT, headers=headers)
        assert resp.status_code == 401, headers
        assert resp.headers["x-request-id"]
        bodies.add(resp.content)
    assert bodies == {b'{"error":"invalid or missing API key"}'}
    ok = await client.post("/api/chat", json={**CHAT, "stream": False}, headers=auth(key))
    assert ok.status_code == 200


async def test_a_revoked_key_is_refused_even_after_it_was_cached(
    env: dict[str, str], client: httpx.AsyncClient, key: str
) -> None:
    body = {**CHAT, "stream": False}
    assert (await client.post("/api/chat", json=body, headers=auth(key))).status_code == 200
    assert cli(env, "keys", "revoke", key[:15]).returncode == 0
    deadline = time.monotonic() + 1.0
    status = 200
    while time.monotonic() < deadline and status == 200:
        status = (await client.post("/api/chat", json=body, headers=auth(key))).status_code
    assert status == 401


async def test_the_request_id_is_honoured_when_well_formed(
    client: httpx.AsyncClient, key: str
) -> None:
    mine = await client.post(
        "/api/chat", json=CHAT, headers={**auth(key), "X-Request-ID": "trace-42"}
    )
    assert mine.headers["x-request-id"] == "trace-42"
    bad = await client.post("/api/chat", headers={"X-Request-ID": "bad id\twith spaces"})
    assert bad.headers["x-request-id"] != "bad id\twith spaces"
    assert len(bad.headers["x-request-id"]) == 32


async def test_malformed_requests_get_clear_errors(
    env: dict[str, str], serve_app: Callable[[Any], str], key: str
) -> None:
    url = serve_app(Gateway(load_settings({**env, "MAX_REQUEST_BODY_BYTES": "1024"})))
    async with httpx.AsyncClient(base_url=url) as client:
        too_big = await client.post(
            "/api/chat", content=b'{"model":"' + b"x" * 2000 + b'"}', headers=auth(key)
        )
        assert too_big.status_code == 413
        assert too_big.json() == {"error": "the request body is larger than the gateway accepts"}
        bad_json = await client.post("/api/chat", content=b"{nope", headers=auth(key))
        assert bad_json.status_code == 400
        assert bad_json.json() == {"error": "the request body is not valid JSON"}
        wrong_method = await client.get("/api/chat", headers=auth(key))
        assert wrong_method.status_code == 405
        assert wrong_method.headers["allow"] == "POST"
        missing_model = await client.post("/api/chat", json={"messages": []}, headers=auth(key))
        assert missing_model.status_code == 400


async def test_an_unknown_model_is_a_clean_404(client: httpx.AsyncClient, key: str) -> None:
    resp = await client.post("/api/chat", json={**CHAT, "model": "nope:1b"}, headers=auth(key))
    assert resp.status_code == 404
    assert resp.json() == {"error": "the model does not exist or is not available to this key"}


async def test_upstream_error_bodies_are_never_reflected(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    start_simulator: Callable[..., AbstractContextManager[str]],
    key: str,
) -> None:
    with start_simulator(fail_status=500) as failing:
        url = serve_app(Gateway(load_settings({**env, "OLLAMA_URL": failing})))
        async with httpx.AsyncClient(base_url=url) as client:
            resp = await client.post("/api/chat", json=CHAT, headers=auth(key))
    assert resp.status_code == 502
    assert b"SECRET" not in resp.content
    assert resp.json() == {"error": "the model backend failed to answer"}


async def test_a_backend_dying_mid_stream_ends_with_an_error_frame(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    start_simulator: Callable[..., AbstractContextManager[str]],
    key: str,
) -> None:
    with start_simulator(chunks=6, die_after_chunks=2) as dying:
        url = serve_app(Gateway(load_settings({**env, "OLLAMA_URL": dying})))
        async with httpx.AsyncClient(base_url=url) as client:
            resp = await client.post("/api/chat", json=CHAT, headers=auth(key))
    lines = [msgspec.json.decode(line) for line in resp.content.splitlines() if line]
    assert resp.status_code == 200
    assert [line["message"]["content"] for line in lines[:2]] == ["tok0 ", "tok1 "]
    assert lines[-1] == {"error": "the model backend failed to answer"}
    assert not any(line.get("done") for line in lines)


async def test_a_backend_dying_mid_whole_answer_is_a_clean_502_not_half_a_body(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    start_simulator: Callable[..., AbstractContextManager[str]],
    key: str,
) -> None:
    whole = {**CHAT, "stream": False}
    with start_simulator(chunks=6, die_after_chunks=2) as dying:
        url = serve_app(Gateway(load_settings({**env, "OLLAMA_URL": dying})))
        async with httpx.AsyncClient(base_url=url) as client:
            ollama = await client.post("/api/chat", json=whole, headers=auth(key))
            openai = await client.post("/v1/chat/completions", json=whole, headers=auth(key))
    assert ollama.status_code == openai.status_code == 502
    assert ollama.json() == {"error": "the model backend failed to answer"}
    assert openai.json()["error"]["message"] == "the model backend failed to answer"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {
            "postgres": True,
            "redis": True,
            "backend": True,
            "audit": True,
            "backends": {
                "default": {
                    "reachable": True,
                    "breaker": {"state": "closed", "failures": 0, "retry_in_s": None},
                }
            },
        },
    }


async def test_a_client_leaving_mid_stream_stops_the_backend(
    env: dict[str, str], serve_app: Callable[[Any], str], key: str
) -> None:
    from gateway.upstream.sim import SimConfig, Simulator

    sim = Simulator(SimConfig(chunks=200, token_delay_ms=20))
    sim_url = serve_app(sim)
    url = serve_app(Gateway(load_settings({**env, "OLLAMA_URL": sim_url})))
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream("POST", "/api/chat", json=CHAT, headers=auth(key)) as resp,
    ):
        lines = resp.aiter_lines()
        assert (await anext(lines)).startswith('{"model"')
        await anext(lines)
    deadline = time.monotonic() + 5
    # The simulator counts in its own thread; poll it, bounded.
    while sim.stats.streams_cancelled == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
        await anyio.sleep(0.05)
    assert sim.stats.streams_cancelled == 1
    assert sim.stats.streams_finished == 0
