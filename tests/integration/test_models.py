"""Model access through the gateway: discovery, default deny, one answer for hidden and absent."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import redis

from gateway import __version__
from gateway.store import pg_tenants
from tests.integration.quota_support import CHAT, bearer, make_key, run_sql, running_gateway

pytestmark = pytest.mark.anyio

MODELS = ("llama3.2:1b", "qwen2.5:0.5b", "phi3:mini")


@pytest.fixture
def sim(start_simulator: Callable[..., AbstractContextManager[str]]) -> Any:
    with start_simulator(models=MODELS) as url:
        yield url


@pytest.fixture
def env(env: dict[str, str], sim: str) -> dict[str, str]:
    return {**env, "OLLAMA_URL": sim}


def restrict(url: str, tenant: str, models: list[str]) -> None:
    run_sql(
        url,
        "UPDATE gateway.tenants SET allow_all_models = false, allowed_models = %s WHERE name = %s",
        models,
        tenant,
    )


async def chat(client: httpx.AsyncClient, key: str, model: str, path: str = "/api/chat") -> Any:
    return await client.post(path, json={**CHAT, "model": model}, headers=bearer(key))


async def test_allow_all_sees_every_discovered_model(env: dict[str, str]) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services)
        tags = (await client.get("/api/tags", headers=bearer(key))).json()
        models = (await client.get("/v1/models", headers=bearer(key))).json()
    assert sorted(m["name"] for m in tags["models"]) == sorted(MODELS)
    assert {"digest", "details", "size"} <= set(tags["models"][0])
    assert models["object"] == "list"
    assert sorted(m["id"] for m in models["data"]) == sorted(MODELS)
    assert all(m["object"] == "model" and m["created"] > 0 for m in models["data"])


async def test_a_restricted_tenant_sees_and_uses_only_allowed_and_discovered(
    env: dict[str, str], database_url: str
) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services)
        # "llama3.2" has no tag: it means llama3.2:latest, which is not installed.
        restrict(database_url, "acme", ["qwen2.5:0.5b", "llama3.2", "gone:7b"])
        await services.cache.evict_key(key[3:15])
        services.authenticator.changed(f"k:{key[3:15]}")
        tags = (await client.get("/api/tags", headers=bearer(key))).json()
        assert [m["name"] for m in tags["models"]] == ["qwen2.5:0.5b"]
        assert (await chat(client, key, "qwen2.5:0.5b")).status_code == 200
        hidden = await chat(client, key, "phi3:mini")
        absent = await chat(client, key, "nothing:1b")
        not_installed = await chat(client, key, "gone:7b")
        hidden_v1 = await chat(client, key, "phi3:mini", "/v1/chat/completions")
        absent_v1 = await chat(client, key, "nothing:1b", "/v1/chat/completions")
    assert hidden.status_code == absent.status_code == not_installed.status_code == 404
    assert hidden.content == absent.content == not_installed.content
    assert hidden.headers.keys() == absent.headers.keys()
    assert hidden_v1.status_code == absent_v1.status_code == 404
    assert hidden_v1.content == absent_v1.content
    assert b"model_not_found" in hidden_v1.content


async def test_a_new_tenant_may_use_no_model(env: dict[str, str], database_url: str) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services, tenant="fresh")
        restrict(database_url, "fresh", [])  # what `tenants create` gives: default deny
        await services.cache.evict_key(key[3:15])
        services.authenticator.changed(
            f"t:{(await pg_tenants.tenant_id(services.database, 'fresh'))}"
        )
        assert (await client.get("/api/tags", headers=bearer(key))).json() == {"models": []}
        assert (await chat(client, key, "llama3.2:1b")).status_code == 404


async def test_discovery_down_denies_every_model_once_its_answer_is_stale(
    env: dict[str, str], start_simulator: Callable[..., AbstractContextManager[str]]
) -> None:
    with start_simulator() as short_lived:
        fast = {
            **env,
            "OLLAMA_URL": short_lived,
            "MODEL_DISCOVERY_REFRESH_S": "0.2",
            "MODEL_DISCOVERY_CACHE_TTL_S": "0.5",
        }
        async with running_gateway(fast) as (services, client):
            key = await make_key(services)
            assert (await chat(client, key, "llama3.2:1b")).status_code == 200
    # The backend is gone: the next gateway finds nothing, so nothing is allowed.
    async with running_gateway({**fast, "OLLAMA_URL": "http://127.0.0.1:1"}) as (
        services,
        client,
    ):
        key = await make_key(services, tenant="later")
        await anyio.sleep(0.6)  # past the TTL of what the first gateway shared through Redis
        assert services.discovery.models() == frozenset()
        assert (await client.get("/api/tags", headers=bearer(key))).json() == {"models": []}
        assert (await chat(client, key, "llama3.2:1b")).status_code == 404


async def test_a_replica_that_cannot_reach_the_backend_uses_the_shared_answer(
    env: dict[str, str],
) -> None:
    async with running_gateway(env) as (services, _):
        await services.discovery.refresh()
        async with running_gateway({**env, "OLLAMA_URL": "http://127.0.0.1:1"}) as (blind, _):
            assert blind.discovery.models() == frozenset(MODELS)


async def test_show_hides_the_system_prompt_and_template(env: dict[str, str]) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services)
        shown = await client.post("/api/show", json={"model": "phi3:mini"}, headers=bearer(key))
        version = await client.get("/api/version", headers=bearer(key))
    assert shown.status_code == 200
    body = shown.json()
    assert not {"system", "template", "modelfile"} & set(body)
    assert b"SIM-SYSTEM-PROMPT" not in shown.content
    assert "details" in body
    assert version.json() == {"version": __version__}


async def test_embeddings_are_answered_and_counted(env: dict[str, str], database_url: str) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services)
        native = await client.post(
            "/api/embed", json={"model": "phi3:mini", "input": ["a", "b"]}, headers=bearer(key)
        )
        legacy = await client.post(
            "/api/embeddings", json={"model": "phi3:mini", "prompt": "a"}, headers=bearer(key)
        )
        openai = await client.post(
            "/v1/embeddings", json={"model": "phi3:mini", "input": "abc"}, headers=bearer(key)
        )
        await services.ledger.flush()
    assert len(native.json()["embeddings"]) == 2
    assert legacy.json()["embedding"]
    assert openai.json()["data"][0]["object"] == "embedding"
    rows = run_sql(
        database_url,
        "SELECT completion_tokens, requests, prompt_tokens FROM gateway.usage_ledger "
        "WHERE key_id = %s AND period = 'total'",
        key[3:15],
    )
    completion, requests, prompt = rows[0]
    assert (completion, requests) == (0, 3)
    expected = native.json()["prompt_eval_count"] + openai.json()["usage"]["prompt_tokens"]
    assert prompt > expected  # plus the legacy call, charged its prompt bound: it reports none
    assert msgspec.json.decode(native.content)["model"] == "phi3:mini"


async def test_a_key_reads_its_own_quota_and_nobody_elses(
    env: dict[str, str], database_url: str
) -> None:
    # A small completion cap, so one request's reservation fits the small budgets.
    async with running_gateway({**env, "MAX_NUM_PREDICT": "20"}) as (services, client):
        key = await make_key(services, key_rpm=50, tenant_total=1000, key_daily=300)
        other = await make_key(services, tenant="other", name="x", key_rpm=7)
        restrict(database_url, "other", ["phi3:mini"])
        spent = (await chat(client, key, "llama3.2:1b")).json()
        used = spent["prompt_eval_count"] + spent["eval_count"]
        mine = (await client.get("/v1/me", headers=bearer(key))).json()
        await services.cache.evict_key(other[3:15])
        theirs = (await client.get("/v1/me", headers=bearer(other))).json()
    assert mine["tenant"] == "acme"
    assert mine["key"] == key[:15]
    assert mine["limits"]["requests_per_minute"] == 50
    assert mine["budgets"] == [
        {"scope": "key", "period": "day", "budget": 300, "used": used, "remaining": 300 - used},
        {
            "scope": "tenant",
            "period": "total",
            "budget": 1000,
            "used": used,
            "remaining": 1000 - used,
        },
    ]
    assert mine["models"] == sorted(MODELS)
    assert theirs["tenant"] == "other"
    assert theirs["limits"]["requests_per_minute"] == 7
    assert theirs["budgets"] == []
    assert theirs["models"] == ["phi3:mini"]


async def test_an_unreadable_shared_answer_counts_as_none(
    env: dict[str, str], redis_url: str, redis_prefix: str
) -> None:
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.set(f"{redis_prefix}:discovered", b"{not json")
    finally:
        raw.close()
    async with running_gateway({**env, "OLLAMA_URL": "http://127.0.0.1:1"}) as (services, _):
        assert services.discovery.models() == frozenset()
