"""`gateway limits set` and `gateway budgets set`: what a key or a tenant may spend.

Limits inherit (key, then tenant, then DEFAULT_*); budgets do not (a key's own and its tenant's
both apply). Changes commit with a NOTIFY that running gateways act on at once.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from functools import partial
from typing import Literal

import msgspec
from cyclopts import App

from gateway.chain.budget import periods_at
from gateway.chain.limits import effective, quota_keys
from gateway.cli_common import (
    CliError,
    Json,
    cli_settings,
    key_id_of,
    no_key,
    no_tenant,
    print_json,
    with_cache,
    with_database,
)
from gateway.config import Settings
from gateway.store import pg_keys, pg_tenants
from gateway.store.pg import Database, Rejected
from gateway.store.pg_tenants import QuotaRow
from gateway.store.redis import Cache

limits = App(
    name="limits",
    help="""Set the rate limits of a key or a tenant.

    Examples
    - `gateway limits set --tenant acme --rpm 600 --tpm 100000`
    """,
)
budgets = App(
    name="budgets",
    help="""Set the token budgets of a key or a tenant.

    Examples
    - `gateway budgets set --tenant acme --monthly 5000000`
    """,
)

Scope = Literal["key", "tenant"]
Source = Literal["own", "tenant", "default"]
# The columns' ranges: integer for limits, bigint for budgets.
MAX_LIMIT = 2**31 - 1
MAX_BUDGET = 2**63 - 1


class LimitInForce(msgspec.Struct, frozen=True):
    value: int
    source: Source


class LimitsInForce(msgspec.Struct, frozen=True):
    """A key's limits (or a tenant's, for all its keys together) and where each comes from."""

    scope: Scope
    tenant: str
    key: str | None
    rpm: LimitInForce
    tpm: LimitInForce
    concurrent: LimitInForce


class BudgetsInForce(msgspec.Struct, frozen=True):
    """A key's own budgets, or its tenant's for all its keys together; None is unlimited."""

    scope: Scope
    tenant: str
    key: str | None
    daily: int | None
    monthly: int | None
    total: int | None


def _value(option: str, text: str, clear_word: str, maximum: int) -> int | None:
    if text == clear_word:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > maximum:
        raise CliError(
            f"invalid {option} '{text}': use a whole number from 0 to {maximum}, or '{clear_word}'",
            2,
        )
    return int(text)


def _changes(given: dict[str, str | None], clear_word: str, maximum: int) -> dict[str, int | None]:
    if not any(text is not None for text in given.values()):
        options = ", ".join(f"--{name}" for name in given)
        raise CliError(f"nothing to set: give at least one of {options}", 2)
    return {
        name: _value(f"--{name}", text, clear_word, maximum)
        for name, text in given.items()
        if text is not None
    }


def _one_scope(tenant: str | None, key: str | None) -> None:
    if (tenant is None) == (key is None):
        raise CliError("give exactly one of --tenant NAME and --key PREFIX", 2)


def _apply(
    settings: Settings,
    tenant: str | None,
    key: str | None,
    changes: dict[str, int | None],
    *,
    reset_budget_counters: bool,
) -> QuotaRow:
    """Commit the change with its NOTIFY, then drop what Redis cached from before it."""

    async def work(database: Database) -> tuple[QuotaRow | None, list[str]]:
        try:
            if key is not None:
                row = await pg_tenants.set_key_quotas(database, key_id_of(key, settings), changes)
                return row, [row.key_id] if row and row.key_id else []
            assert tenant is not None  # _one_scope saw to it
            row = await pg_tenants.set_tenant_quotas(database, tenant, changes)
            return row, [k.key_id for k in await pg_keys.list_keys(database, tenant)] if row else []
        except Rejected as exc:
            raise CliError(f"Postgres rejected the value ({exc})", 2) from None

    row, key_ids = with_database(settings, work)
    if row is None:
        raise no_key(key) if key else no_tenant(tenant)
    if not settings.redis_url.reveal():
        if reset_budget_counters:
            print(
                "warning: REDIS_URL is not set, so this period's budget counters were not reset; "
                "set it and run this again",
                file=sys.stderr,
            )
        return row
    stale: list[str] = []
    warning = (
        "could not reach Redis; gateways that missed the change notice apply it when their "
        f"cached key expires (within {settings.redis_key_cache_ttl_s} s)"
    )
    if reset_budget_counters:
        # Unbudgeted counters stop counting, so the old ones would undercount: the next
        # admission seeds them again from the ledger.
        periods = periods_at(datetime.now(UTC))
        names = quota_keys(
            settings.redis_key_prefix,
            row.tenant_id,
            row.key_id or "_",
            periods.day_tag,
            periods.month_tag,
        ).counters
        stale = list(names[0:3] if row.key_id else names[3:6])
        warning += "; the budget counters were not reset, run this again when Redis is back"
    with_cache(settings, partial(_forget, key_ids, stale), warning=warning)
    # Again, now that Redis holds nothing stale: a gateway that re-read the old values from
    # Redis between the first notice and the eviction drops them now.
    subject = f"k:{row.key_id}" if row.key_id else f"t:{row.tenant_id}"
    with_database(settings, lambda database: database.notify_principals(subject))
    return row


async def _forget(key_ids: list[str], counters: list[str], cache: Cache) -> None:
    for key_id in key_ids:
        await cache.evict_key(key_id)
    if counters:
        await cache.delete(*counters)


def scope_of(settings: Settings, row: QuotaRow) -> tuple[Scope, str | None]:
    """("key", "gw_<id>") for a key's row, ("tenant", None) for a tenant's."""
    if row.key_id is None:
        return "tenant", None
    return "key", f"{settings.key_prefix}_{row.key_id}"


def limits_in_force(settings: Settings, row: QuotaRow) -> LimitsInForce:
    """The limits a gateway applies, by the rules of `gateway.chain.limits.effective`."""
    scope, key = scope_of(settings, row)

    def limit(own: int | None, shared: int | None, default: int) -> LimitInForce:
        key_limit, tenant_limit = effective(own, shared, default)
        if scope == "tenant":
            return LimitInForce(tenant_limit, "default" if shared is None else "own")
        source: Source = "own" if own is not None else "tenant" if shared is not None else "default"
        return LimitInForce(key_limit, source)

    return LimitsInForce(
        scope=scope,
        tenant=row.tenant_name,
        key=key,
        rpm=limit(row.key_rpm, row.tenant_rpm, settings.default_rpm),
        tpm=limit(row.key_tpm, row.tenant_tpm, settings.default_tpm),
        concurrent=limit(row.key_concurrent, row.tenant_concurrent, settings.default_concurrent),
    )


def budgets_in_force(settings: Settings, row: QuotaRow) -> BudgetsInForce:
    scope, key = scope_of(settings, row)
    own = (
        (row.key_daily, row.key_monthly, row.key_total)
        if key
        else (row.tenant_daily, row.tenant_monthly, row.tenant_total)
    )
    return BudgetsInForce(scope, row.tenant_name, key, *own)


def _whose(scope: Scope, tenant: str, key: str | None) -> str:
    return f"key {key}" if scope == "key" else f"tenant {tenant}"


@limits.command(name="set")
def limits_set(
    *,
    tenant: str | None = None,
    key: str | None = None,
    rpm: str | None = None,
    tpm: str | None = None,
    concurrent: str | None = None,
    json: Json = False,
) -> None:
    """Set requests/min, tokens/min, in-flight requests: a number, or `inherit` (key: the
    tenant's; tenant: DEFAULT_*). Gateways apply it at once.

    Examples
    - `gateway limits set --tenant acme --rpm 600 --concurrent 8`
    - `gateway limits set --key gw_0123456789ab --tpm inherit`

    Parameters
    ----------
    tenant
        Set the tenant's limits: for all its keys together, and inherited by its keys.
    key
        Set one key's limits: `gw_<id>` or the bare 12-character id.
    rpm
        Requests per minute.
    tpm
        Tokens (prompt and completion) per minute.
    concurrent
        Requests in flight at once.
    """
    _one_scope(tenant, key)
    changes = _changes({"rpm": rpm, "tpm": tpm, "concurrent": concurrent}, "inherit", MAX_LIMIT)
    settings = cli_settings()
    shown = limits_in_force(
        settings, _apply(settings, tenant, key, changes, reset_budget_counters=False)
    )
    if json:
        print_json(shown)
        return
    parts = (
        f"{name} {limit.value} ({limit.source})"
        for name, limit in (
            ("rpm", shown.rpm),
            ("tpm", shown.tpm),
            ("concurrent", shown.concurrent),
        )
    )
    print(f"limits for {_whose(shown.scope, shown.tenant, shown.key)}: {', '.join(parts)}")


@budgets.command(name="set")
def budgets_set(
    *,
    tenant: str | None = None,
    key: str | None = None,
    daily: str | None = None,
    monthly: str | None = None,
    total: str | None = None,
    json: Json = False,
) -> None:
    """Set token budgets per UTC day, UTC month and in total: a number, or `none` (unlimited).

    Examples
    - `gateway budgets set --tenant acme --daily 200000 --monthly 5000000`
    - `gateway budgets set --key gw_0123456789ab --total none`

    Parameters
    ----------
    tenant
        Set the tenant's budgets: for the sum of all its keys (keys keep their own as well).
    key
        Set one key's budgets: `gw_<id>` or the bare 12-character id.
    daily
        Tokens per UTC day.
    monthly
        Tokens per UTC calendar month.
    total
        Tokens ever.
    """
    _one_scope(tenant, key)
    changes = _changes({"daily": daily, "monthly": monthly, "total": total}, "none", MAX_BUDGET)
    settings = cli_settings()
    shown = budgets_in_force(
        settings, _apply(settings, tenant, key, changes, reset_budget_counters=True)
    )
    if json:
        print_json(shown)
        return
    parts = (
        f"{name} {'unlimited' if value is None else value}"
        for name, value in (
            ("daily", shown.daily),
            ("monthly", shown.monthly),
            ("total", shown.total),
        )
    )
    print(f"budgets for {_whose(shown.scope, shown.tenant, shown.key)}: {', '.join(parts)}")
