"""Postgres calls of the retention sweep, on a connection of its own: audit-log partitions, the
batched deletes of audit rows and expired prompts, and the sweep's advisory lock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import kwargs_row

from gateway.store import queries
from gateway.store.pg import Database, mapped

Row = TypeVar("Row")


class AuditPartition(msgspec.Struct, frozen=True):
    """A partition of gateway.audit_log; a None bound is MINVALUE, MAXVALUE or the default's."""

    name: str
    lower: datetime | None
    upper: datetime | None


class TenantRetention(msgspec.Struct, frozen=True):
    tenant_id: str
    days: int


class _Count(msgspec.Struct):
    n: int


class _Locked(msgspec.Struct):
    locked: bool


@asynccontextmanager
async def retention_session(
    db: Database, *, exclusive: bool, lock_timeout_s: float
) -> AsyncIterator[RetentionSession | None]:
    """A connection of its own for a retention sweep, so its settings and lock never reach
    the pool. With `exclusive` it holds the sweep's advisory lock, or yields None when
    another session holds it; closing the connection releases the lock, whatever happened.
    """
    conn = await db.connect()
    try:
        session = RetentionSession(conn, db.timeout_s)
        yield session if await session.begin(lock_timeout_s, exclusive=exclusive) else None
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


class RetentionSession:
    """The connection one retention sweep runs on: every call bounded by the database timeout,
    and `Busy` when a lock is not granted within the lock_timeout."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], timeout_s: float) -> None:
        self._conn = conn
        self._timeout_s = timeout_s

    @contextmanager
    def _call(self) -> Iterator[None]:
        with mapped(busy_on_lock=True), anyio.fail_after(self._timeout_s):
            yield

    async def _fetch(self, factory: Callable[..., Row], query: Any, **params: Any) -> list[Row]:
        with self._call():
            cursor = self._conn.cursor(row_factory=kwargs_row(factory))
            await cursor.execute(query, params)
            return await cursor.fetchall()

    async def _execute(self, query: Any, **params: Any) -> int:
        with self._call():
            return (await self._conn.execute(query, params)).rowcount

    async def begin(self, lock_timeout_s: float, *, exclusive: bool) -> bool:
        """Apply the session's timeouts; with `exclusive`, False when the lock is taken."""
        await self._execute(
            queries.RETENTION_SESSION,
            lock_timeout=f"{max(1, round(lock_timeout_s * 1000))}ms",
            statement_timeout=f"{max(1, round(self._timeout_s * 1000))}ms",
        )
        if not exclusive:
            return True
        rows = await self._fetch(_Locked, queries.RETENTION_TRY_LOCK)
        return rows[0].locked

    async def ensure_audit_partitions(self, from_month: date, months: int) -> None:
        await self._execute(queries.ENSURE_AUDIT_PARTITIONS, from_month=from_month, months=months)

    async def audit_partitions(self) -> list[AuditPartition]:
        return await self._fetch(AuditPartition, queries.AUDIT_PARTITIONS)

    async def audit_retentions(self) -> list[TenantRetention]:
        """The tenants with an audit retention of their own."""
        return await self._fetch(TenantRetention, queries.AUDIT_RETENTIONS)

    async def drop_audit_partition(self, name: str) -> None:
        await self._execute(sql.SQL(queries.DROP_AUDIT_PARTITION).format(partition=_in_gw(name)))

    async def delete_audit_rows(
        self,
        partition: str,
        *,
        before: datetime,
        tenant_ids: Sequence[str] | None,
        own: Sequence[str],
        limit: int,
    ) -> int:
        """Delete at most `limit` rows before `before` of `tenant_ids` from one partition; None
        means every tenant not in `own` (those with a retention of their own) and no tenant."""
        query = _audit_rows(queries.DELETE_AUDIT_BATCH, partition, tenant_ids)
        params = {"tenant_ids": list(tenant_ids or ()), "own": list(own), "before": before}
        return await self._execute(query, **params, limit=limit)

    async def count_audit_rows(
        self,
        partition: str,
        *,
        before: datetime,
        tenant_ids: Sequence[str] | None,
        own: Sequence[str],
    ) -> int:
        """How many rows `delete_audit_rows` would delete, all batches together."""
        query = _audit_rows(queries.COUNT_AUDIT, partition, tenant_ids)
        params = {"tenant_ids": list(tenant_ids or ()), "own": list(own), "before": before}
        return (await self._fetch(_Count, query, **params))[0].n

    async def delete_expired_prompts(self, now: datetime, limit: int) -> int:
        """Delete at most `limit` prompt-log rows that expired before `now`."""
        return await self._execute(queries.DELETE_EXPIRED_PROMPTS, now=now, limit=limit)

    async def count_expired_prompts(self, now: datetime) -> int:
        return (await self._fetch(_Count, queries.COUNT_EXPIRED_PROMPTS, now=now))[0].n


def _in_gw(partition: str) -> sql.Identifier:
    return sql.Identifier("gateway", partition)


def _audit_rows(template: str, partition: str, tenant_ids: Sequence[str] | None) -> sql.Composed:
    rows = queries.AUDIT_OTHER_ROWS if tenant_ids is None else queries.AUDIT_TENANT_ROWS
    return sql.SQL(template).format(partition=_in_gw(partition), rows=sql.SQL(rows))
