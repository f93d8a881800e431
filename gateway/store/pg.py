"""Postgres through a psycopg pool: `Database`, the calls the request path makes, and `mapped`,
the only place psycopg's exceptions become ours. Admin calls live in the `pg_*` modules."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext
from datetime import date, datetime
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
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

# Rows a COPY formats between two turns of the event loop. Formatting is CPU with nothing to
# wait for: a flush of 250 rows in one go held every request of the worker for about 0.5 ms,
# and a larger batch showed in the p99 (PERFORMANCE.md).
COPY_ROWS_PER_TURN = 25


class Conflict(Exception):
    """A row with the same unique name exists already."""


class Rejected(Exception):
    """The schema refused a value (a CHECK constraint)."""


class Busy(Exception):
    """A lock was not granted within the session's lock_timeout: try again later."""


@contextmanager
def mapped(*, busy_on_lock: bool = False) -> Iterator[None]:
    """psycopg's (and the pool's and the deadline's) errors as the gateway's; with
    `busy_on_lock`, a lock not granted in time is `Busy` rather than an outage."""
    try:
        yield
    except psycopg.errors.UniqueViolation:
        raise Conflict from None
    except (psycopg.errors.CheckViolation, psycopg.errors.DataError) as exc:
        raise Rejected(exc.diag.constraint_name or "invalid value") from None
    except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as exc:
        if busy_on_lock and isinstance(exc, psycopg.errors.LockNotAvailable):
            raise Busy from None
        log.warning("Postgres call failed: %s", type(exc).__name__)
        raise ServiceUnavailable from None


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


def backend_row(*, token: str | None, **columns: Any) -> BackendRow:
    """A row factory for `gateway.backends`: the token is wrapped as it leaves the driver."""
    return BackendRow(token=Secret(token) if token is not None else None, **columns)


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

    async def fetch(self, factory: Callable[..., Row], query: str, **params: Any) -> list[Row]:
        """Every row of one statement, each built by `factory` from its columns."""
        with mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn:
                cursor = conn.cursor(row_factory=kwargs_row(factory))
                await cursor.execute(query, params)
                return await cursor.fetchall()

    async def execute(self, query: str, **params: Any) -> int:
        """Run one statement; how many rows it touched."""
        with mapped(), anyio.fail_after(self.timeout_s):
            async with self._pool.connection() as conn:
                cursor = await conn.execute(query, params)
                return cursor.rowcount

    @asynccontextmanager
    async def transaction(
        self, *, force_rollback: bool = False, bounded: bool = True
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in one transaction, errors mapped. `bounded`: the whole block
        within the deadline; unbounded, the caller bounds each call (no cancel scope may stay
        open across a generator's `yield`)."""
        with mapped(), anyio.fail_after(self.timeout_s) if bounded else nullcontext():
            async with (
                self._pool.connection() as conn,
                conn.transaction(force_rollback=force_rollback),
            ):
                yield conn

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A connection of its own, outside the pool (the caller closes it)."""
        with mapped(), anyio.fail_after(self.timeout_s):
            return await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, round(self.timeout_s))
            )

    async def ping(self) -> bool:
        try:
            await self.execute(queries.PING)
        except ServiceUnavailable:
            return False
        return True

    async def find_key(self, key_id: str) -> KeyRecord | None:
        rows = await self.fetch(KeyRecord, queries.FIND_KEY, key_id=key_id)
        return rows[0] if rows else None

    async def update_key_hash(self, key_id: str, old_hash: str, new_hash: str) -> None:
        await self.execute(
            queries.UPDATE_KEY_HASH, key_id=key_id, old_hash=old_hash, secret_hash=new_hash
        )

    async def add_usage(self, rows: list[UsageRow]) -> None:
        """Add a batch to the ledger in one transaction: all of it lands, or none."""
        async with self.transaction() as conn, conn.cursor() as cursor:
            await cursor.executemany(
                queries.ADD_USAGE, [msgspec.structs.asdict(row) for row in rows]
            )

    async def write_audit(
        self, audit_rows: Sequence[Sequence[Any]], prompt_rows: Sequence[Sequence[Any]]
    ) -> None:
        """COPY a batch of audit and prompt-log rows in one transaction: all of it, or none."""
        async with self.transaction() as conn:
            cursor = conn.cursor()
            async with cursor.copy(queries.COPY_AUDIT) as copy:
                await _copy_rows(copy, audit_rows)
            if prompt_rows:
                async with cursor.copy(queries.COPY_PROMPTS) as copy:
                    await _copy_rows(copy, prompt_rows)

    async def usage_now(self, tenant_id: str, key_id: str, day: date, month: date) -> UsageNow:
        rows = await self.fetch(
            UsageNow, queries.USAGE_NOW, tenant_id=tenant_id, key_id=key_id, day=day, month=month
        )
        return rows[0]

    async def notify_principals(self, subject: str) -> None:
        """Tell every gateway that `k:<key_id>` or `t:<tenant_id>` changed."""
        await self.execute(queries.NOTIFY_PRINCIPALS, subject=subject)

    async def list_backends(self) -> list[BackendRow]:
        return await self.fetch(backend_row, queries.LIST_BACKENDS)

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


async def _copy_rows(copy: psycopg.AsyncCopy, rows: Sequence[Sequence[Any]]) -> None:
    """Every row into the COPY, letting the requests run every `COPY_ROWS_PER_TURN` rows."""
    for done, row in enumerate(rows, 1):
        await copy.write_row(row)
        if done % COPY_ROWS_PER_TURN == 0:
            await anyio.lowlevel.checkpoint()
