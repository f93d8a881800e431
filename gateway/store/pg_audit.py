"""Postgres reads of the audit log for `gateway audit`: the tail, the follower's window and the
export's server-side cursor. (The request path's COPY writes are `Database.write_audit`.)"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from typing import Any

import anyio
import msgspec
from psycopg.rows import kwargs_row

from gateway.store import queries
from gateway.store.pg import Database


class AuditFilter(msgspec.Struct, frozen=True):
    """Which audit rows `gateway audit` reads; None matches any, statuses are inclusive."""

    key_prefix: str  # shown keys are `<key_prefix>_<key_id>`
    tenant_id: str | None = None
    key_id: str | None = None
    status_min: int = 0
    status_max: int = 999


class AuditRow(msgspec.Struct, frozen=True):
    """One proxied request as audited, with its tenant's name (or id, once deleted)."""

    ts: datetime
    request_id: str
    tenant: str | None
    tenant_id: str | None
    key: str | None
    client_ip: str | None
    method: str
    route: str
    model: str | None
    backend: str | None
    status: int
    error_code: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    ttfb_ms: float | None
    duration_ms: float | None
    streamed: bool | None


class AuditTail(msgspec.Struct, frozen=True):
    """The last rows, oldest first; and, seen in the same snapshot, where a follower starts
    (the newest row's ts, or now) and the rows since that start less the overlap."""

    rows: list[AuditRow]
    start: datetime
    window: list[AuditRow]


async def audit_tail(
    db: Database, where: AuditFilter, lines: int, overlap: timedelta | None = None
) -> AuditTail:
    """The last `lines` matching audit rows; with `overlap`, also what a follower needs to
    go on from them without missing or repeating a row (`AuditTail`)."""
    params: dict[str, Any] = {**msgspec.structs.asdict(where), "lines": lines}
    async with db.transaction() as conn:
        await conn.execute(queries.AUDIT_READING)
        cursor = conn.cursor(row_factory=kwargs_row(AuditRow))
        await cursor.execute(queries.AUDIT_RECENT, params)
        rows = (await cursor.fetchall())[::-1]
        if rows:
            start: datetime = rows[-1].ts
        else:
            now = await (await conn.execute(queries.AUDIT_NOW)).fetchone()
            assert now is not None  # one row, always
            start = now[0]
        if overlap is None:
            return AuditTail(rows, start, [])
        await cursor.execute(queries.AUDIT_SINCE, {**params, "since": start - overlap})
        return AuditTail(rows, start, await cursor.fetchall())


async def audit_since(db: Database, where: AuditFilter, since: datetime) -> list[AuditRow]:
    """Matching audit rows from `since` on, oldest first."""
    params: dict[str, Any] = {**msgspec.structs.asdict(where), "since": since}
    async with db.transaction() as conn:
        await conn.execute(queries.AUDIT_READING)
        cursor = conn.cursor(row_factory=kwargs_row(AuditRow))
        await cursor.execute(queries.AUDIT_SINCE, params)
        return await cursor.fetchall()


async def audit_export(
    db: Database,
    where: AuditFilter,
    since: datetime,
    until: datetime | None,
    *,
    batch: int,
    fetch_timeout_s: float,
) -> AsyncGenerator[list[AuditRow], None]:
    """Matching audit rows in [since, until) by ts, `batch` at a time, from a server-side
    cursor: memory stays flat however many there are. Each fetch has `fetch_timeout_s`."""
    params: dict[str, Any] = {**msgspec.structs.asdict(where), "since": since, "until": until}
    # No cancel scope may stay open across a `yield`, so each one covers a single call.
    async with db.transaction(bounded=False) as conn:
        cursor = conn.cursor("audit_export", row_factory=kwargs_row(AuditRow))
        with anyio.fail_after(db.timeout_s):
            await conn.execute(queries.AUDIT_READING)
            await cursor.execute(queries.AUDIT_EXPORT, params)
        while True:
            with anyio.fail_after(fetch_timeout_s):
                rows = await cursor.fetchmany(batch)
            if not rows:
                break
            yield rows
        with anyio.fail_after(db.timeout_s):
            await cursor.close()
