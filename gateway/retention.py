"""Retention of the audit and prompt logs: what may go (pure, `plan`) and the `Sweeper` that
removes it on one replica at a time, off the request path."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Literal, TypeVar

import anyio
import msgspec

from gateway.errors import ServiceUnavailable
from gateway.store import pg_retention
from gateway.store.pg import Busy, Database
from gateway.store.pg_retention import AuditPartition, RetentionSession

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PARTITION = "audit_log_default"
# The current month and the next two, as the migration does: a sweeper that is down for a
# while still leaves writes landing in real partitions.
MONTHS_AHEAD = 3

Outcome = Literal["swept", "incomplete", "skipped", "unavailable"]


class Deletion(msgspec.Struct, frozen=True):
    """Rows to delete from one partition: those before `before` of `tenant_ids`, or, when
    `tenant_ids` is None, of every tenant without a retention of its own and of no tenant."""

    partition: str
    before: datetime
    tenant_ids: tuple[str, ...] | None


class Plan(msgspec.Struct, frozen=True):
    drop: tuple[str, ...]
    deletions: tuple[Deletion, ...]
    own_retention: tuple[str, ...]  # the tenants `tenant_ids=None` leaves out


def plan(
    partitions: Sequence[AuditPartition],
    *,
    now: datetime,
    default_days: int,
    tenant_days: Mapping[str, int],
) -> Plan:
    """Which partitions can go whole and which rows must go from the partitions that stay.

    A monthly partition goes once all of it is past the longest retention in effect, so the
    longest retention is kept to the month; shorter ones are kept to the row by deletes. The
    default partition (and any without an upper bound) is never dropped, so every retention,
    the longest too, deletes its expired rows there.
    """
    groups: dict[int, list[str]] = {}
    for tenant_id, days in sorted(tenant_days.items()):
        groups.setdefault(days, []).append(tenant_id)
    cutoffs: list[tuple[int, tuple[str, ...] | None]] = [
        (days, tuple(ids)) for days, ids in sorted(groups.items())
    ]
    cutoffs.append((default_days, None))
    longest = max(days for days, _ in cutoffs)
    horizon = now - timedelta(days=longest)

    drop: list[str] = []
    deletions: list[Deletion] = []
    for partition in partitions:
        droppable = partition.name != DEFAULT_PARTITION and partition.upper is not None
        if droppable and partition.upper is not None and partition.upper <= horizon:
            drop.append(partition.name)
            continue
        for days, tenant_ids in cutoffs:
            before = now - timedelta(days=days)
            if droppable and days == longest:
                continue  # the partition drop will take these rows
            if partition.lower is not None and partition.lower >= before:
                continue  # nothing in it is that old
            deletions.append(Deletion(partition.name, before, tenant_ids))
    return Plan(tuple(drop), tuple(deletions), tuple(sorted(tenant_days)))


def first_of_month(now: datetime) -> date:
    return now.astimezone(UTC).date().replace(day=1)


def partition_names(now: datetime, months: int = MONTHS_AHEAD) -> tuple[str, ...]:
    """The partitions `ensure_audit_partitions` keeps for `now`'s month and the ones after."""
    first = first_of_month(now)
    names = []
    for i in range(months):
        year, month = divmod(first.month - 1 + i, 12)
        names.append(f"audit_log_y{first.year + year:04d}m{month + 1:02d}")
    return tuple(names)


class SweepReport(msgspec.Struct, frozen=True, kw_only=True):
    """One sweep: `swept` all of it; `incomplete` when a lock wait ran out (next round retries);
    `skipped` while another replica sweeps; `unavailable` when Postgres failed. A dry run
    counts what a sweep would do."""

    outcome: Outcome
    dry_run: bool = False
    partitions_created: tuple[str, ...] = ()
    partitions_dropped: tuple[str, ...] = ()
    audit_rows_deleted: int = 0
    prompt_rows_deleted: int = 0


class _Tally:
    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.busy = False
        self.created: tuple[str, ...] = ()
        self.dropped: list[str] = []
        self.audit_rows = 0
        self.prompt_rows = 0

    def report(self, outcome: Outcome) -> SweepReport:
        return SweepReport(
            outcome=outcome,
            dry_run=self.dry_run,
            partitions_created=self.created,
            partitions_dropped=tuple(self.dropped),
            audit_rows_deleted=self.audit_rows,
            prompt_rows_deleted=self.prompt_rows,
        )


def utc_now() -> datetime:
    return datetime.now(UTC)


