"""Postgres through a psycopg pool; the only module that sees psycopg's exceptions."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import sql
from psycopg.rows import kwargs_row

from gateway.config import Secret
from gateway.errors import ServiceUnavailable
from gateway.store import queries

log = logging.getLogger(__name__)
Row = TypeVar("Row")


class Conflict(Exception):
    """A row with the same unique name exists already."""


class Rejected(Exception):
    """The schema refused a value (a CHECK constraint)."""


class KeyRecord(msgspec.Struct, frozen=True):
    key_id: str
    key_name: str
    tenant_id: str
    tenant_name: str
    secret_hash: str
    previous_secret_hash: str | None
    previous_secret_expires_at: datetime | None
    expires_at: datetime | None
    revoked: bool
    tenant_disabled: bool
    key_rpm: int | None
    key_tpm: int | None
    key_concurrent: int | None
    tenant_rpm: int | None
    tenant_tpm: int | None
    tenant_concurrent: int | None
    key_daily: int | None
    key_monthly: int | None
    key_total: int | None
    tenant_daily: int | None
    tenant_monthly: int | None
    tenant_total: int | None
    key_allow_all: bool | None
    key_allowed: list[str] | None
    tenant_allow_all: bool
    tenant_allowed: list[str]
    prompt_log: bool
    prompt_log_retention_days: int | None
    queue_weight: int


class UsageRow(msgspec.Struct, frozen=True):
    """One addition to the ledger: a key's tokens in one period."""

    tenant_id: str
    key_id: str
    period: str
    period_start: date
    prompt_tokens: int
    completion_tokens: int
    requests: int


class UsageNow(msgspec.Struct, frozen=True, array_like=True):
    key_day: int
    key_month: int
    key_total: int
    tenant_day: int
    tenant_month: int
    tenant_total: int


