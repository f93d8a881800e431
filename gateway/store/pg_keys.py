"""Postgres calls of `gateway keys`: create, list, revoke, rotate and a key's prompt-log setting;
each change is announced on `gateway_principals` (or by the revocation trigger)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from psycopg.rows import kwargs_row

from gateway.store import queries
from gateway.store.pg import Database


class KeySettings(msgspec.Struct, frozen=True):
    """What `gateway keys rotate|update` show and change of a key (never its secret)."""

    key_id: str
    name: str
    tenant: str
    expires_at: datetime | None
    revoked_at: datetime | None
    previous_secret_expires_at: datetime | None
    prompt_log: bool
    prompt_log_retention_days: int | None


class KeyRow(msgspec.Struct, frozen=True):
    key_id: str
    name: str
    tenant: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class _Created(msgspec.Struct):
    created_at: datetime


class _Revoked(msgspec.Struct):
    revoked_at: datetime | None


async def create_key(
    db: Database,
    *,
    key_id: str,
    tenant_id: str,
    name: str,
    secret_hash: str,
    expires_at: datetime | None,
) -> datetime:
    rows = await db.fetch(
        _Created,
        queries.CREATE_KEY,
        key_id=key_id,
        tenant_id=tenant_id,
        name=name,
        secret_hash=secret_hash,
        expires_at=expires_at,
    )
    return rows[0].created_at


async def list_keys(db: Database, tenant: str | None) -> list[KeyRow]:
    return await db.fetch(KeyRow, queries.LIST_KEYS, tenant=tenant)


async def revoke_key(db: Database, key_id: str, reason: str | None) -> bool | None:
    """True when revoked now, False when it was already revoked, None when no such key."""
    if await db.execute(queries.REVOKE_KEY, key_id=key_id, reason=reason):
        return True
    return False if await db.fetch(_Revoked, queries.KEY_EXISTS, key_id=key_id) else None


async def key_settings(db: Database, key_id: str) -> KeySettings | None:
    rows = await db.fetch(KeySettings, queries.KEY_SETTINGS, key_id=key_id)
    return rows[0] if rows else None


async def rotate_key(
    db: Database, key_id: str, secret_hash: str, grace_s: float
) -> tuple[KeySettings, KeySettings] | None:
    """Give a key a new secret; the old one keeps working for `grace_s` (0: not at all).
    A revoked key is left as it is (before == after). None when no such key."""
    params = {"key_id": key_id, "secret_hash": secret_hash, "grace_s": grace_s}
    return await _change_key(db, queries.ROTATE_KEY, params, unless_revoked=True)


async def set_prompt_log(
    db: Database,
    key_id: str,
    *,
    enabled: bool | None,
    retention_days: int | None,
    retention_set: bool,
) -> tuple[KeySettings, KeySettings] | None:
    """Turn a key's prompt log on or off (None: as it is) and set its retention (None: the
    configured default). None when no such key."""
    params = {
        "key_id": key_id,
        "prompt_log": enabled,
        "retention_days": retention_days,
        "retention_set": retention_set,
    }
    return await _change_key(db, queries.SET_PROMPT_LOG, params, unless_revoked=False)


async def _change_key(
    db: Database, update: str, params: dict[str, Any], *, unless_revoked: bool
) -> tuple[KeySettings, KeySettings] | None:
    # Locked, changed and announced as `k:<key_id>` in one transaction: a gateway that
    # hears the notice reads the new row.
    async with db.transaction() as conn:
        cursor = conn.cursor(row_factory=kwargs_row(KeySettings))
        await cursor.execute(queries.KEY_SETTINGS_FOR_UPDATE, params)
        before = await cursor.fetchone()
        if before is None or (unless_revoked and before.revoked_at is not None):
            return None if before is None else (before, before)
        await conn.execute(update, params)
        await conn.execute(queries.NOTIFY_PRINCIPALS, {"subject": f"k:{before.key_id}"})
        await cursor.execute(queries.KEY_SETTINGS, params)
        after = await cursor.fetchone()
        assert after is not None  # the row is locked
        return before, after
