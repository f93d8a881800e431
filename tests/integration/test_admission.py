"""Rate limits on real Redis and Postgres: exact under bursts, across replicas, with leases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypedDict, cast

import anyio
import httpx
import pytest
import redis

from gateway.chain.budget import periods_at
from gateway.chain.limits import quota_keys
from gateway.devservices import free_port
from tests.integration.quota_support import (
    CHAT,
    FAST_ARGON2,
    bearer,
    make_key,
    running_gateway,
)
from tests.secret_watch import WATCH

pytestmark = pytest.mark.anyio


class _Roomy(TypedDict):
    tenant_rpm: int
    key_concurrent: int
    tenant_concurrent: int


ROOMY: _Roomy = {"tenant_rpm": 100_000, "key_concurrent": 1000, "tenant_concurrent": 1000}


async def burst(
    client: httpx.AsyncClient | list[httpx.AsyncClient], key: str, count: int, **body: Any
) -> list[httpx.Response]:
    clients = client if isinstance(client, list) else [client]
    responses: list[httpx.Response] = []

    async def one(index: int) -> None:
        target = clients[index % len(clients)]
        responses.append(await target.post("/api/chat", json={**CHAT, **body}, headers=bearer(key)))

    async with anyio.create_task_group() as tg:
        for index in range(count):
            tg.start_soon(one, index)
    return responses


def by_status(responses: list[httpx.Response]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for response in responses:
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
    return counts


def age_request_windows(
    redis_url: str, prefix: str, tenant_id: str, key_id: str, by_ms: int = 61_000
) -> None:
    """Move every recorded request into the past (by default a minute: as if it had gone by)."""
    periods = periods_at(datetime.now(UTC))
    keys = quota_keys(prefix, tenant_id, key_id, periods.day_tag, periods.month_tag)
    client = redis.Redis.from_url(redis_url)
    try:
        for window in (keys.rpm_key, keys.rpm_tenant):
            scored = cast(
                "list[tuple[bytes, float]]", client.zrange(window, 0, -1, withscores=True)
            )
            aged = {member: score - by_ms for member, score in scored}
            if aged:
                client.zadd(window, aged)
    finally:
        client.close()


async def test_a_burst_admits_exactly_the_rpm_and_the_window_slides(
    env: dict[str, str], redis_url: str, redis_prefix: str
) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services, key_rpm=60, **ROOMY)
        responses = await burst(client, key, 200)
        assert by_status(responses) == {200: 60, 429: 140}
        admitted = [r for r in responses if r.status_code == 200]
        assert {r.headers["x-ratelimit-limit-requests"] for r in admitted} == {"60"}
        assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted) == list(
            range(60)
        )
        for refused in (r for r in responses if r.status_code == 429):
            assert refused.json() == {
                "error": "rate limit reached: requests per minute for this key"
            }
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"
            assert refused.headers["x-request-id"]
        principal = await services.authenticator.authenticate([f"Bearer {key}".encode()])
        age_request_windows(redis_url, redis_prefix, principal.tenant_id, principal.key_id)
        again = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert again.status_code == 200
        assert again.headers["x-ratelimit-remaining-requests"] == "59"
        # The window had emptied: the request just admitted frees its slot in a minute.
        assert again.headers["x-ratelimit-reset-requests"] == "1m0s"


async def test_the_request_reset_says_when_the_next_slot_frees(
    env: dict[str, str], redis_url: str, redis_prefix: str
) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services, key_rpm=3, **ROOMY)
        first = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        # Its own slot, the window's only one, frees a minute from now (not "0ms": now).
        assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
        principal = await services.authenticator.authenticate([f"Bearer {key}".encode()])
        # The first request, 45 s old: the next slot frees when it ages out, 15 s from now.
        age_request_windows(
            redis_url, redis_prefix, principal.tenant_id, principal.key_id, by_ms=45_000
        )
        second = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert second.headers["x-ratelimit-remaining-requests"] == "1"
        assert second.headers["x-ratelimit-reset-requests"] in ("15s", "14s")


def _token_windows(
    redis_url: str, prefix: str, tenant_id: str, key_id: str
) -> tuple[redis.Redis, list[tuple[str, str]]]:
    """A client, and each token window's per-second buckets with its running totals."""
    periods = periods_at(datetime.now(UTC))
    keys = quota_keys(prefix, tenant_id, key_id, periods.day_tag, periods.month_tag)
    windows = list(zip((keys.tpm_key, keys.tpm_tenant), keys.tpm_totals, strict=True))
    return redis.Redis.from_url(redis_url), windows


