"""The audit trail: exactly one row per request, and the prompt log of keys that opted in."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest

from gateway.app import Gateway
from gateway.audit import AuditLog, AuditRow
from gateway.config import load_settings
from gateway.keys import generate_key
from gateway.services import hasher_for
from gateway.store.pg import COPY_ROWS_PER_TURN, Database
from gateway.upstream.sim import SimConfig, Simulator
from tests.integration.quota_support import FAST_ARGON2, bearer, run_sql

pytestmark = pytest.mark.anyio

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hello"}]}
AUDIT_COLUMNS = (
    "request_id, status, error_code, tenant_id::text, key_id, prompt_tokens, completion_tokens,"
    " streamed, model, route"
)


class Row(msgspec.Struct, array_like=True):
    request_id: str
    status: int
    error_code: str | None
    tenant_id: str | None
    key_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    streamed: bool | None
    model: str | None
    route: str


def audit_rows(database_url: str) -> dict[str, Row]:
    rows = run_sql(database_url, f"SELECT {AUDIT_COLUMNS} FROM gateway.audit_log")
    return {row[0]: Row(*row) for row in rows}


def sql_key(database_url: str, tenant: str, name: str, **columns: Any) -> tuple[str, str]:
    """A key straight into Postgres (the CLI's own tests cover the CLI); returns (key, key id)."""
    settings = load_settings(
        {"DATABASE_URL": database_url, "REDIS_URL": "redis://x", **FAST_ARGON2}
    )
    found = run_sql(database_url, "SELECT id::text FROM gateway.tenants WHERE name = %s", tenant)
    if found:
        tenant_id = found[0][0]
    else:
        tenant_id = run_sql(
            database_url,
            "INSERT INTO gateway.tenants (name, allow_all_models, rpm, concurrent) "
            "VALUES (%s, true, 100000, 1000) RETURNING id::text",
            tenant,
        )[0][0]
    issued = generate_key(settings.key_prefix)
    run_sql(
        database_url,
        "INSERT INTO gateway.api_keys (id, tenant_id, name, secret_hash, rpm, concurrent) "
        "VALUES (%s, %s, %s, %s, 100000, 1000)",
        issued.key_id,
        tenant_id,
        name,
        hasher_for(settings).hash(issued.full_key),
    )
    for column, value in columns.items():
        run_sql(
            database_url,
            f"UPDATE gateway.api_keys SET {column} = %s WHERE id = %s",
            value,
            issued.key_id,
        )
    return issued.full_key, issued.key_id


async def wait_for_rows(
    database_url: str, count: int, timeout_s: float = 15, *, including: Collection[str] = ()
) -> dict[str, Row]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = audit_rows(database_url)
        landed = len(rows) >= count and all(r in rows for r in including)
        if landed or time.monotonic() > deadline:
            return rows
        await anyio.sleep(0.1)


def rid(i: int) -> dict[str, str]:
    return {"X-Request-ID": f"req-{i:04d}"}


async def test_every_request_of_a_mixed_run_has_exactly_one_row(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    start_simulator: Callable[..., Any],
    database_url: str,
) -> None:
    key, key_id = sql_key(database_url, "acme", "app")
    throttled, throttled_id = sql_key(database_url, "acme", "slow", rpm=5)
    expected: dict[str, tuple[int, str | None]] = {}  # request id → status, error code
    usage: dict[str, tuple[int, int]] = {}
    # 40 tokens 8 ms apart: a client that leaves after the first line (kind 9) is gone long
    # before the answer ends, even on a loaded machine. At 2 ms apart, a client delayed by 80 ms
    # could find the whole answer written before it left, and its row rightly says complete.
    with start_simulator(chunks=40, token_delay_ms=8) as sim_url:
        # A hundred bad keys from one address would trip the auth-failure throttle, which is
        # not what this run is about (tests/integration/test_auth_throttle.py is).
        no_throttle = {"AUTH_FAILURE_RATE_LIMIT_PER_IP_PER_MIN": "0"}
        url = serve_app(Gateway(load_settings({**env, "OLLAMA_URL": sim_url, **no_throttle})))
        limiter = anyio.Semaphore(24)

        async def one(client: httpx.AsyncClient, i: int) -> None:
            async with limiter:
                kind = i % 10
                headers = {**bearer(key), **rid(i)}
                if kind == 4:
                    body = {**CHAT, "stream": True}
                    async with client.stream(
                        "POST", "/api/chat", json=body, headers=headers
                    ) as resp:
                        frames = [
                            msgspec.json.decode(line) async for line in resp.aiter_lines() if line
                        ]
                    last = frames[-1]
                    usage[f"req-{i:04d}"] = (last["prompt_eval_count"], last["eval_count"])
                    expected[f"req-{i:04d}"] = (resp.status_code, None)
                    return
                if kind == 9:
                    body = {**CHAT, "stream": True}
                    async with client.stream(
                        "POST", "/api/chat", json=body, headers=headers
                    ) as resp:
                        await anext(resp.aiter_lines())
                    expected[f"req-{i:04d}"] = (200, "client_closed")
                    return
                if kind == 5:
                    resp = await client.get(
                        "/v1/models",
                        headers={
                            **bearer(key[:-1] + ("y" if key.endswith("x") else "x")),
                            **rid(i),
                        },
                    )
                elif kind == 6:
                    resp = await client.post("/api/pull", json={"model": "x"}, headers=headers)
                elif kind == 7:
                    resp = await client.post(
                        "/api/chat", json={**CHAT, "model": "nope"}, headers=headers
                    )
                elif kind == 8:
                    headers = {**bearer(throttled), **rid(i)}
                    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
                else:
                    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
                code = None if resp.status_code == 200 else resp.json()["error"]
                if isinstance(code, dict):
                    code = code["code"]
                elif code is not None:
                    code = {401: "invalid_api_key", 403: "forbidden", 404: "model_not_found"}[
                        resp.status_code
                    ]
                expected[f"req-{i:04d}"] = (resp.status_code, code)
                if resp.status_code == 200:
                    counted = resp.json()["usage"]
                    usage[f"req-{i:04d}"] = (counted["prompt_tokens"], counted["completion_tokens"])

        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            anyio.create_task_group() as tg,
        ):
            for i in range(1000):
                tg.start_soon(one, client, i)
        rows = await wait_for_rows(database_url, 1000)

    assert len(rows) == 1000
    statuses = {status for status, _ in expected.values()}
    assert statuses == {200, 401, 403, 404, 429}
    for request_id, (status, code) in expected.items():
        row = rows[request_id]
        assert (row.status, row.error_code) == (status, code), request_id
        if request_id in usage:
            assert (row.prompt_tokens, row.completion_tokens) == usage[request_id], request_id
    assert sum(1 for status, _ in expected.values() if status == 429) == 100 - 5
    cancelled = [rows[r] for r, (_, code) in expected.items() if code == "client_closed"]
    assert len(cancelled) == 100
    assert all(row.streamed and row.completion_tokens is not None for row in cancelled)
    # Whom each row names: the key for what it authenticated, nobody for a bad key.
    assert {rows[f"req-{i:04d}"].key_id for i in range(5, 1000, 10)} == {None}
    assert {rows[f"req-{i:04d}"].key_id for i in range(8, 1000, 10)} == {throttled_id}
    assert {rows[f"req-{i:04d}"].key_id for i in range(6, 1000, 10)} == {key_id}
    # What audit says was used is what the usage ledger charged, token for token (the ledger
    # is written on its own interval, so it may need a moment to catch up).
    audited = sum(
        (r.prompt_tokens or 0) + (r.completion_tokens or 0)
        for r in rows.values()
        if r.key_id == key_id
    )
    for _ in range(50):
        ledger = run_sql(
            database_url,
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM gateway.usage_ledger "
            "WHERE key_id = %s AND period = 'total'",
            key_id,
        )[0][0]
        if ledger == audited:
            break
        await anyio.sleep(0.1)
    assert ledger == audited > 0


