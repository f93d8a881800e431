"""Retention sweeps on a real database with a frozen clock: exactly the expired goes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import psycopg
import pytest

from gateway.devservices import free_port
from gateway.retention import Sweeper, SweepReport
from gateway.store import pg_retention
from gateway.store.pg import Database
from tests.integration.cli_support import make_tenant
from tests.integration.quota_support import run_sql

pytestmark = pytest.mark.anyio

NOW = datetime(2031, 3, 10, 12, tzinfo=UTC)
DEFAULT_DAYS = 90  # the configured default: 2030-12-10 12:00
SECOND = timedelta(seconds=1)
COPY = "COPY gateway.audit_log (ts, request_id, method, route, status) FROM STDIN"


def at(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


class World(msgspec.Struct):
    """What `seed` put in: audit rows and prompt rows by request id, with whether they stay."""

    audit: dict[str, bool]
    prompts: dict[str, bool]
    partitions: list[str]  # before the sweep

    def audit_rows_deleted(self) -> int:
        # Rows of January 2030 go with their partition, not one by one.
        return sum(1 for rid, kept in self.audit.items() if not kept and "2030-01" not in rid)


def seed(url: str) -> World:
    short = make_tenant(url, "short").id  # 30 days: 2031-02-08 12:00
    long = make_tenant(url, "long").id  # 400 days: 2030-02-03 12:00, the longest
    plain = make_tenant(url, "plain").id  # the default
    run_sql(url, "UPDATE gateway.tenants SET audit_retention_days = 30 WHERE id = %s", short)
    run_sql(url, "UPDATE gateway.tenants SET audit_retention_days = 400 WHERE id = %s", long)
    gone = str(uuid.uuid4())  # a deleted tenant: the default applies
    run_sql(url, "SELECT gateway.ensure_audit_partitions('2030-01-01', 15)")  # .. 2031-03
    cutoff_30, cutoff_90 = at(2031, 2, 8, 12), at(2030, 12, 10, 12)
    rows: list[tuple[str | None, datetime, bool]] = [
        (long, at(2030, 1, 15), False),  # its whole month is past 400 days: dropped
        (short, at(2030, 1, 20), False),
        (long, at(2030, 2, 2), True),  # past 400 days, but February 2030 is not wholly
        (long, at(2030, 2, 10), True),
        (long, at(2029, 6, 1), False),  # no partition: in the default one, deleted by row
        (long, at(2031, 9, 1), True),  # in the default partition too, and fresh
        (short, at(2030, 6, 1), False),
        (short, at(2029, 6, 1), False),
        (short, at(2031, 9, 1), True),
        *((short, cutoff_30 - k * SECOND, False) for k in range(1, 6)),  # 5: several batches
        (short, cutoff_30, True),  # exactly 30 days old is not older than 30 days
        (short, cutoff_30 + SECOND, True),
        (plain, cutoff_90 - SECOND, False),
        (plain, cutoff_90, True),
        (plain, cutoff_90 + SECOND, True),
        (None, cutoff_90 - SECOND, False),  # no tenant (refused before auth): the default
        (None, cutoff_90 + SECOND, True),
        (gone, cutoff_90 - SECOND, False),
        (gone, cutoff_90 + SECOND, True),
    ]
    audit = {f"a{i}-{ts:%Y-%m}": kept for i, (_, ts, kept) in enumerate(rows)}
    prompts = {
        **{f"p-expired-{k}": False for k in range(5)},
        "p-long-expired": False,
        "p-expires-now": True,
        "p-fresh": True,
    }
    expires = [
        *(NOW - k * SECOND for k in range(1, 6)),
        NOW - timedelta(days=100),
        NOW,
        NOW + SECOND,
    ]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO gateway.audit_log (ts, request_id, tenant_id, method, route, status) "
            "VALUES (%s, %s, %s, 'POST', '/api/chat', 200)",
            [(ts, rid, tenant) for rid, (tenant, ts, _) in zip(audit, rows, strict=True)],
        )
        cur.executemany(
            "INSERT INTO gateway.prompt_log (request_id, tenant_id, key_id, request, expires_at) "
            "VALUES (%s, %s, 'keyAAAAAAAAA', '{}', %s)",
            [(rid, short, exp) for rid, exp in zip(prompts, expires, strict=True)],
        )
    return World(audit, prompts, partitions(url))


def partitions(url: str) -> list[str]:
    rows = run_sql(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'gateway.audit_log'::regclass ORDER BY 1",
    )
    return [name for (name,) in rows]


def remaining(url: str, table: str) -> set[str]:
    return {rid for (rid,) in run_sql(url, f"SELECT request_id FROM gateway.{table}")}


def expected_drops(world: World) -> list[str]:
    # January 2030 and whatever the migration made for the real months, all before 2030-02.
    return [p for p in world.partitions if "_y" in p and p < "audit_log_y2030m02"]


def assert_swept(url: str, world: World) -> None:
    assert remaining(url, "audit_log") == {rid for rid, kept in world.audit.items() if kept}
    assert remaining(url, "prompt_log") == {rid for rid, kept in world.prompts.items() if kept}
    kept = [p for p in world.partitions if p not in expected_drops(world)]
    assert partitions(url) == sorted([*kept, "audit_log_y2031m04", "audit_log_y2031m05"])


def sweeper(database: Database, **options: Any) -> Sweeper:
    options.setdefault("clock", lambda: NOW)
    options.setdefault("batch_size", 2)
    return Sweeper(database, default_retention_days=DEFAULT_DAYS, interval_s=3600, **options)


async def test_a_sweep_removes_exactly_what_expired_and_a_dry_run_says_so_first(
    database_url: str,
) -> None:
    world = seed(database_url)
    async with Database.open(database_url, pool_size=1, timeout_s=5) as database:
        preview = await sweeper(database).sweep_once(dry_run=True)
        assert remaining(database_url, "audit_log") == set(world.audit)
        assert partitions(database_url) == world.partitions
        report = await sweeper(database).sweep_once()
        again = await sweeper(database).sweep_once()
    assert report == SweepReport(
        outcome="swept",
        partitions_created=("audit_log_y2031m04", "audit_log_y2031m05"),
        partitions_dropped=tuple(expected_drops(world)),
        audit_rows_deleted=world.audit_rows_deleted(),
        prompt_rows_deleted=6,
    )
    assert "audit_log_y2030m01" in report.partitions_dropped
    assert preview == msgspec.structs.replace(report, dry_run=True)
    assert again == SweepReport(outcome="swept")
    assert_swept(database_url, world)


async def test_replicas_sweeping_at_once_while_audit_rows_are_copied_in(database_url: str) -> None:
    world = seed(database_url)
    reports: list[SweepReport] = []
    copied: list[str] = []

    async def replica() -> None:
        async with Database.open(database_url, pool_size=1, timeout_s=5) as database:
            reports.append(await sweeper(database).sweep_once())

    async def writer(done: anyio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            while not done.is_set():
                rid = f"w{len(copied)}"
                async with (
                    conn.cursor() as cur,
                    cur.copy(
                        "COPY gateway.audit_log (ts, request_id, method, route, status) FROM STDIN"
                    ) as copy,
                ):
                    await copy.write_row((NOW - timedelta(days=1), rid, "POST", "/api/chat", 200))
                copied.append(rid)

    done = anyio.Event()
    async with anyio.create_task_group() as outer:
        outer.start_soon(writer, done)
        async with anyio.create_task_group() as replicas:
            for _ in range(4):
                replicas.start_soon(replica)
        done.set()

    outcomes = sorted(report.outcome for report in reports)
    assert set(outcomes) <= {"swept", "skipped"}, outcomes
    assert "swept" in outcomes
    assert sorted(p for r in reports for p in r.partitions_dropped) == expected_drops(world)
    assert sum(r.audit_rows_deleted for r in reports) == world.audit_rows_deleted()
    assert sum(r.prompt_rows_deleted for r in reports) == 6
    assert copied
    world.audit.update(dict.fromkeys(copied, True))
    assert_swept(database_url, world)


async def test_a_replica_skips_while_another_sweeps(database_url: str) -> None:
    world = seed(database_url)
    async with Database.open(database_url, pool_size=1, timeout_s=5) as database:
        async with pg_retention.retention_session(
            database, exclusive=True, lock_timeout_s=1
        ) as other:
            assert other is not None  # this one holds the sweep's lock, as a sweeping replica
            assert await sweeper(database).sweep_once() == SweepReport(outcome="skipped")
        assert partitions(database_url) == world.partitions
        assert (await sweeper(database).sweep_once()).outcome == "swept"
    assert_swept(database_url, world)


async def test_a_sweep_waits_only_briefly_behind_a_writer_and_finishes_next_round(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    world = seed(database_url)
    async with Database.open(database_url, pool_size=1, timeout_s=5) as database:
        sweep = sweeper(database, lock_timeout_s=0.2)
        # A COPY mid-transaction holds audit_log against partition DDL until it commits.
        with (
            psycopg.connect(database_url) as writer,
            writer.cursor() as cur,
            cur.copy(COPY) as copy,
        ):
            copy.write_row((NOW, "late", "POST", "/api/chat", 200))
            blocked = await sweep.sweep_once()
        assert blocked.outcome == "incomplete"
        assert (blocked.partitions_created, blocked.partitions_dropped) == ((), ())
        # Row deletes do not wait on writers: they were done all the same.
        assert blocked.audit_rows_deleted == world.audit_rows_deleted()
        assert blocked.prompt_rows_deleted == 6
        assert "waited too long for a lock" in caplog.text
        assert partitions(database_url) == world.partitions
        finished = await sweep.sweep_once()
    assert finished.outcome == "swept"
    assert finished.partitions_dropped == tuple(expected_drops(world))
    world.audit["late"] = True
    assert_swept(database_url, world)


async def test_the_loop_sweeps_as_soon_as_it_starts(database_url: str) -> None:
    world = seed(database_url)
    async with (
        Database.open(database_url, pool_size=1, timeout_s=5) as database,
        anyio.create_task_group() as tg,
    ):
        await tg.start(sweeper(database).run)
        with anyio.fail_after(20):
            # The prompt log is the sweep's last step.
            while remaining(database_url, "prompt_log") != {"p-expires-now", "p-fresh"}:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    assert_swept(database_url, world)


async def test_postgres_unreachable_is_logged_and_the_loop_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://gateway:s3cret-password@127.0.0.1:{free_port()}/gateway"
    rounds: list[datetime] = []

    def clock() -> datetime:
        rounds.append(NOW)
        return NOW

    async with Database.open(url, pool_size=1, timeout_s=1) as database:
        sweep = Sweeper(database, default_retention_days=30, interval_s=0.01, clock=clock)
        assert await sweep.sweep_once() == SweepReport(outcome="unavailable")
        async with anyio.create_task_group() as tg:
            await tg.start(sweep.run)
            with anyio.fail_after(20):
                while len(rounds) < 4:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert "retention: Postgres unavailable" in caplog.text
    assert "s3cret" not in caplog.text