def age_token_windows(redis_url: str, prefix: str, tenant_id: str, key_id: str) -> None:
    """Move every settled token a minute into the past: each per-second bucket, and the
    window's note of its oldest second."""
    client, windows = _token_windows(redis_url, prefix, tenant_id, key_id)
    try:
        for buckets, totals in windows:
            fields = cast("dict[bytes, bytes]", client.hgetall(buckets))
            client.delete(buckets)
            if fields:
                aged = {str(int(second) - 61): tokens for second, tokens in fields.items()}
                client.hset(buckets, mapping=aged)  # type: ignore[arg-type] # a dict is a Mapping
            oldest = client.hget(totals, "oldest")
            if oldest is not None:
                client.hset(totals, "oldest", int(cast("bytes", oldest)) - 61)
    finally:
        client.close()


def tokens_used(response: httpx.Response) -> int:
    answer = response.json()
    return int(answer["prompt_eval_count"]) + int(answer["eval_count"])


async def test_the_token_window_counts_settled_tokens_and_slides(
    env: dict[str, str], redis_url: str, redis_prefix: str
) -> None:
    async with running_gateway(env) as (services, client):
        key = await make_key(services, key_rpm=1000, key_tpm=100, tenant_tpm=100_000, **ROOMY)
        used, answers = 0, []
        while used < 100:
            answer = await client.post("/api/chat", json=CHAT, headers=bearer(key))
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-ratelimit-limit-tokens"] == "100"
            # What the window held when this request was admitted.
            assert answer.headers["x-ratelimit-remaining-tokens"] == str(max(0, 100 - used))
            used += tokens_used(answer)
            answers.append(answer)
        assert len(answers) > 1  # the window was filled by several answers, not one
        refused = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert refused.status_code == 429
        assert refused.json() == {"error": "rate limit reached: tokens per minute for this key"}
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        principal = await services.authenticator.authenticate([f"Bearer {key}".encode()])
        age_token_windows(redis_url, redis_prefix, principal.tenant_id, principal.key_id)
        again = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert again.status_code == 200
        assert again.headers["x-ratelimit-remaining-tokens"] == "100"


async def test_a_token_window_without_its_running_total_is_summed_afresh(
    env: dict[str, str], redis_url: str, redis_prefix: str
) -> None:
    """A window written by an earlier version (its per-second buckets, no totals) still counts
    in full."""
    async with running_gateway(env) as (services, client):
        key = await make_key(services, key_rpm=1000, key_tpm=10_000, tenant_tpm=100_000, **ROOMY)
        used = 0
        for _ in range(3):
            answer = await client.post("/api/chat", json=CHAT, headers=bearer(key))
            used += tokens_used(answer)
        principal = await services.authenticator.authenticate([f"Bearer {key}".encode()])
        redis_client, windows = _token_windows(
            redis_url, redis_prefix, principal.tenant_id, principal.key_id
        )
        try:
            for _, totals in windows:
                redis_client.delete(totals)
        finally:
            redis_client.close()
        answer = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert answer.headers["x-ratelimit-remaining-tokens"] == str(10_000 - used)
        used += tokens_used(answer)
        answer = await client.post("/api/chat", json=CHAT, headers=bearer(key))
        assert answer.headers["x-ratelimit-remaining-tokens"] == str(10_000 - used)


