"""The SQL migration runner: applies sql/NNNN_name.sql files once each, in order, under a lock.

An admin command, not the hot path, so it uses a plain synchronous psycopg connection.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

# Any fixed bigint works as long as every replica uses the same one; this is b"gateway\0".
MIGRATION_LOCK_KEY = 0x6761_7465_7761_7900
CONNECT_TIMEOUT_S = 5
MIGRATION_FILE_PATTERN = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9][a-z0-9_]*)\.sql$")

_Connection = psycopg.Connection[TupleRow]
_T = TypeVar("_T")

_CREATE_BOOKKEEPING = b"""
create schema if not exists gateway;
create table if not exists gateway.schema_migrations (
    version     integer primary key,
    name        text not null unique,
    checksum    text not null,
    applied_at  timestamptz not null default now()
);
"""


class MigrationError(Exception):
    """A migration could not be applied; the message is meant for the operator."""


class MigrationState(msgspec.Struct, frozen=True):
    """One migration as `gateway migrate --status` reports it."""

    name: str
    version: int
    applied_at: datetime | None
    checksum_ok: bool


class _MigrationFile(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: bytes
    checksum: str


class _AppliedRow(msgspec.Struct, frozen=True):
    version: int
    name: str
    checksum: str
    applied_at: datetime


def migrations_dir() -> Path:
    """The directory holding the SQL files: in a wheel `gateway/sql`, in a checkout `sql/`."""
    package_dir = Path(__file__).resolve().parent
    # The packaged copy wins when it exists, so an unrelated top-level `sql` directory in
    # site-packages can never be mistaken for ours.
    packaged = package_dir / "sql"
    if packaged.is_dir():
        return packaged
    return package_dir.parent / "sql"


def apply_migrations(conninfo: str, directory: Path | None = None) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction; return their names.

    Raises MigrationError if the database is unreachable, a file name is malformed, an applied
    file was edited or deleted, or a migration fails (which is rolled back).
    """
    files = _discover(directory or migrations_dir())
    applied_now: list[str] = []
    with _connect(conninfo) as conn:
        # A session lock, released when the connection closes even if we crash, so replicas
        # that start together migrate one after another instead of racing.
        _run_bookkeeping(conn, "taking the migration lock", _lock)
        _run_bookkeeping(conn, "creating gateway.schema_migrations", _create_bookkeeping)
        applied = _run_bookkeeping(conn, "reading gateway.schema_migrations", _read_applied)
        _verify_applied(files, applied)
        for migration in files:
            if migration.version in applied:
                continue
            _apply_one(conn, migration)
            applied_now.append(migration.name)
    return applied_now


def migration_status(conninfo: str, directory: Path | None = None) -> list[MigrationState]:
    """Every migration on disk or recorded in the database, by version, with whether it matches."""
    files = {migration.version: migration for migration in _discover(directory or migrations_dir())}
    with _connect(conninfo) as conn:
        applied = _run_bookkeeping(conn, "reading gateway.schema_migrations", _read_applied)
    states: list[MigrationState] = []
    for version in sorted(files.keys() | applied.keys()):
        on_disk = files.get(version)
        row = applied.get(version)
        if row is not None:
            matches = on_disk is not None and (on_disk.name, on_disk.checksum) == (
                row.name,
                row.checksum,
            )
            states.append(MigrationState(row.name, version, row.applied_at, checksum_ok=matches))
        elif on_disk is not None:
            states.append(MigrationState(on_disk.name, version, None, checksum_ok=True))
    return states


def _discover(directory: Path) -> list[_MigrationFile]:
    if not directory.is_dir():
        raise MigrationError(f"the migrations directory {directory} does not exist")
    by_version: dict[int, _MigrationFile] = {}
    for path in sorted(directory.iterdir()):
        # Editor swap files and the like are hidden; anything else is a migration or a mistake.
        if path.name.startswith(".") or path.is_dir():
            continue
        match = MIGRATION_FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name} in {directory} is not a migration file name; expected NNNN_name.sql "
                "(four digits, an underscore, lower-case letters, digits and underscores)"
            )
        version = int(match["version"])
        if version in by_version:
            raise MigrationError(
                f"{by_version[version].name} and {path.name} in {directory} share the number "
                f"{match['version']}; each migration needs its own"
            )
        sql = path.read_bytes()
        by_version[version] = _MigrationFile(
            version, path.name, sql, hashlib.sha256(sql).hexdigest()
        )
    return [by_version[version] for version in sorted(by_version)]