class Sweeper:
    """Drops expired audit partitions and deletes expired audit and prompt-log rows, every
    `interval_s`, under an advisory lock so replicas take turns instead of colliding."""

    def __init__(
        self,
        database: Database,
        *,
        default_retention_days: int,
        interval_s: float,
        clock: Callable[[], datetime] = utc_now,
        lock_timeout_s: float = 0.5,
        batch_size: int = 5000,
    ) -> None:
        if default_retention_days <= 0 or batch_size <= 0:
            raise ValueError("retention days and batch size must be positive")
        self._database = database
        self._default_days = default_retention_days
        self._interval_s = interval_s
        self._clock = clock
        self._lock_timeout_s = lock_timeout_s
        self._batch_size = batch_size

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep, then sleep `interval_s`, until cancelled."""
        task_status.started()
        while True:
            try:
                await self.sweep_once()
            except Exception:
                # A retention bug must not take the gateway down with it; the next round retries.
                log.exception("retention sweep failed")
            await anyio.sleep(self._interval_s)

    async def sweep_once(self, *, dry_run: bool = False) -> SweepReport:
        """One sweep now; Postgres failing is reported (and logged), not raised."""
        now = self._clock()
        tally = _Tally(dry_run)
        try:
            async with pg_retention.retention_session(
                self._database, exclusive=not dry_run, lock_timeout_s=self._lock_timeout_s
            ) as session:
                if session is None:
                    log.info("retention: another replica is sweeping, skipping this round")
                    return tally.report("skipped")
                await self._sweep(session, now, tally)
        except ServiceUnavailable:
            log.warning("retention: Postgres unavailable, trying again next round")
            return tally.report("unavailable")
        report = tally.report("incomplete" if tally.busy else "swept")
        if report.partitions_dropped or report.audit_rows_deleted or report.prompt_rows_deleted:
            log.info(
                "retention: dropped %d partitions, deleted %d audit and %d prompt-log rows%s",
                len(report.partitions_dropped),
                report.audit_rows_deleted,
                report.prompt_rows_deleted,
                " (dry run)" if dry_run else "",
            )
        return report

    async def _sweep(self, session: RetentionSession, now: datetime, tally: _Tally) -> None:
        existing = await session.audit_partitions()
        names = {partition.name for partition in existing}
        if tally.dry_run:
            tally.created = tuple(name for name in partition_names(now) if name not in names)
        else:
            step = session.ensure_audit_partitions(first_of_month(now), MONTHS_AHEAD)
            await self._unless_busy(tally, "creating partitions", step)
            existing = await session.audit_partitions()
            tally.created = tuple(p.name for p in existing if p.name not in names)

        retentions = await session.audit_retentions()
        todo = plan(
            existing,
            now=now,
            default_days=self._default_days,
            tenant_days={r.tenant_id: r.days for r in retentions},
        )
        for name in todo.drop:
            if tally.busy:
                break  # the writer that held audit_log a moment ago likely still does
            if tally.dry_run or await self._unless_busy(
                tally, "dropping a partition", _true_when_done(session.drop_audit_partition(name))
            ):
                tally.dropped.append(name)
        for deletion in todo.deletions:
            tally.audit_rows += await self._audit_rows(session, deletion, todo.own_retention, tally)
        if tally.dry_run:
            tally.prompt_rows = await session.count_expired_prompts(now)
        else:
            deleted = await self._batches(
                tally,
                "deleting prompt-log rows",
                lambda: session.delete_expired_prompts(now, self._batch_size),
            )
            tally.prompt_rows = deleted

    async def _audit_rows(
        self, session: RetentionSession, deletion: Deletion, own: tuple[str, ...], tally: _Tally
    ) -> int:
        if tally.dry_run:
            return await session.count_audit_rows(
                deletion.partition, before=deletion.before, tenant_ids=deletion.tenant_ids, own=own
            )
        return await self._batches(
            tally,
            "deleting audit rows",
            lambda: session.delete_audit_rows(
                deletion.partition,
                before=deletion.before,
                tenant_ids=deletion.tenant_ids,
                own=own,
                limit=self._batch_size,
            ),
        )

    async def _batches(self, tally: _Tally, what: str, batch: Callable[[], Awaitable[int]]) -> int:
        """Run `batch` until it deletes less than a full batch; what it deleted, in all."""
        total = 0
        while True:
            deleted = await self._unless_busy(tally, what, batch())
            total += deleted or 0
            if deleted is None or deleted < self._batch_size:
                return total

    async def _unless_busy(self, tally: _Tally, what: str, step: Awaitable[T]) -> T | None:
        """`step`'s result, or None when it waited too long for a lock (the next round retries)."""
        try:
            return await step
        except Busy:
            log.warning("retention: %s waited too long for a lock, leaving it for next round", what)
            tally.busy = True
            return None


async def _true_when_done(step: Awaitable[None]) -> bool:
    await step
    return True
