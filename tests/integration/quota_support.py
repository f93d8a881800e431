"""Shared pieces for the tests of limits and budgets: a running gateway and keys with quotas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict, Unpack

import httpx
import psycopg

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.keys import generate_key
from gateway.services import Services, hasher_for
from gateway.store import pg_keys, pg_tenants
from tests.secret_watch import WATCH

FAST_ARGON2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_COST_KIB": "64", "ARGON2_PARALLELISM": "1"}
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def run_sql(url: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


class Quota(TypedDict, total=False):
    """What `make_key` can set: `<key|tenant>_<column>`; None is unlimited."""

    key_rpm: int | None
    tenant_rpm: int | None
    key_tpm: int | None
    tenant_tpm: int | None
    key_concurrent: int | None
    tenant_concurrent: int | None
    key_daily: int | None
    tenant_daily: int | None
    key_monthly: int | None
    tenant_monthly: int | None
    key_total: int | None
    tenant_total: int | None


async def make_key(
    services: Services, tenant: str = "acme", name: str = "app", **quota: Unpack[Quota]
) -> str:
    """A key whose tenant and key columns carry `quota` (e.g. key_rpm=60, tenant_total=100)."""
    tenant_id = await pg_tenants.tenant_id(services.database, tenant)
    if tenant_id is None:
        # New tenants are default-deny; these tests are about quotas, not model access.
        created = await pg_tenants.create_tenant(services.database, tenant, allow_all_models=True)
        tenant_id = created.id
    issued = generate_key(services.settings.key_prefix)
    await pg_keys.create_key(
        services.database,
        key_id=issued.key_id,
        tenant_id=tenant_id,
        name=name,
        secret_hash=hasher_for(services.settings).hash(issued.full_key),
        expires_at=None,
    )
    url = services.settings.database_url.reveal()
    columns = {
        "rpm": "rpm",
        "tpm": "tpm",
        "concurrent": "concurrent",
        "daily": "budget_daily_tokens",
        "monthly": "budget_monthly_tokens",
        "total": "budget_total_tokens",
    }
    for name_, value in quota.items():
        scope, _, what = name_.partition("_")
        table, ident = ("api_keys", issued.key_id) if scope == "key" else ("tenants", tenant_id)
        run_sql(url, f"UPDATE gateway.{table} SET {columns[what]} = %s WHERE id = %s", value, ident)
    return issued.full_key


@asynccontextmanager
async def running_gateway(env: dict[str, str]) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """The real ASGI app with its services, and an in-process client for it."""
    WATCH.record_env(env)
    app = Gateway(load_settings({**FAST_ARGON2, **env}))
    async with (
        app.running() as services,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=60
        ) as client,
    ):
        yield services, client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