async def test_the_tenant_rpm_binds_all_its_keys_together(env: dict[str, str]) -> None:
    async with running_gateway(env) as (services, client):
        first = await make_key(
            services,
            name="a",
            key_rpm=1000,
            tenant_rpm=30,
            key_concurrent=1000,
            tenant_concurrent=1000,
        )
        second = await make_key(services, name="b", key_rpm=1000)
        responses = await burst(client, first, 20) + await burst(client, second, 20)
        assert by_status(responses) == {200: 30, 429: 10}
        refused = [r.json()["error"] for r in responses if r.status_code == 429]
        assert set(refused) == {"rate limit reached: requests per minute for this tenant"}


@contextmanager
def gateway_processes(env: dict[str, str], count: int) -> Iterator[list[str]]:
    """`gateway serve` in separate processes sharing Postgres and Redis: replicas, for real."""
    ports = [free_port() for _ in range(count)]
    full_env = {**os.environ, **FAST_ARGON2, **env, "GATEWAY_LOG_LEVEL": "WARNING"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=full_env,
            stdout=WATCH.output_file("gateway serve"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "gateway process did not start"
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


async def test_three_gateway_processes_share_one_limit(env: dict[str, str]) -> None:
    async with running_gateway(env) as (services, _):
        key = await make_key(services, key_rpm=60, **ROOMY)
    with gateway_processes(env, 3) as urls:
        clients = [httpx.AsyncClient(base_url=url, timeout=60) for url in urls]
        try:
            responses = await burst(clients, key, 200)
        finally:
            for client in clients:
                await client.aclose()
    assert by_status(responses) == {200: 60, 429: 140}


async def test_in_flight_requests_are_capped_and_released(
    env: dict[str, str], start_simulator: Callable[..., AbstractContextManager[str]]
) -> None:
    with start_simulator(chunks=10, token_delay_ms=100) as slow:
        async with running_gateway({**env, "OLLAMA_URL": slow}) as (services, client):
            key = await make_key(services, key_concurrent=4, key_rpm=1000, tenant_rpm=1000)
            responses = await burst(client, key, 20)
            assert by_status(responses) == {200: 4, 429: 16}
            refused = {r.json()["error"] for r in responses if r.status_code == 429}
            assert refused == {"too many requests in flight for this key"}
            assert (
                await client.post("/api/chat", json=CHAT, headers=bearer(key))
            ).status_code == 200


async def test_leases_of_a_killed_replica_expire_by_themselves(
    env: dict[str, str], start_simulator: Callable[..., AbstractContextManager[str]]
) -> None:
    lease_ttl_s = 3
    with start_simulator(chunks=400, token_delay_ms=50) as endless:
        replica_env = {**env, "OLLAMA_URL": endless, "LEASE_TTL_S": str(lease_ttl_s)}
        async with running_gateway(replica_env) as (services, client):
            key = await make_key(services, key_concurrent=2, key_rpm=1000, tenant_rpm=1000)
            with gateway_processes(replica_env, 1) as (doomed,):
                async with httpx.AsyncClient(base_url=doomed, timeout=60) as remote:
                    for _ in range(2):
                        request = remote.build_request(
                            "POST", "/api/chat", json={**CHAT, "stream": True}, headers=bearer(key)
                        )
                        streaming = await remote.send(request, stream=True)
                        assert streaming.status_code == 200
                    # Two streams hold both leases; the replica dies without settling them.
                    for pid in _children_and_self(doomed):
                        os.kill(pid, signal.SIGKILL)
                    refused = await client.post("/api/chat", json=CHAT, headers=bearer(key))
                    assert refused.status_code == 429
                    killed_at = time.monotonic()
                    while (
                        await client.post("/api/chat", json=CHAT, headers=bearer(key))
                    ).status_code == 429:
                        assert time.monotonic() - killed_at < lease_ttl_s + 5
                        await anyio.sleep(0.2)


def _children_and_self(url: str) -> list[int]:
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True
    )
    return sorted({int(part.split(",")[0]) for part in out.stdout.split("pid=")[1:]})