class TenantRow(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: datetime
    queue_weight: int = 1
    active_keys: int = 0


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


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except psycopg.errors.UniqueViolation:
        raise Conflict from None
    except (psycopg.errors.CheckViolation, psycopg.errors.DataError) as exc:
        raise Rejected(exc.diag.constraint_name or "invalid value") from None
    except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as exc:
        log.warning("Postgres call failed: %s", type(exc).__name__)
        raise ServiceUnavailable from None


class Database:
    """A connection pool with a deadline on every call; psycopg errors leave as ours."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool, conninfo: str, timeout_s: float):
        self._pool = pool
        self._conninfo = conninfo
        self.timeout_s = timeout_s

    @classmethod
    @asynccontextmanager
    async def open(
        cls, conninfo: str, *, pool_size: int, timeout_s: float
    ) -> AsyncIterator[Database]:
        # Not waiting for the first connection: a gateway that starts while Postgres is down
        # still serves cached keys and reports itself unready.
        pool = psycopg_pool.AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout_s))},
        )
        await pool.open(wait=False)
        try:
            yield cls(pool, conninfo, timeout_s)
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close(timeout=timeout_s)

    async def _fetch(self, factory: Callable[..., Row], sql: str, **params: Any) -> list[Row]:
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn:
                cursor = conn.cursor(row_factory=kwargs_row(factory))
                await cursor.execute(sql, params)
                return await cursor.fetchall()

    async def _execute(self, sql: str, **params: Any) -> int:
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return cursor.rowcount

    async def ping(self) -> bool:
        try:
            await self._execute(queries.PING)
        except ServiceUnavailable:
            return False
        return True

    async def find_key(self, key_id: str) -> KeyRecord | None:
        rows = await self._fetch(KeyRecord, queries.FIND_KEY, key_id=key_id)
        return rows[0] if rows else None

    async def update_key_hash(self, key_id: str, old_hash: str, new_hash: str) -> None:
        await self._execute(
            queries.UPDATE_KEY_HASH, key_id=key_id, old_hash=old_hash, secret_hash=new_hash
        )

    async def add_usage(self, rows: list[UsageRow]) -> None:
        """Add a batch to the ledger in one transaction: all of it lands, or none."""
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with (
                self._pool.connection() as conn,
                conn.transaction(),
                conn.cursor() as cursor,
            ):
                await cursor.executemany(
                    queries.ADD_USAGE, [msgspec.structs.asdict(row) for row in rows]
                )

    async def write_audit(
        self, audit_rows: Sequence[Sequence[Any]], prompt_rows: Sequence[Sequence[Any]]
    ) -> None:
        """COPY a batch of audit and prompt-log rows in one transaction: all of it, or none."""
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn, conn.transaction():
                cursor = conn.cursor()
                async with cursor.copy(queries.COPY_AUDIT) as copy:
                    for row in audit_rows:
                        await copy.write_row(row)
                if prompt_rows:
                    async with cursor.copy(queries.COPY_PROMPTS) as copy:
                        for row in prompt_rows:
                            await copy.write_row(row)

    async def usage_now(self, tenant_id: str, key_id: str, day: date, month: date) -> UsageNow:
        rows = await self._fetch(
            UsageNow, queries.USAGE_NOW, tenant_id=tenant_id, key_id=key_id, day=day, month=month
        )
        return rows[0]

    async def notify_principals(self, subject: str) -> None:
        """Tell every gateway that `k:<key_id>` or `t:<tenant_id>` changed."""
        await self._execute(queries.NOTIFY_PRINCIPALS, subject=subject)

    async def create_tenant(self, name: str, *, allow_all_models: bool = False) -> CreatedTenant:
        """A new tenant; default-deny unless it may use every discovered model."""
        rows = await self._fetch(
            CreatedTenant, queries.CREATE_TENANT, name=name, allow_all_models=allow_all_models
        )
        return rows[0]

    async def list_tenants(self) -> list[TenantRow]:
        return await self._fetch(TenantRow, queries.LIST_TENANTS)

    async def set_queue_weight(self, name: str, weight: int) -> str | None:
        """The tenant's id once its weight is set and announced; None if there is no such one."""
        rows = await self._fetch(_Id, queries.SET_QUEUE_WEIGHT, name=name, weight=weight)
        return str(rows[0].id) if rows else None

    async def tenant_id(self, name: str) -> str | None:
        rows = await self._fetch(_Id, queries.FIND_TENANT_ID, name=name)
        return str(rows[0].id) if rows else None

    async def create_key(
        self,
        *,
        key_id: str,
        tenant_id: str,
        name: str,
        secret_hash: str,
        expires_at: datetime | None,
    ) -> datetime:
        rows = await self._fetch(
            _Created,
            queries.CREATE_KEY,
            key_id=key_id,
            tenant_id=tenant_id,
            name=name,
            secret_hash=secret_hash,
            expires_at=expires_at,
        )
        return rows[0].created_at

    async def list_keys(self, tenant: str | None) -> list[KeyRow]:
        return await self._fetch(KeyRow, queries.LIST_KEYS, tenant=tenant)

    async def revoke_key(self, key_id: str, reason: str | None) -> bool | None:
        """True when revoked now, False when it was already revoked, None when no such key."""
        if await self._execute(queries.REVOKE_KEY, key_id=key_id, reason=reason):
            return True
        return False if await self._fetch(_Revoked, queries.KEY_EXISTS, key_id=key_id) else None

    async def key_settings(self, key_id: str) -> KeySettings | None:
        rows = await self._fetch(KeySettings, queries.KEY_SETTINGS, key_id=key_id)
        return rows[0] if rows else None

    async def rotate_key(
        self, key_id: str, secret_hash: str, grace_s: float
    ) -> tuple[KeySettings, KeySettings] | None:
        """Give a key a new secret; the old one keeps working for `grace_s` (0: not at all).
        A revoked key is left as it is (before == after). None when no such key."""
        params = {"key_id": key_id, "secret_hash": secret_hash, "grace_s": grace_s}
        return await self._change_key(queries.ROTATE_KEY, params, unless_revoked=True)

    async def set_prompt_log(
        self, key_id: str, *, enabled: bool | None, retention_days: int | None, retention_set: bool
    ) -> tuple[KeySettings, KeySettings] | None:
        """Turn a key's prompt log on or off (None: as it is) and set its retention (None: the
        configured default). None when no such key."""
        params = {
            "key_id": key_id,
            "prompt_log": enabled,
            "retention_days": retention_days,
            "retention_set": retention_set,
        }
        return await self._change_key(queries.SET_PROMPT_LOG, params, unless_revoked=False)

    async def _change_key(
        self, update: str, params: dict[str, Any], *, unless_revoked: bool
    ) -> tuple[KeySettings, KeySettings] | None:
        # Locked, changed and announced as `k:<key_id>` in one transaction: a gateway that
        # hears the notice reads the new row.
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn, conn.transaction():
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

    async def listen(
        self,
        handlers: Mapping[str, Callable[[str], None]],
        on_gap: Callable[[], None],
        *,
        retry_s: float = 1.0,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Calls `handlers[channel](payload)` for every notice on those channels, forever
        (`gateway_revocations`, `gateway_principals`, `gateway_backends`).

        While the connection is down a notice can be missed, so every reconnect calls
        `on_gap()` first: the caller drops what it cached rather than trust it.
        """
        task_status.started()
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=max(1, round(self.timeout_s))
                ) as conn:
                    for channel in handlers:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    on_gap()
                    async for notice in conn.notifies():
                        handlers[notice.channel](notice.payload)
            except (psycopg.Error, OSError) as exc:
                log.warning("change listener lost Postgres: %s", type(exc).__name__)
            await anyio.sleep(retry_s)

    async def list_backends(self) -> list[BackendRow]:
        return await self._fetch(_backend_row, queries.LIST_BACKENDS)

    async def add_backend(self, row: BackendRow, *, dry_run: bool = False) -> BackendRow:
        """Insert a backend; the table's trigger announces it on `gateway_backends` at commit.
        A dry run makes every check (a duplicate name too) and rolls back: nothing is written
        and nothing announced. `Conflict` when the name is taken."""
        params = msgspec.structs.asdict(row)
        params["token"] = row.token.reveal() if row.token is not None else None
        added = await self._write_backend(queries.ADD_BACKEND, params, dry_run)
        assert added is not None  # an INSERT returns its row
        return added

    async def remove_backend(self, name: str, *, dry_run: bool = False) -> BackendRow | None:
        """Delete a backend (announced like `add_backend`); None when no such backend."""
        return await self._write_backend(queries.REMOVE_BACKEND, {"name": name}, dry_run)

    async def _write_backend(
        self, sql: str, params: dict[str, Any], dry_run: bool
    ) -> BackendRow | None:
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with (
                self._pool.connection() as conn,
                conn.transaction(force_rollback=dry_run),
            ):
                cursor = conn.cursor(row_factory=kwargs_row(_backend_row))
                await cursor.execute(sql, params)
                return await cursor.fetchone()

    async def key_quotas(
        self, *, tenant: str | None = None, key_id: str | None = None
    ) -> list[QuotaRow]:
        """Keys' limits and budgets as stored, with their tenants'; all keys when unfiltered."""
        return await self._fetch(QuotaRow, queries.KEY_QUOTAS, tenant=tenant, key_id=key_id)

    async def tenant_quotas(self, tenant: str | None = None) -> list[QuotaRow]:
        """Tenants' limits and budgets as stored (key fields None); all tenants when unnamed."""
        return await self._fetch(QuotaRow, queries.TENANT_QUOTAS, tenant=tenant)

    async def set_key_quotas(self, key_id: str, changes: dict[str, int | None]) -> QuotaRow | None:
        """Change a key's limits or budgets (`QUOTA_FIELDS`; None clears) and announce it on
        `gateway_principals` as `k:<key_id>`, in one transaction. None when no such key."""
        params = {**_quota_params(changes), "key_id": key_id, "tenant": None}
        return await self._set_quotas(queries.SET_KEY_QUOTAS, queries.KEY_QUOTAS, params)

    async def set_tenant_quotas(
        self, tenant: str, changes: dict[str, int | None]
    ) -> QuotaRow | None:
        """As `set_key_quotas`, for the tenant named `tenant`; announced as `t:<tenant_id>`."""
        params = {**_quota_params(changes), "tenant": tenant}
        return await self._set_quotas(queries.SET_TENANT_QUOTAS, queries.TENANT_QUOTAS, params)

    async def _set_quotas(self, update: str, read: str, params: dict[str, Any]) -> QuotaRow | None:
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn, conn.transaction():
                changed = await (await conn.execute(update, params)).fetchone()
                if changed is None:
                    return None
                await conn.execute(queries.NOTIFY_PRINCIPALS, {"subject": changed[0]})
                cursor = conn.cursor(row_factory=kwargs_row(QuotaRow))
                await cursor.execute(read, params)
                return await cursor.fetchone()

    async def ledger_now(self, tenant_ids: list[str], day: date, month: date) -> list[LedgerNow]:
        """Every key's ledger rows of the current day, month and total, for whole tenants."""
        return await self._fetch(
            LedgerNow, queries.LEDGER_NOW, tenant_ids=tenant_ids, day=day, month=month
        )

    @asynccontextmanager
    async def retention_session(
        self, *, exclusive: bool, lock_timeout_s: float
    ) -> AsyncIterator[RetentionSession | None]:
        """A connection of its own for a retention sweep, so its settings and lock never reach
        the pool. With `exclusive` it holds the sweep's advisory lock, or yields None when
        another session holds it; closing the connection releases the lock, whatever happened.
        """
        with _mapped(), anyio.fail_after(self.timeout_s):
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, round(self.timeout_s))
            )
        try:
            session = RetentionSession(conn, self.timeout_s)
            yield session if await session.begin(lock_timeout_s, exclusive=exclusive) else None
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def audit_tail(
        self, where: AuditFilter, lines: int, overlap: timedelta | None = None
    ) -> AuditTail:
        """The last `lines` matching audit rows; with `overlap`, also what a follower needs to
        go on from them without missing or repeating a row (`AuditTail`)."""
        params: dict[str, Any] = {**msgspec.structs.asdict(where), "lines": lines}
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn, conn.transaction():
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

    async def audit_since(self, where: AuditFilter, since: datetime) -> list[AuditRow]:
        """Matching audit rows from `since` on, oldest first."""
        params: dict[str, Any] = {**msgspec.structs.asdict(where), "since": since}
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(queries.AUDIT_READING)
                cursor = conn.cursor(row_factory=kwargs_row(AuditRow))
                await cursor.execute(queries.AUDIT_SINCE, params)
                return await cursor.fetchall()

    async def audit_export(
        self,
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
        with _mapped():
            async with self._pool.connection() as conn, conn.transaction():
                cursor = conn.cursor("audit_export", row_factory=kwargs_row(AuditRow))
                with anyio.fail_after(self.timeout_s):
                    await conn.execute(queries.AUDIT_READING)
                    await cursor.execute(queries.AUDIT_EXPORT, params)
                while True:
                    with anyio.fail_after(fetch_timeout_s):
                        rows = await cursor.fetchmany(batch)
                    if not rows:
                        break
                    yield rows
                with anyio.fail_after(self.timeout_s):
                    await cursor.close()

    async def models_of(
        self, *, tenant: str | None = None, key_id: str | None = None
    ) -> ModelsRow | None:
        """A key's model access as stored, with its tenant's (by key id), or a tenant's alone
        (by name). None when no such key or tenant."""
        read = queries.KEY_MODELS if key_id is not None else queries.TENANT_MODELS
        rows = await self._fetch(ModelsRow, read, tenant=tenant, key_id=key_id)
        return rows[0] if rows else None

    async def change_models(
        self,
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
        with _mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn, conn.transaction():
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
                changed = await (
                    await conn.execute(
                        write,
                        {
                            **params,
                            "tenant_id": before.tenant_id,
                            "allow_all": update.allow_all,
                            "allowed": update.allowed,
                        },
                    )
                ).fetchone()
                assert changed is not None  # the row is locked
                await conn.execute(queries.NOTIFY_PRINCIPALS, {"subject": changed[0]})
                await cursor.execute(read, params)
                after = await cursor.fetchone()
                assert after is not None
                return before, after


class _Id(msgspec.Struct):
    id: Any


class _Created(msgspec.Struct):
    created_at: datetime


class _Revoked(msgspec.Struct):
    revoked_at: datetime | None


class Busy(Exception):
    """A lock was not granted within the session's lock_timeout: try again later."""


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


class RetentionSession:
    """The connection one retention sweep runs on: every call bounded by the database timeout,
    and `Busy` when a lock is not granted within the lock_timeout."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], timeout_s: float) -> None:
        self._conn = conn
        self._timeout_s = timeout_s

    @contextmanager
    def _call(self) -> Iterator[None]:
        with _mapped(), anyio.fail_after(self._timeout_s):
            try:
                yield
            except psycopg.errors.LockNotAvailable:
                raise Busy from None

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


class _Locked(msgspec.Struct):
    locked: bool


def _in_gw(partition: str) -> sql.Identifier:
    return sql.Identifier("gateway", partition)


def _audit_rows(template: str, partition: str, tenant_ids: Sequence[str] | None) -> sql.Composed:
    rows = queries.AUDIT_OTHER_ROWS if tenant_ids is None else queries.AUDIT_TENANT_ROWS
    return sql.SQL(template).format(partition=_in_gw(partition), rows=sql.SQL(rows))


# The limits and budgets `set_key_quotas` / `set_tenant_quotas` change, by name.
QUOTA_FIELDS = ("rpm", "tpm", "concurrent", "daily", "monthly", "total")


def _quota_params(changes: dict[str, int | None]) -> dict[str, Any]:
    unknown = set(changes) - set(QUOTA_FIELDS)
    if unknown:
        raise ValueError(f"not a limit or budget: {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {}
    for name in QUOTA_FIELDS:
        params[f"{name}_set"] = name in changes
        params[name] = changes.get(name)
    return params


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


class CreatedTenant(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: datetime
    allow_all_models: bool
    active_keys: int = 0


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


class BackendRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `gateway.backends` as stored; the token stays a `Secret` from the driver on."""

    name: str
    url: str
    kind: str
    auth_header: str | None
    auth_scheme: str | None
    token_env: str | None
    token: Secret | None
    priority: int
    max_parallel: int
    enabled: bool


def _backend_row(*, token: str | None, **columns: Any) -> BackendRow:
    return BackendRow(token=Secret(token) if token is not None else None, **columns)
