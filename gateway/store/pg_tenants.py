"""Postgres calls of tenants and their limits, budgets, ledger and model access (the admin
CLI's); every change is announced on `gateway_principals` in the transaction that makes it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import msgspec
from psycopg.rows import kwargs_row

from gateway.store import queries
from gateway.store.pg import Database

# The limits and budgets `set_key_quotas` / `set_tenant_quotas` change, by name.
QUOTA_FIELDS = ("rpm", "tpm", "concurrent", "daily", "monthly", "total")


class TenantRow(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: datetime
    queue_weight: int = 1
    active_keys: int = 0


class CreatedTenant(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: datetime
    allow_all_models: bool
    active_keys: int = 0


class QuotaRow(msgspec.Struct, frozen=True):
    """A key's limits and budgets as stored, with its tenant's; for a tenant alone the key
    fields are None. A None limit inherits; a None budget is unlimited."""

    tenant_id: str
    tenant_name: str
    key_id: str | None
    key_name: str | None
    key_rpm: int | None
    key_tpm: int | None
    key_concurrent: int | None
    key_daily: int | None
    key_monthly: int | None
    key_total: int | None
    tenant_rpm: int | None
    tenant_tpm: int | None
    tenant_concurrent: int | None
    tenant_daily: int | None
    tenant_monthly: int | None
    tenant_total: int | None


class LedgerNow(msgspec.Struct, frozen=True):
    """One key's ledger row for one current period (`day`, `month` or `total`)."""

    tenant_id: str
    key_id: str
    period: str
    used: int
    requests: int


class ModelsRow(msgspec.Struct, frozen=True):
    """A key's model access as stored, with its tenant's; for a tenant alone the key fields are
    None. A key's None inherits its tenant's value."""

    tenant_id: str
    tenant_name: str
    key_id: str | None
    key_allow_all: bool | None
    key_allowed: list[str] | None
    tenant_allow_all: bool
    tenant_allowed: list[str]


class ModelsUpdate(msgspec.Struct, frozen=True):
    """New values for a scope's two model columns; None (keys only) inherits the tenant's."""

    allow_all: bool | None
    allowed: list[str] | None


class _Id(msgspec.Struct):
    id: Any


async def create_tenant(
    db: Database, name: str, *, allow_all_models: bool = False
) -> CreatedTenant:
    """A new tenant; default-deny unless it may use every discovered model."""
    rows = await db.fetch(
        CreatedTenant, queries.CREATE_TENANT, name=name, allow_all_models=allow_all_models
    )
    return rows[0]


async def list_tenants(db: Database) -> list[TenantRow]:
    return await db.fetch(TenantRow, queries.LIST_TENANTS)


async def set_queue_weight(db: Database, name: str, weight: int) -> str | None:
    """The tenant's id once its weight is set and announced; None if there is no such one."""
    rows = await db.fetch(_Id, queries.SET_QUEUE_WEIGHT, name=name, weight=weight)
    return str(rows[0].id) if rows else None


async def tenant_id(db: Database, name: str) -> str | None:
    rows = await db.fetch(_Id, queries.FIND_TENANT_ID, name=name)
    return str(rows[0].id) if rows else None


async def key_quotas(
    db: Database, *, tenant: str | None = None, key_id: str | None = None
) -> list[QuotaRow]:
    """Keys' limits and budgets as stored, with their tenants'; all keys when unfiltered."""
    return await db.fetch(QuotaRow, queries.KEY_QUOTAS, tenant=tenant, key_id=key_id)


async def tenant_quotas(db: Database, tenant: str | None = None) -> list[QuotaRow]:
    """Tenants' limits and budgets as stored (key fields None); all tenants when unnamed."""
    return await db.fetch(QuotaRow, queries.TENANT_QUOTAS, tenant=tenant)


async def set_key_quotas(
    db: Database, key_id: str, changes: dict[str, int | None]
) -> QuotaRow | None:
    """Change a key's limits or budgets (`QUOTA_FIELDS`; None clears) and announce it on
    `gateway_principals` as `k:<key_id>`, in one transaction. None when no such key."""
    params = {**_quota_params(changes), "key_id": key_id, "tenant": None}
    return await _set_quotas(db, queries.SET_KEY_QUOTAS, queries.KEY_QUOTAS, params)