def _verify_applied(files: list[_MigrationFile], applied: dict[int, _AppliedRow]) -> None:
    on_disk = {migration.version: migration for migration in files}
    for version, row in sorted(applied.items()):
        migration = on_disk.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {row.name} was applied to this database but its file is missing; "
                "restore it unchanged (applied migrations are never deleted)"
            )
        if migration.name != row.name:
            raise MigrationError(
                f"migration {row.name} was applied to this database but is now named "
                f"{migration.name}; restore the old name (applied migrations are never renamed)"
            )
        if migration.checksum != row.checksum:
            raise MigrationError(
                f"migration {row.name} was edited after it was applied to this database "
                f"(recorded sha256 {row.checksum[:12]}..., file now {migration.checksum[:12]}...); "
                "restore it and put the change in a new migration"
            )


def _apply_one(conn: _Connection, migration: _MigrationFile) -> None:
    try:
        with conn.transaction():
            # Bytes with no parameters go over the simple query protocol, which runs every
            # statement in the file and leaves % signs in the SQL alone.
            conn.execute(migration.sql)
            conn.execute(
                "insert into gateway.schema_migrations (version, name, checksum)"
                " values (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as err:
        reason = _describe_pg_error(err, migration.sql)
        raise MigrationError(
            f"migration {migration.name} failed and was rolled back: {reason}"
        ) from err


def _describe_pg_error(err: psycopg.Error, sql: bytes) -> str:
    diag = err.diag
    message = diag.message_primary or " ".join(str(err).split())
    position = diag.statement_position
    if position is not None and position.isdigit():
        # Postgres counts characters from 1 across the whole file it was sent.
        text = sql.decode("utf-8", errors="replace")
        line = text.count("\n", 0, int(position) - 1) + 1
        message += f" (line {line})"
    if diag.context:
        message += f"; context: {' '.join(diag.context.split())}"
    return message


def _lock(conn: _Connection) -> None:
    conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))


def _create_bookkeeping(conn: _Connection) -> None:
    with conn.transaction():
        conn.execute(_CREATE_BOOKKEEPING)


def _read_applied(conn: _Connection) -> dict[int, _AppliedRow]:
    exists = conn.execute("select to_regclass('gateway.schema_migrations') is not null").fetchone()
    if exists is None or not exists[0]:
        return {}
    rows = conn.execute(
        "select version, name, checksum, applied_at from gateway.schema_migrations order by version"
    ).fetchall()
    return {
        version: _AppliedRow(version, name, checksum, applied_at)
        for version, name, checksum, applied_at in rows
    }


def _run_bookkeeping(
    conn: _Connection,
    doing: str,
    step: Callable[[_Connection], _T],
) -> _T:
    try:
        return step(conn)
    except psycopg.Error as err:
        raise MigrationError(f"{doing} failed: {' '.join(str(err).split())}") from err


def _connect(conninfo: str) -> _Connection:
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        # libpq's parse errors quote the whole string, password included, so none of it is shown.
        raise MigrationError(
            "the database URL cannot be parsed (not shown: it may contain a password)"
        ) from None
    target = _describe_target(params)
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as err:
        reason = " ".join(str(err).split())
        password = params.get("password")
        if isinstance(password, str) and password:
            reason = reason.replace(password, "***")
        raise MigrationError(f"cannot reach the database at {target}: {reason}") from None


def _describe_target(params: Mapping[str, object]) -> str:
    """host:port/dbname as libpq would resolve it, never with the password."""

    def setting(key: str, env: str, default: str) -> str:
        value = params.get(key) or os.environ.get(env) or default
        return str(value)

    host = setting("host", "PGHOST", "localhost")
    port = setting("port", "PGPORT", "5432")
    user = setting("user", "PGUSER", "")
    dbname = setting("dbname", "PGDATABASE", user or "(default)")
    return f"{host}:{port}/{dbname}"
