"""The migration runner and the initial schema, against a real, brand new Postgres database."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from gateway.migrate import (
    MigrationError,
    apply_migrations,
    migration_status,
    migrations_dir,
)

Connection = psycopg.Connection[TupleRow]


def shipped_migrations() -> list[str]:
    return sorted(path.name for path in migrations_dir().glob("*.sql"))


@pytest.fixture
def migrated_url(empty_database_url: str) -> str:
    apply_migrations(empty_database_url)
    return empty_database_url


@pytest.fixture
def conn(migrated_url: str) -> Iterator[Connection]:
    with psycopg.connect(migrated_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def listener(migrated_url: str) -> Iterator[Connection]:
    with psycopg.connect(migrated_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def sql_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "sql"
    shutil.copytree(migrations_dir(), directory)
    return directory


def one(conn: Connection, query: str, params: tuple[object, ...] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def table_exists(conn: Connection, qualified_name: str) -> bool:
    return one(conn, "select to_regclass(%s) is not null", (qualified_name,)) is True


def recorded(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select name, checksum from gateway.schema_migrations").fetchall()
    return dict(rows)


def create_key(conn: Connection, key_id: str = "AbCdEf012345") -> str:
    tenant_id = one(conn, "insert into gateway.tenants (name) values ('acme') returning id")
    conn.execute(
        "insert into gateway.api_keys (id, tenant_id, name, secret_hash)"
        " values (%s, %s, 'ci', 'h')",
        (key_id, tenant_id),
    )
    return key_id


def notifications(listener: Connection, count: int) -> list[tuple[str, str]]:
    received = [
        (note.channel, note.payload) for note in listener.notifies(timeout=5, stop_after=count)
    ]
    assert len(received) == count, f"expected {count} notifications, got {received}"
    return received


# The runner


def test_fresh_database_applies_every_file_and_records_its_checksum(
    empty_database_url: str,
) -> None:
    applied = apply_migrations(empty_database_url)

    assert applied == shipped_migrations()
    assert applied[0] == "0001_init.sql"
    expected = {
        name: hashlib.sha256((migrations_dir() / name).read_bytes()).hexdigest() for name in applied
    }
    assert recorded(empty_database_url) == expected
    with psycopg.connect(empty_database_url) as conn:
        for table in ("tenants", "api_keys", "usage_ledger", "audit_log", "prompt_log"):
            assert table_exists(conn, f"gateway.{table}")
        assert table_exists(conn, "gateway.backends")
        assert table_exists(conn, "gateway.revocations")


def test_second_run_applies_nothing(empty_database_url: str) -> None:
    first = apply_migrations(empty_database_url)
    before = recorded(empty_database_url)

    assert apply_migrations(empty_database_url) == []
    assert first
    assert recorded(empty_database_url) == before


def test_replicas_migrating_at_once_apply_each_file_once(empty_database_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            results.append(apply_migrations(empty_database_url))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(results, key=len) == [[], [], [], shipped_migrations()]


def test_edited_applied_file_is_refused(empty_database_url: str, sql_copy: Path) -> None:
    apply_migrations(empty_database_url, sql_copy)
    init = sql_copy / "0001_init.sql"
    init.write_text(init.read_text() + "\ncreate table gateway.sneaky (id int);\n")
    (sql_copy / "9001_next.sql").write_text("create table gateway.next_thing (id int);\n")

    with pytest.raises(MigrationError, match=r"0001_init\.sql was edited"):
        apply_migrations(empty_database_url, sql_copy)

    # Refused before applying anything, including the new file that comes after it.
    with psycopg.connect(empty_database_url) as conn:
        assert not table_exists(conn, "gateway.next_thing")
    assert list(recorded(empty_database_url)) == shipped_migrations()


def test_deleted_applied_file_is_refused(empty_database_url: str, sql_copy: Path) -> None:
    (sql_copy / "9001_next.sql").write_text("create table gateway.next_thing (id int);\n")
    apply_migrations(empty_database_url, sql_copy)
    (sql_copy / "9001_next.sql").unlink()

    with pytest.raises(MigrationError, match=r"9001_next\.sql .*missing"):
        apply_migrations(empty_database_url, sql_copy)


def test_broken_migration_rolls_back_and_names_the_file(
    empty_database_url: str, sql_copy: Path
) -> None:
    broken = sql_copy / "9002_broken.sql"
    broken.write_text(
        "create table gateway.half_done (id int);\n"
        "insert into gateway.half_done values (1);\n"
        "select no_such_function();\n"
    )

    with pytest.raises(MigrationError) as caught:
        apply_migrations(empty_database_url, sql_copy)

    message = str(caught.value)
    assert "9002_broken.sql" in message
    assert "no_such_function() does not exist" in message
    assert "line 3" in message
    with psycopg.connect(empty_database_url) as conn:
        assert not table_exists(conn, "gateway.half_done")
        # Earlier files are committed on their own; only the broken one is rolled back.
        assert table_exists(conn, "gateway.tenants")
    assert list(recorded(empty_database_url)) == shipped_migrations()

    broken.write_text("create table gateway.half_done (id int);\n")
    assert apply_migrations(empty_database_url, sql_copy) == ["9002_broken.sql"]


@pytest.mark.parametrize(
    ("bad_name", "reason"),
    [
        ("2_short_number.sql", "not a migration file name"),
        ("0002-dash.sql", "not a migration file name"),
        ("0002_Upper.sql", "not a migration file name"),
        ("0002_missing_extension", "not a migration file name"),
        ("0001_same_number.sql", "share the number 0001"),
    ],
)
def test_malformed_or_duplicate_file_names_are_refused(
    empty_database_url: str, sql_copy: Path, bad_name: str, reason: str
) -> None:
    (sql_copy / bad_name).write_text("select 1;\n")

    with pytest.raises(MigrationError, match=reason) as caught:
        apply_migrations(empty_database_url, sql_copy)

    assert bad_name in str(caught.value)
    with psycopg.connect(empty_database_url) as conn:
        assert not table_exists(conn, "gateway.tenants")


def test_status_reports_pending_applied_and_edited(empty_database_url: str, sql_copy: Path) -> None:
    pending = migration_status(empty_database_url, sql_copy)
    assert [(s.name, s.applied_at, s.checksum_ok) for s in pending] == [
        (name, None, True) for name in shipped_migrations()
    ]

    before = datetime.now(UTC)
    apply_migrations(empty_database_url, sql_copy)
    applied = migration_status(empty_database_url, sql_copy)
    assert [s.version for s in applied] == list(range(1, len(shipped_migrations()) + 1))
    assert all(s.applied_at is not None and s.applied_at >= before for s in applied)
    assert all(s.checksum_ok for s in applied)

    (sql_copy / "0001_init.sql").write_text("-- rewritten\n")
    edited = migration_status(empty_database_url, sql_copy)
    assert edited[0].name == "0001_init.sql"
    assert edited[0].checksum_ok is False


def test_unreachable_database_is_a_clean_error_without_the_password() -> None:
    url = "postgresql://gateway:hunter2-s3cret@127.0.0.1:1/gatewaydb"

    for attempt in (apply_migrations, migration_status):
        with pytest.raises(MigrationError) as caught:
            attempt(url)
        message = str(caught.value)
        assert message.startswith("cannot reach the database at 127.0.0.1:1/gatewaydb: ")
        assert "hunter2-s3cret" not in message
        assert caught.value.__cause__ is None


def test_unparseable_url_is_not_echoed() -> None:
    with pytest.raises(MigrationError) as caught:
        apply_migrations("postgresql://gateway:hunter2-s3cret@[::1/gatewaydb")

    assert "hunter2-s3cret" not in str(caught.value)


# The schema's triggers and functions


def test_revocation_marks_the_key_and_notifies_its_id(
    conn: Connection, listener: Connection
) -> None:
    key_id = create_key(conn)
    listener.execute("listen gateway_revocations")

    first = one(
        conn,
        "insert into gateway.revocations (key_id, reason) values (%s, 'leaked')"
        " returning revoked_at",
        (key_id,),
    )

    assert notifications(listener, 1) == [("gateway_revocations", key_id)]
    assert one(conn, "select revoked_at from gateway.api_keys where id = %s", (key_id,)) == first

    # Revoking again notifies again but keeps the first revocation time.
    conn.execute(
        "insert into gateway.revocations (key_id, revoked_at)"
        " values (%s, now() + interval '1 day')",
        (key_id,),
    )
    assert notifications(listener, 1) == [("gateway_revocations", key_id)]
    assert one(conn, "select revoked_at from gateway.api_keys where id = %s", (key_id,)) == first


def test_backend_changes_notify_their_names(conn: Connection, listener: Connection) -> None:
    listener.execute("listen gateway_backends")

    conn.execute("insert into gateway.backends (name, url) values ('gpu-1', 'http://gpu1:11434')")
    conn.execute("update gateway.backends set priority = 5 where name = 'gpu-1'")
    conn.execute("update gateway.backends set name = 'gpu-2' where name = 'gpu-1'")
    conn.execute("delete from gateway.backends where name = 'gpu-2'")

    assert notifications(listener, 5) == [
        ("gateway_backends", "gpu-1"),
        ("gateway_backends", "gpu-1"),
        ("gateway_backends", "gpu-1"),
        ("gateway_backends", "gpu-2"),
        ("gateway_backends", "gpu-2"),
    ]


def test_backend_update_refreshes_updated_at(conn: Connection) -> None:
    conn.execute("insert into gateway.backends (name, url) values ('gpu-1', 'http://gpu1:11434')")
    with conn.transaction():
        conn.execute("update gateway.backends set updated_at = '2000-01-01' where name = 'gpu-1'")
    conn.execute("update gateway.backends set priority = 1 where name = 'gpu-1'")

    updated_at = one(conn, "select updated_at from gateway.backends where name = 'gpu-1'")
    assert isinstance(updated_at, datetime)
    assert updated_at.year > 2000


def audit_partitions(conn: Connection) -> list[str]:
    rows = conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = 'gateway.audit_log'::regclass order by 1"
    ).fetchall()
    return [row[0] for row in rows]


def month_partition(when: datetime) -> str:
    return f"audit_log_y{when.year:04d}m{when.month:02d}"


def test_audit_partitions_cover_this_month_and_are_idempotent(conn: Connection) -> None:
    now = datetime.now(UTC)
    partitions = audit_partitions(conn)
    assert "audit_log_default" in partitions
    assert month_partition(now) in partitions
    assert len(partitions) == 4  # default + this month + the next two

    this_month = now.date().replace(day=1)
    assert one(conn, "select gateway.ensure_audit_partitions(%s, 3)", (this_month,)) == 0
    assert audit_partitions(conn) == partitions
    assert one(conn, "select gateway.ensure_audit_partitions(%s, 5)", (now.date(),)) == 2
    assert len(audit_partitions(conn)) == 6

    landed = one(
        conn,
        "insert into gateway.audit_log (ts, request_id, method, route, status)"
        " values (now(), 'req-1', 'POST', '/v1/chat/completions', 200)"
        " returning tableoid::regclass::text",
    )
    assert landed == f"gateway.{month_partition(now)}"


def test_new_partition_adopts_rows_that_landed_in_default(conn: Connection) -> None:
    landed = one(
        conn,
        "insert into gateway.audit_log (ts, request_id, method, route, status)"
        " values ('2100-01-15 12:00Z', 'req-late', 'GET', '/api/tags', 200)"
        " returning tableoid::regclass::text",
    )
    assert landed == "gateway.audit_log_default"

    assert one(conn, "select gateway.ensure_audit_partitions('2100-01-20', 1)") == 1

    where = one(
        conn, "select tableoid::regclass::text from gateway.audit_log where request_id = 'req-late'"
    )
    assert where == "gateway.audit_log_y2100m01"


def test_partition_bounds_are_utc_months_whatever_the_session_time_zone(
    conn: Connection,
) -> None:
    conn.execute("set time zone 'Pacific/Auckland'")
    conn.execute("select gateway.ensure_audit_partitions('2101-03-01', 1)")

    # 2101-02-28 23:30 UTC is already March in Auckland, but it belongs to February (UTC).
    landed = one(
        conn,
        "insert into gateway.audit_log (ts, request_id, method, route, status)"
        " values ('2101-03-01 00:30Z', 'req-utc', 'GET', '/api/tags', 200)"
        " returning tableoid::regclass::text",
    )
    assert landed == "gateway.audit_log_y2101m03"
    early = one(
        conn,
        "insert into gateway.audit_log (ts, request_id, method, route, status)"
        " values ('2101-02-28 23:30Z', 'req-feb', 'GET', '/api/tags', 200)"
        " returning tableoid::regclass::text",
    )
    assert early == "gateway.audit_log_default"


@pytest.mark.parametrize(
    "statement",
    [
        "insert into gateway.tenants (name) values ('Acme Corp')",
        "insert into gateway.tenants (name) values ('-leading-dash')",
        "insert into gateway.tenants (name) values ('')",
        "insert into gateway.tenants (name) values (repeat('a', 64))",
        "insert into gateway.tenants (name, rpm) values ('acme', -1)",
        "insert into gateway.tenants (name, budget_total_tokens) values ('acme', -5)",
        "insert into gateway.tenants (name, audit_retention_days) values ('acme', 0)",
        "insert into gateway.api_keys (id, tenant_id, name, secret_hash)"
        " select 'short', id, 'ci', 'h' from gateway.tenants",
        "insert into gateway.api_keys (id, tenant_id, name, secret_hash)"
        " select 'AbCdEf01234_', id, 'ci', 'h' from gateway.tenants",
        "insert into gateway.api_keys (id, tenant_id, name, secret_hash)"
        " select 'AbCdEf012345', id, 'CI Key', 'h' from gateway.tenants",
        "insert into gateway.backends (name, url) values ('GPU 1', 'http://x')",
        "insert into gateway.backends (name, url, kind) values ('gpu-1', 'http://x', 'grpc')",
        "insert into gateway.backends (name, url, max_parallel) values ('gpu-1', 'http://x', 0)",
        "insert into gateway.usage_ledger (tenant_id, key_id, period, period_start)"
        " values (gen_random_uuid(), 'k', 'week', current_date)",
        "insert into gateway.usage_ledger (tenant_id, key_id, period, period_start)"
        " values (gen_random_uuid(), 'k', 'total', current_date)",
        "insert into gateway.usage_ledger (tenant_id, key_id, period, period_start)"
        " values (gen_random_uuid(), 'k', 'month', '2025-01-02')",
    ],
)
def test_check_constraints_reject_bad_values(conn: Connection, statement: str) -> None:
    conn.execute("insert into gateway.tenants (name) values ('existing-tenant')")

    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(statement)


def test_good_values_pass_the_same_checks(conn: Connection) -> None:
    key_id = create_key(conn)
    conn.execute(
        "insert into gateway.tenants (name, rpm, budget_total_tokens) values ('a.b_c-9', 0, 0)"
    )
    conn.execute(
        "insert into gateway.backends (name, url, kind) values ('gpu.1', 'http://x', 'openai')"
    )
    conn.execute(
        "insert into gateway.usage_ledger (tenant_id, key_id, period, period_start)"
        " select tenant_id, id, 'total', '1970-01-01' from gateway.api_keys where id = %s",
        (key_id,),
    )
    assert one(conn, "select count(*) from gateway.usage_ledger") == 1