async def set_tenant_quotas(
    db: Database, tenant: str, changes: dict[str, int | None]
) -> QuotaRow | None:
    """As `set_key_quotas`, for the tenant named `tenant`; announced as `t:<tenant_id>`."""
    params = {**_quota_params(changes), "tenant": tenant}
    return await _set_quotas(db, queries.SET_TENANT_QUOTAS, queries.TENANT_QUOTAS, params)


async def _set_quotas(
    db: Database, update: str, read: str, params: dict[str, Any]
) -> QuotaRow | None:
    async with db.transaction() as conn:
        changed = await (await conn.execute(update, params)).fetchone()
        if changed is None:
            return None
        await conn.execute(queries.NOTIFY_PRINCIPALS, {"subject": changed[0]})
        cursor = conn.cursor(row_factory=kwargs_row(QuotaRow))
        await cursor.execute(read, params)
        return await cursor.fetchone()


def _quota_params(changes: dict[str, int | None]) -> dict[str, Any]:
    unknown = set(changes) - set(QUOTA_FIELDS)
    if unknown:
        raise ValueError(f"not a limit or budget: {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {}
    for name in QUOTA_FIELDS:
        params[f"{name}_set"] = name in changes
        params[name] = changes.get(name)
    return params


async def ledger_now(
    db: Database, tenant_ids: list[str], day: date, month: date
) -> list[LedgerNow]:
    """Every key's ledger rows of the current day, month and total, for whole tenants."""
    return await db.fetch(
        LedgerNow, queries.LEDGER_NOW, tenant_ids=tenant_ids, day=day, month=month
    )


async def models_of(
    db: Database, *, tenant: str | None = None, key_id: str | None = None
) -> ModelsRow | None:
    """A key's model access as stored, with its tenant's (by key id), or a tenant's alone
    (by name). None when no such key or tenant."""
    read = queries.KEY_MODELS if key_id is not None else queries.TENANT_MODELS
    rows = await db.fetch(ModelsRow, read, tenant=tenant, key_id=key_id)
    return rows[0] if rows else None


async def change_models(
    db: Database,
    decide: Callable[[ModelsRow], ModelsUpdate | None],
    *,
    tenant: str | None = None,
    key_id: str | None = None,
) -> tuple[ModelsRow, ModelsRow] | None:
    """Lock a key's (by id) or a tenant's (by name) model access, let `decide` turn it into
    new values (None: leave it as it is), write them and announce the change on
    `gateway_principals`, in one transaction. `decide` may raise to change nothing.

    Returns (before, after); None when no such key or tenant.
    """
    by_key = key_id is not None
    locked_read = queries.KEY_MODELS_FOR_UPDATE if by_key else queries.TENANT_MODELS_FOR_UPDATE
    read = queries.KEY_MODELS if by_key else queries.TENANT_MODELS
    params: dict[str, Any] = {"tenant": tenant, "key_id": key_id}
    async with db.transaction() as conn:
        cursor = conn.cursor(row_factory=kwargs_row(ModelsRow))
        await cursor.execute(locked_read, params)
        before = await cursor.fetchone()
        if before is None:
            return None
        update = decide(before)
        if update is None:
            return before, before
        if not by_key and (update.allow_all is None or update.allowed is None):
            raise ValueError("a tenant's model access has no one to inherit from")
        write = queries.SET_KEY_MODELS if by_key else queries.SET_TENANT_MODELS
        written = {
            **params,
            "tenant_id": before.tenant_id,
            "allow_all": update.allow_all,
            "allowed": update.allowed,
        }
        changed = await (await conn.execute(write, written)).fetchone()
        assert changed is not None  # the row is locked
        await conn.execute(queries.NOTIFY_PRINCIPALS, {"subject": changed[0]})
        await cursor.execute(read, params)
        after = await cursor.fetchone()
        assert after is not None
        return before, after
