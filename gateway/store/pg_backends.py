"""Postgres writes of `gateway backends`: add and remove, each announced on `gateway_backends`
by the table's trigger at commit. (Listing them is `Database.list_backends`.)"""

from __future__ import annotations

from typing import Any

import msgspec
from psycopg.rows import kwargs_row

from gateway.store import queries
from gateway.store.pg import BackendRow, Database, backend_row


async def add_backend(db: Database, row: BackendRow, *, dry_run: bool = False) -> BackendRow:
    """Insert a backend. A dry run makes every check (a duplicate name too) and rolls back:
    nothing is written and nothing announced. `Conflict` when the name is taken."""
    params = msgspec.structs.asdict(row)
    params["token"] = row.token.reveal() if row.token is not None else None
    added = await _write_backend(db, queries.ADD_BACKEND, params, dry_run)
    assert added is not None  # an INSERT returns its row
    return added


async def remove_backend(db: Database, name: str, *, dry_run: bool = False) -> BackendRow | None:
    """Delete a backend (announced like `add_backend`); None when no such backend."""
    return await _write_backend(db, queries.REMOVE_BACKEND, {"name": name}, dry_run)


async def _write_backend(
    db: Database, query: str, params: dict[str, Any], dry_run: bool
) -> BackendRow | None:
    async with db.transaction(force_rollback=dry_run) as conn:
        cursor = conn.cursor(row_factory=kwargs_row(backend_row))
        await cursor.execute(query, params)
        return await cursor.fetchone()
