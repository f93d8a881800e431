"""`gateway retention sweep` as a subprocess, on the real clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from gateway.devservices import free_port
from tests.integration.cli_support import as_json, gateway, ok
from tests.integration.quota_support import run_sql

TENANT = "00000000-0000-0000-0000-0000000000aa"


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "AUDIT_LOG_DEFAULT_RETENTION_DAYS": "30"}


def seed(url: str) -> str:
    """An audit partition of three years ago with a row, rows 40 days and 1 day old, and an
    expired and a live prompt-log row; the old partition's name."""
    now = datetime.now(UTC)
    old = (now - timedelta(days=3 * 366)).date().replace(day=1)
    run_sql(url, "SELECT gateway.ensure_audit_partitions(%s, 1)", old)
    in_old = datetime(old.year, old.month, 2, tzinfo=UTC)
    audit = [("ancient", in_old), ("old", now - timedelta(days=40))]
    audit.append(("fresh", now - timedelta(days=1)))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO gateway.audit_log (ts, request_id, tenant_id, method, route, status) "
            "VALUES (%s, %s, %s, 'POST', '/api/chat', 200)",
            [(ts, rid, TENANT) for rid, ts in audit],
        )
        cur.executemany(
            "INSERT INTO gateway.prompt_log (request_id, tenant_id, key_id, request, expires_at) "
            "VALUES (%s, %s, 'keyAAAAAAAAA', '{}', %s)",
            [
                ("expired", TENANT, now - timedelta(hours=1)),
                ("live", TENANT, now + timedelta(hours=1)),
            ],
        )
    return f"audit_log_y{old:%Y}m{old:%m}"


def state(url: str) -> tuple[set[str], set[str], set[str]]:
    partitions = run_sql(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'gateway.audit_log'::regclass",
    )
    audit = run_sql(url, "SELECT request_id FROM gateway.audit_log")
    prompts = run_sql(url, "SELECT request_id FROM gateway.prompt_log")
    return {p for (p,) in partitions}, {r for (r,) in audit}, {r for (r,) in prompts}


def test_a_dry_run_counts_and_a_sweep_removes(env: dict[str, str], database_url: str) -> None:
    old_partition = seed(database_url)
    before = state(database_url)
    preview = as_json(env, "retention", "sweep", "--dry-run")
    assert preview["outcome"] == "swept"
    assert preview["dry_run"] is True
    assert preview["partitions_dropped"] == [old_partition]
    assert (preview["audit_rows_deleted"], preview["prompt_rows_deleted"]) == (1, 1)
    assert state(database_url) == before

    out = ok(env, "retention", "sweep")
    assert f"audit partitions dropped: {old_partition}\n" in out
    assert "audit rows deleted: 1\n" in out
    assert "prompt-log rows deleted: 1\n" in out
    partitions, audit, prompts = state(database_url)
    assert partitions == before[0] - {old_partition}
    assert (audit, prompts) == ({"fresh"}, {"live"})
    assert "dropped: none" in ok(env, "retention", "sweep")


def test_another_sweep_running_is_reported(env: dict[str, str], database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('gateway.retention_sweep'))")
        result = gateway(env, "retention", "sweep")
    assert result.returncode == 1
    assert result.stderr.startswith("error: another sweep is running")


def test_postgres_unreachable_is_one_line_without_the_password() -> None:
    url = f"postgresql://gateway:s3cret-password@127.0.0.1:{free_port()}/gateway"
    result = gateway({"DATABASE_URL": url}, "retention", "sweep", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: cannot reach Postgres at DATABASE_URL; check that it is running and the URL is"
        " right, then run `gateway migrate`"
    ]
    assert "s3cret" not in result.stderr