async def test_opted_in_keys_have_their_prompts_and_answers_logged(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    logged, logged_id = sql_key(
        database_url, "acme", "logged", prompt_log=True, prompt_log_retention_days=7
    )
    quiet, _ = sql_key(database_url, "acme", "quiet")
    url = serve_app(Gateway(load_settings(env)))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        whole = await client.post(
            "/api/chat", json={**CHAT, "stream": False}, headers={**bearer(logged), **rid(1)}
        )
        streamed = []
        body = {**CHAT, "stream": True, "messages": [{"role": "user", "content": "a\u0000b"}]}
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers={**bearer(logged), **rid(2)}
        ) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    delta = msgspec.json.decode(line[6:])["choices"][0]["delta"]
                    streamed.append(delta.get("content") or "")
        await client.post(
            "/api/chat", json={**CHAT, "stream": False}, headers={**bearer(quiet), **rid(3)}
        )
    assert whole.status_code == 200
    await wait_for_rows(database_url, 3)
    rows = run_sql(
        database_url,
        "SELECT request_id, key_id, request, response, expires_at - ts FROM gateway.prompt_log "
        "ORDER BY request_id",
    )
    assert [(r[0], r[1]) for r in rows] == [("req-0001", logged_id), ("req-0002", logged_id)]
    first, second = rows
    assert first[2]["messages"] == CHAT["messages"]
    assert first[3] == whole.json()["message"]["content"] != ""
    assert second[2]["messages"][0]["content"] == "a\ufffdb"
    assert second[3] == "".join(streamed) != ""
    assert first[4].days == 7


