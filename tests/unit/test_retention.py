"""Retention planning: what a sweep may drop or delete, checked against every row it could meet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.retention import DEFAULT_PARTITION, Plan, first_of_month, partition_names, plan
from gateway.store.pg_retention import AuditPartition

FIRST_MONTH = datetime(2020, 1, 1, tzinfo=UTC)
MONTHS = 96  # 2020-01 .. 2027-12
TENANTS = ("a", "b", "c", "d")  # may have a retention of their own
UTC_MINUS_5 = timezone(timedelta(hours=-5))
ROW_TENANTS = (*TENANTS, "gone", None)  # "gone": a deleted tenant; None: no tenant at all

moments = st.datetimes(
    min_value=datetime(2018, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


def month(index: int) -> datetime:
    year, month0 = divmod(index, 12)
    return FIRST_MONTH.replace(year=FIRST_MONTH.year + year, month=month0 + 1)


def monthly(index: int) -> AuditPartition:
    start = month(index)
    return AuditPartition(f"audit_log_y{start:%Y}m{start:%m}", start, month(index + 1))


@st.composite
def partition_sets(draw: st.DrawFn) -> list[AuditPartition]:
    """The default partition, some months, and maybe open-ended ones below and above them."""
    indices = sorted(draw(st.sets(st.integers(0, MONTHS - 1), max_size=30)))
    partitions = [AuditPartition(DEFAULT_PARTITION, None, None), *map(monthly, indices)]
    low = month(indices[0]) if indices else month(0)
    high = month(indices[-1] + 1) if indices else month(0)
    if draw(st.booleans()):
        partitions.append(AuditPartition("archive", None, low))
    if draw(st.booleans()):
        partitions.append(AuditPartition("future", high, None))
    return draw(st.permutations(partitions))


def home(partitions: list[AuditPartition], ts: datetime) -> AuditPartition:
    """The partition Postgres puts a row in: the one whose range holds it, else the default."""
    for p in partitions:
        if p.name == DEFAULT_PARTITION:
            continue
        if (p.lower is None or p.lower <= ts) and (p.upper is None or ts < p.upper):
            return p
    return next(p for p in partitions if p.name == DEFAULT_PARTITION)


def removed(todo: Plan, partition: str, tenant: str | None, ts: datetime) -> bool:
    """Whether carrying out the plan removes this row, as the sweep's SQL would."""
    if partition in todo.drop:
        return True
    for d in todo.deletions:
        if d.partition != partition or not ts < d.before:
            continue
        if d.tenant_ids is None and (tenant is None or tenant not in todo.own_retention):
            return True
        if d.tenant_ids is not None and tenant in d.tenant_ids:
            return True
    return False


jitter = st.sampled_from(
    [timedelta(0), timedelta(seconds=1), timedelta(seconds=-1)]
) | st.timedeltas(min_value=timedelta(days=-40), max_value=timedelta(days=40))


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[AuditPartition], datetime, int, dict[str, int], list[tuple[str | None, datetime]]]:
    """Partitions, a clock, retentions and rows, with the edges (a cutoff or a month boundary,
    a second either side) drawn often: that is where a wrong comparison would show."""
    partitions = draw(partition_sets())
    default_days = draw(st.integers(1, 1500))
    tenant_days = draw(st.dictionaries(st.sampled_from(TENANTS), st.integers(1, 1500)))
    longest = max([default_days, *tenant_days.values()])
    # Often put a cutoff near a partition's bound, where drops and deletes are decided.
    bounds = [b for p in partitions for b in (p.lower, p.upper) if b] or [month(0)]
    days = st.sampled_from([longest, default_days, *tenant_days.values()])
    near = st.builds(
        lambda b, d, j: b + timedelta(days=d) + j, st.sampled_from(bounds), days, jitter
    )
    now = draw(near | moments)
    edges = bounds + [now - timedelta(days=d) for d in (default_days, *tenant_days.values())]
    stamp = moments | st.builds(lambda edge, j: edge + j, st.sampled_from(edges), jitter)
    rows = draw(st.lists(st.tuples(st.sampled_from(ROW_TENANTS), stamp), max_size=60))
    return partitions, now, default_days, tenant_days, rows


