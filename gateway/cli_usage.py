"""`gateway usage`: tokens used (ledger), reserved in flight (Redis) and left, per key and tenant.

The ledger is the durable truth; Redis only adds what requests still running have reserved.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Literal

import msgspec

from gateway.chain.budget import TOTAL_START, Periods, periods_at
from gateway.cli_common import (
    CliError,
    Json,
    cli_settings,
    key_id_of,
    no_key,
    no_tenant,
    print_json,
    print_table,
    with_cache,
    with_database,
)
from gateway.cli_quota import Scope, scope_of
from gateway.config import Settings
from gateway.store import pg_tenants
from gateway.store.pg import Database
from gateway.store.pg_tenants import LedgerNow, QuotaRow

Period = Literal["day", "month", "total"]
PERIODS: tuple[Period, ...] = ("day", "month", "total")


class UsageLine(msgspec.Struct, frozen=True):
    """Tokens of one key (or one tenant) in one period: used, reserved in flight, left."""

    scope: Scope
    tenant: str
    key: str | None
    period: Period
    period_start: date
    used: int
    requests: int
    reserved: int | None  # None: Redis could not be asked
    budget: int | None  # None: unlimited
    remaining: int | None  # None: unlimited


def usage_lines(
    settings: Settings,
    periods: Periods,
    keys: list[QuotaRow],
    tenants: list[QuotaRow],
    ledger: list[LedgerNow],
    reserved: dict[str, dict[str, int]] | None,
) -> list[UsageLine]:
    """Each key's lines, then its tenant's (over all its keys, deleted ones too), per period."""
    starts = {"day": periods.day, "month": periods.month, "total": TOTAL_START}
    # key id or tenant id -> period -> (used, requests); the two kinds of id never collide
    counts: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for r in ledger:
        counts[r.key_id][r.period] = (r.used, r.requests)
        used, requests = counts[r.tenant_id].get(r.period, (0, 0))
        counts[r.tenant_id][r.period] = (used + r.used, requests + r.requests)
    keys_of: dict[str, list[QuotaRow]] = defaultdict(list)
    for row in keys:
        keys_of[row.tenant_id].append(row)
    lines: list[UsageLine] = []

    def add(row: QuotaRow, budgets: tuple[int | None, ...]) -> None:
        scope, key = scope_of(settings, row)
        in_flight = None if reserved is None else reserved.get(row.tenant_id, {})
        if in_flight is None:
            held = None
        else:
            held = in_flight.get(row.key_id, 0) if row.key_id else sum(in_flight.values())
        sums = counts[row.key_id or row.tenant_id]
        for period, budget in zip(PERIODS, budgets, strict=True):
            used, requests = sums.get(period, (0, 0))
            lines.append(
                UsageLine(
                    scope=scope,
                    tenant=row.tenant_name,
                    key=key,
                    period=period,
                    period_start=starts[period],
                    used=used,
                    requests=requests,
                    reserved=held,
                    budget=budget,
                    remaining=None if budget is None else max(0, budget - used - (held or 0)),
                )
            )

    for tenant in tenants:
        for row in keys_of[tenant.tenant_id]:
            add(row, (row.key_daily, row.key_monthly, row.key_total))
        add(tenant, (tenant.tenant_daily, tenant.tenant_monthly, tenant.tenant_total))
    return lines


def usage(*, tenant: str | None = None, key: str | None = None, json: Json = False) -> None:
    """Tokens used, reserved in flight and left, per key and tenant.

    For the current UTC day and month and in total: used from the ledger in Postgres, reserved
    by requests still running from Redis.

    Examples
    - `gateway usage --tenant acme`
    - `gateway usage --key gw_0123456789ab --json`

    Parameters
    ----------
    tenant
        Only this tenant: its keys and its total.
    key
        Only this key (`gw_<id>` or the bare id) and its tenant's total.
    """
    settings = cli_settings()
    periods = periods_at(datetime.now(UTC))

    async def work(database: Database) -> tuple[list[QuotaRow], list[QuotaRow], list[LedgerNow]]:
        tenants = await pg_tenants.tenant_quotas(database, tenant)
        if tenant is not None and not tenants:
            raise no_tenant(tenant)
        key_id = key_id_of(key, settings) if key is not None else None
        keys = await pg_tenants.key_quotas(database, tenant=tenant, key_id=key_id)
        if key is not None:
            if not keys and tenant is None:
                raise no_key(key)
            if not keys:
                raise CliError(
                    f"no key with prefix '{key}' in tenant '{tenant}'; list them with"
                    f" `gateway keys list --tenant {tenant}`"
                )
            tenants = [t for t in tenants if t.tenant_id == keys[0].tenant_id]
        tenant_ids = [t.tenant_id for t in tenants]
        return (
            tenants,
            keys,
            await pg_tenants.ledger_now(database, tenant_ids, periods.day, periods.month),
        )

    tenants, keys, ledger = with_database(settings, work)
    tenant_ids = [t.tenant_id for t in tenants]
    reserved: dict[str, dict[str, int]] | None = None
    if not settings.redis_url.reveal():
        print("warning: REDIS_URL is not set; in-flight reservations are unknown", file=sys.stderr)
    elif tenant_ids:
        reserved = with_cache(
            settings,
            lambda cache: cache.live_reservations(tenant_ids),
            warning="could not reach Redis; in-flight reservations are unknown",
        )
    else:
        reserved = {}
    lines = usage_lines(settings, periods, keys, tenants, ledger, reserved)
    if json:
        print_json(lines)
        return
    print_table(
        ["tenant", "key", "period", "start", "used", "requests", "reserved", "budget", "remaining"],
        [
            (
                line.tenant,
                line.key or "(tenant)",
                line.period,
                line.period_start,
                line.used,
                line.requests,
                "unknown" if line.reserved is None else line.reserved,
                "unlimited" if line.budget is None else line.budget,
                line.remaining,
            )
            for line in lines
        ],
    )