async def test_a_whole_answer_that_broke_off_is_audited_as_a_502_with_no_answer_logged(
    env: dict[str, str], serve_app: Callable[[Any], str], database_url: str
) -> None:
    logged, _ = sql_key(database_url, "acme", "logged", prompt_log=True)
    dying = serve_app(Simulator(SimConfig(chunks=6, die_after_chunks=2)))
    url = serve_app(Gateway(load_settings({**env, "OLLAMA_URL": dying})))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        resp = await client.post(
            "/api/chat", json={**CHAT, "stream": False}, headers={**bearer(logged), **rid(1)}
        )
    assert resp.status_code == 502
    row = (await wait_for_rows(database_url, 1))["req-0001"]
    assert (row.status, row.error_code, row.streamed) == (502, "backend_error", False)
    # Half an answer was read from the backend, but none of it reached the client.
    assert run_sql(database_url, "SELECT response FROM gateway.prompt_log") == []


async def test_a_row_postgres_refuses_does_not_hold_back_the_others(database_url: str) -> None:
    now = datetime.now(UTC)

    def row(request_id: str, prompt_tokens: int) -> AuditRow:
        return AuditRow(now, request_id, None, None, None, "POST", "/api/chat", "m", "default",
                        200, None, prompt_tokens, 1, 1.0, 2.0, False)  # fmt: skip

    from gateway.audit import PromptRow

    bad_prompt = PromptRow(
        now, "p", "00000000-0000-0000-0000-000000000000", "k", "m", "{not json", None, now
    )
    async with Database.open(database_url, pool_size=2, timeout_s=5) as database:
        audit = AuditLog(database, capacity=10, flush_interval_s=0.1)
        audit.record(row("ok-1", 5), admitted=False)
        audit.record(row("too-big", 2**40), admitted=False)  # a backend's absurd count
        audit.record(row("p", 5), bad_prompt, admitted=False)
        audit.record(row("ok-2", 5), admitted=False)
        assert await audit.flush() == 4
    assert sorted(audit_rows(database_url)) == ["ok-1", "ok-2", "p"]
    assert audit.dropped == 1
    assert audit.depth == 0
    assert run_sql(database_url, "SELECT count(*) FROM gateway.prompt_log")[0][0] == 0


async def test_a_large_flush_lets_requests_run_while_it_formats_rows(database_url: str) -> None:
    now = datetime.now(UTC)
    row = AuditRow(now, "r", None, None, None, "POST", "/api/chat", "m", "default",
                   200, None, 5, 1, 1.0, 2.0, False)  # fmt: skip
    handed = 0

    class Counted(list[tuple[Any, ...]]):
        """Rows that count how many the writer has taken."""

        def __iter__(self) -> Iterator[tuple[Any, ...]]:
            nonlocal handed
            for taken in super().__iter__():
                handed += 1
                yield taken

    rows = Counted(
        msgspec.structs.astuple(msgspec.structs.replace(row, request_id=f"r-{i}"))
        for i in range(1000)
    )
    most_in_one_turn = 0

    async def watch() -> None:
        # What the writer formatted between two turns of the event loop.
        nonlocal most_in_one_turn
        seen = handed
        while True:
            await anyio.lowlevel.checkpoint()
            most_in_one_turn = max(most_in_one_turn, handed - seen)
            seen = handed

    async with (
        Database.open(database_url, pool_size=2, timeout_s=5) as database,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(watch)
        await database.write_audit(rows, [])
        tg.cancel_scope.cancel()
    assert handed == 1000
    assert 0 < most_in_one_turn <= COPY_ROWS_PER_TURN
    assert run_sql(database_url, "SELECT count(*) FROM gateway.audit_log")[0][0] == 1000