@given(scenarios())
def test_a_sweep_removes_only_expired_rows_and_all_it_must(
    scenario: tuple[
        list[AuditPartition], datetime, int, dict[str, int], list[tuple[str | None, datetime]]
    ],
) -> None:
    partitions, now, default_days, tenant_days, rows = scenario
    todo = plan(partitions, now=now, default_days=default_days, tenant_days=tenant_days)
    longest = max([default_days, *tenant_days.values()])
    horizon = now - timedelta(days=longest)
    by_name = {p.name: p for p in partitions}

    assert DEFAULT_PARTITION not in todo.drop
    for name in todo.drop:
        upper = by_name[name].upper
        assert upper is not None
        assert upper <= horizon
    for p in partitions:
        if p.name != DEFAULT_PARTITION and p.upper is not None and p.upper <= horizon:
            assert p.name in todo.drop
    # A dropped table cannot be deleted from, and every deletion names a real partition.
    assert {d.partition for d in todo.deletions} <= set(by_name) - set(todo.drop)

    # Besides the drawn rows, one of every tenant at every edge and a tick before it.
    tick = timedelta(microseconds=1)
    cutoffs = [now - timedelta(days=d) for d in (default_days, *tenant_days.values())]
    edges = [b for p in partitions for b in (p.lower, p.upper) if b] + cutoffs
    witnesses = [(t, at) for t in ROW_TENANTS for edge in edges for at in (edge - tick, edge)]
    for tenant, ts in rows + witnesses:
        days = tenant_days.get(tenant, default_days) if tenant else default_days
        expired = ts < now - timedelta(days=days)
        p = home(partitions, ts)
        if removed(todo, p.name, tenant, ts):
            assert expired, (tenant, ts, p)
        elif expired:
            # Only the longest retention waits for its month to go whole, and never in the
            # default partition (or another that is never dropped).
            assert days == longest
            assert p.name != DEFAULT_PARTITION
            assert p.upper is not None
            assert p.upper > horizon


def test_the_longest_retention_goes_by_partition_and_shorter_ones_by_row() -> None:
    now = datetime(2024, 6, 15, 12, tzinfo=UTC)
    partitions = [AuditPartition(DEFAULT_PARTITION, None, None), *map(monthly, range(54))]
    todo = plan(partitions, now=now, default_days=90, tenant_days={"a": 30, "b": 400, "c": 90})
    # 400 days before is 2023-05-12 12:00: April 2023 is wholly older, May 2023 is not.
    assert todo.drop == tuple(monthly(i).name for i in range(40))
    assert todo.drop[-1] == "audit_log_y2023m04"
    assert todo.own_retention == ("a", "b", "c")
    by_group = {(d.partition, d.tenant_ids) for d in todo.deletions}
    # The default partition holds rows of any age: every group deletes there, "b" too.
    for group in (("a",), ("b",), ("c",), None):
        assert (DEFAULT_PARTITION, group) in by_group
    # In May 2023 .. May 2024 only the shorter retentions delete, and only where rows can be old.
    assert ("audit_log_y2023m05", ("b",)) not in by_group
    assert ("audit_log_y2024m03", None) in by_group  # 90 days before: 2024-03-17 12:00
    assert ("audit_log_y2024m04", None) not in by_group
    assert ("audit_log_y2024m05", ("a",)) in by_group  # 30 days before: 2024-05-16 12:00
    assert ("audit_log_y2024m06", ("a",)) not in by_group


def test_equal_retentions_share_a_deletion() -> None:
    now = datetime(2024, 6, 15, tzinfo=UTC)
    partitions = [AuditPartition(DEFAULT_PARTITION, None, None)]
    todo = plan(partitions, now=now, default_days=90, tenant_days={"b": 30, "a": 30})
    assert [d.tenant_ids for d in todo.deletions] == [("a", "b"), None]


@pytest.mark.parametrize(
    ("now", "names"),
    [
        (datetime(2024, 11, 30, 23, 59, tzinfo=UTC), ("y2024m11", "y2024m12", "y2025m01")),
        (datetime(2024, 12, 1, tzinfo=UTC), ("y2024m12", "y2025m01", "y2025m02")),
        # 23:30 on 31 January at UTC-5 is already February in UTC.
        (datetime(2025, 1, 31, 23, 30, tzinfo=UTC_MINUS_5), ("y2025m02", "y2025m03", "y2025m04")),
    ],
)
def test_the_partitions_kept_ahead(now: datetime, names: tuple[str, ...]) -> None:
    assert partition_names(now) == tuple(f"audit_log_{name}" for name in names)
    assert first_of_month(now).day == 1
