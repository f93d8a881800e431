"""`gateway limits|budgets set` and `gateway usage` against real Postgres and Redis."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
import redis

from gateway.chain.budget import periods_at
from gateway.chain.limits import quota_keys
from tests.integration.cli_support import Tenant, as_json, gateway, key_id, make_tenant, ok, stored


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "DEFAULT_RPM": "42",
        "DEFAULT_TPM": "1000",
        "DEFAULT_CONCURRENT": "4",
    }


@pytest.fixture
def cache(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_limits_print_what_is_in_force_by_inheritance(
    env: dict[str, str], database_url: str
) -> None:
    acme = make_tenant(database_url, "acme", "ci")
    key = acme.keys[0]
    assert ok(env, "limits", "set", "--key", key, "--rpm", "100").strip() == (
        f"limits for key {key}: rpm 100 (own), tpm 1000 (default), concurrent 4 (default)"
    )
    tenant = as_json(env, "limits", "set", "--tenant", "acme", "--tpm", "500", "--concurrent", "3")
    assert tenant == {
        "scope": "tenant",
        "tenant": "acme",
        "key": None,
        "rpm": {"value": 42, "source": "default"},
        "tpm": {"value": 500, "source": "own"},
        "concurrent": {"value": 3, "source": "own"},
    }
    # A bare id works as well as the prefix.
    assert ok(env, "limits", "set", "--key", key_id(key), "--concurrent", "0").strip() == (
        f"limits for key {key}: rpm 100 (own), tpm 500 (tenant), concurrent 0 (own)"
    )


def test_inherit_clears_a_limit(env: dict[str, str], database_url: str) -> None:
    acme = make_tenant(database_url, "acme", "ci")
    key = acme.keys[0]
    ok(env, "limits", "set", "--tenant", "acme", "--rpm", "10")
    ok(env, "limits", "set", "--key", key, "--rpm", "20", "--tpm", "30")
    cleared = as_json(env, "limits", "set", "--key", key, "--rpm", "inherit")
    assert cleared["rpm"] == {"value": 10, "source": "tenant"}
    assert cleared["tpm"] == {"value": 30, "source": "own"}
    assert stored(database_url, "SELECT rpm, tpm FROM gateway.api_keys") == (None, 30)
    tenant = as_json(env, "limits", "set", "--tenant", "acme", "--rpm", "inherit")
    assert tenant["rpm"] == {"value": 42, "source": "default"}
    assert stored(database_url, "SELECT rpm FROM gateway.tenants") == (None,)


def test_budgets_are_set_and_cleared(env: dict[str, str], database_url: str) -> None:
    acme = make_tenant(database_url, "acme", "ci")
    key = acme.keys[0]
    assert ok(env, "budgets", "set", "--key", key, "--daily", "1000").strip() == (
        f"budgets for key {key}: daily 1000, monthly unlimited, total unlimited"
    )
    tenant = as_json(env, "budgets", "set", "--tenant", "acme", "--monthly", "5000", "--total", "0")
    assert tenant == {
        "scope": "tenant",
        "tenant": "acme",
        "key": None,
        "daily": None,
        "monthly": 5000,
        "total": 0,
    }
    # The key's own budget is not the tenant's: neither inherits the other.
    assert as_json(env, "budgets", "set", "--key", key, "--total", "7")["monthly"] is None
    cleared = as_json(env, "budgets", "set", "--tenant", "acme", "--monthly", "none")
    assert (cleared["monthly"], cleared["total"]) == (None, 0)
    assert ok(
        env, "budgets", "set", "--key", key, "--daily", "none", "--total", "none"
    ).strip() == (f"budgets for key {key}: daily unlimited, monthly unlimited, total unlimited")
    assert stored(
        database_url,
        "SELECT k.budget_daily_tokens, k.budget_total_tokens, t.budget_monthly_tokens, "
        "t.budget_total_tokens FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = tenant_id",
    ) == (None, None, None, 0)


BAD_INPUT = (
    (["limits", "set", "--tenant", "acme", "--rpm", "-5"], 2, "invalid --rpm '-5'"),
    (["limits", "set", "--tenant", "acme", "--tpm=-1"], 2, "invalid --tpm '-1'"),
    (["limits", "set", "--tenant", "acme", "--rpm", "ten"], 2, "invalid --rpm 'ten'"),
    (["limits", "set", "--tenant", "acme", "--rpm", "1.5"], 2, "invalid --rpm '1.5'"),
    (["limits", "set", "--tenant", "acme", "--rpm", "none"], 2, "invalid --rpm 'none'"),
    (["limits", "set", "--tenant", "acme", "--rpm", "2147483648"], 2, "invalid --rpm"),
    (["limits", "set", "--tenant", "acme"], 2, "nothing to set"),
    (["limits", "set", "--rpm", "1"], 2, "exactly one of --tenant NAME and --key PREFIX"),
    (
        ["limits", "set", "--tenant", "acme", "--key", "gw_AAAAAAAAAAAA", "--rpm", "1"],
        2,
        "exactly one of --tenant NAME and --key PREFIX",
    ),
    (["limits", "set", "--tenant", "ghost", "--rpm", "1"], 1, "no tenant named 'ghost'"),
    (
        ["limits", "set", "--key", "gw_AAAAAAAAAAAA", "--rpm", "1"],
        1,
        "no key with prefix 'gw_AAAAAAAAAAAA'",
    ),
    (["budgets", "set", "--tenant", "acme", "--daily", "-1"], 2, "invalid --daily '-1'"),
    (["budgets", "set", "--tenant", "acme", "--total", "lots"], 2, "invalid --total 'lots'"),
    (["budgets", "set", "--tenant", "acme", "--daily", "inherit"], 2, "invalid --daily"),
    (["budgets", "set", "--key", "gw_AAAAAAAAAAAA"], 2, "nothing to set"),
    (["budgets", "set", "--daily", "1"], 2, "exactly one of --tenant NAME and --key PREFIX"),
    (["budgets", "set", "--tenant", "ghost", "--daily", "1"], 1, "no tenant named 'ghost'"),
    (
        ["budgets", "set", "--key", "gw_AAAAAAAAAAAA", "--daily", "1"],
        1,
        "no key with prefix 'gw_AAAAAAAAAAAA'",
    ),
    (["usage", "--tenant", "ghost"], 1, "no tenant named 'ghost'"),
    (["usage", "--key", "gw_AAAAAAAAAAAA"], 1, "no key with prefix 'gw_AAAAAAAAAAAA'"),
)


def test_bad_input_is_one_line_and_changes_nothing(env: dict[str, str], database_url: str) -> None:
    make_tenant(database_url, "acme")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: gateway(env, *args), [c[0] for c in BAD_INPUT]))
    for (args, code, message), result in zip(BAD_INPUT, results, strict=True):
        assert (result.returncode, result.stdout) == (code, ""), args
        assert result.stderr.startswith("error: "), args
        assert message in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1, args
    assert stored(
        database_url,
        "SELECT rpm, tpm, budget_daily_tokens, budget_total_tokens FROM gateway.tenants",
    ) == (None, None, None, None)


def test_a_change_is_announced_to_gateways(env: dict[str, str], database_url: str) -> None:
    acme = make_tenant(database_url, "acme", "ci")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN gateway_principals")
        ok(env, "limits", "set", "--key", acme.keys[0], "--rpm", "5")
        ok(env, "budgets", "set", "--tenant", "acme", "--daily", "5")
        payloads = [n.payload for n in conn.notifies(timeout=10, stop_after=4)]
    # Once with the change, once more after Redis was cleaned of what it cached before it.
    key_notice, tenant_notice = f"k:{key_id(acme.keys[0])}", f"t:{acme.id}"
    assert payloads == [key_notice, key_notice, tenant_notice, tenant_notice]


def test_the_shared_key_cache_is_evicted(
    env: dict[str, str], database_url: str, cache: redis.Redis, redis_prefix: str
) -> None:
    acme = make_tenant(database_url, "acme", "ci", "bot")
    other = make_tenant(database_url, "other", "ci")
    entries = [f"{redis_prefix}:key:{key_id(p)}" for p in [*acme.keys, *other.keys]]
    for entry in entries:
        cache.hset(entry, "digest", "principal")
    ok(env, "limits", "set", "--key", acme.keys[0], "--rpm", "5")
    assert [cache.exists(entry) for entry in entries] == [0, 1, 1]
    cache.hset(entries[0], "digest", "principal")
    ok(env, "budgets", "set", "--tenant", "acme", "--daily", "5")
    assert [cache.exists(entry) for entry in entries] == [0, 0, 1]


def test_budget_counters_of_the_scope_are_deleted(
    env: dict[str, str], database_url: str, cache: redis.Redis, redis_prefix: str
) -> None:
    acme = make_tenant(database_url, "acme", "ci")
    periods = periods_at(datetime.now(UTC))
    counters = quota_keys(
        redis_prefix, acme.id, key_id(acme.keys[0]), periods.day_tag, periods.month_tag
    ).counters
    for name in counters:
        cache.set(name, 123)
    ok(env, "limits", "set", "--key", acme.keys[0], "--rpm", "5")
    assert cache.exists(*counters) == 6
    ok(env, "budgets", "set", "--key", acme.keys[0], "--daily", "10")
    assert [cache.exists(name) for name in counters] == [0, 0, 0, 1, 1, 1]
    ok(env, "budgets", "set", "--tenant", "acme", "--monthly", "10")
    assert cache.exists(*counters) == 0


def test_an_unreachable_redis_warns_but_the_change_stands(
    env: dict[str, str], database_url: str
) -> None:
    make_tenant(database_url, "acme", "ci")
    down = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    for args in (["limits", "set", "--rpm", "7"], ["budgets", "set", "--daily", "8"]):
        result = gateway(down, *args, "--tenant", "acme")
        assert result.returncode == 0
        assert "warning: could not reach Redis" in result.stderr
        assert not any(x.startswith("error") for x in result.stderr.splitlines())
    assert stored(database_url, "SELECT rpm, budget_daily_tokens FROM gateway.tenants") == (7, 8)


def add_ledger(
    database_url: str, tenant_id: str, key: str, rows: list[tuple[str, Any, int]]
) -> None:
    """rows: (period, period_start, tokens); tokens split 1:2 into prompt and completion."""
    with psycopg.connect(database_url) as conn:
        for period, start, tokens in rows:
            conn.execute(
                "INSERT INTO gateway.usage_ledger (tenant_id, key_id, period, period_start, "
                "prompt_tokens, completion_tokens, requests) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (tenant_id, key, period, start, tokens // 3, tokens - tokens // 3, tokens // 100),
            )


def reserve(
    cache: redis.Redis, prefix: str, tenant_id: str, key: str, tokens: int, ttl_ms: int
) -> None:
    names = quota_keys(prefix, tenant_id, key, "", "")
    member = f"{key}:{os.urandom(8).hex()}"
    cache.zadd(names.leases, {member: int(time.time() * 1000) + ttl_ms})
    cache.hset(names.lease_tokens, member, tokens)


@pytest.fixture
def spent(
    env: dict[str, str], database_url: str, cache: redis.Redis, redis_prefix: str
) -> tuple[Tenant, Tenant]:
    """acme (keys ci, bot; plus a deleted key's history) and other (one key), with usage."""
    acme = make_tenant(database_url, "acme", "ci", "bot")
    other = make_tenant(database_url, "other", "ci")
    periods = periods_at(datetime.now(UTC))
    ci, bot = key_id(acme.keys[0]), key_id(acme.keys[1])
    current = [
        ("day", periods.day, 300),
        ("month", periods.month, 600),
        ("total", "1970-01-01", 900),
    ]
    add_ledger(database_url, acme.id, ci, current)
    add_ledger(database_url, acme.id, bot, [("month", periods.month, 30)])
    # Yesterday and last month are over; a deleted key's tokens still count for its tenant.
    add_ledger(database_url, acme.id, "DeletedKey01", [("day", periods.day, 3000)])
    add_ledger(database_url, acme.id, "DeletedKey01", [("day", periods.day - timedelta(days=1), 5)])
    last_month = (periods.month - timedelta(days=1)).replace(day=1)
    add_ledger(database_url, acme.id, bot, [("month", last_month, 7777)])
    add_ledger(database_url, other.id, key_id(other.keys[0]), [("total", "1970-01-01", 9)])
    reserve(cache, redis_prefix, acme.id, ci, 200, ttl_ms=60_000)
    reserve(cache, redis_prefix, acme.id, bot, 50, ttl_ms=60_000)
    reserve(cache, redis_prefix, acme.id, ci, 10_000, ttl_ms=-60_000)  # its replica died
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE gateway.api_keys SET budget_daily_tokens = 1000, budget_total_tokens = 500 "
            "WHERE id = %s",
            (ci,),
        )
        conn.execute("UPDATE gateway.tenants SET budget_daily_tokens = 10000 WHERE name = 'acme'")
    return acme, other


def line(lines: list[dict[str, Any]], key: str | None, period: str) -> dict[str, Any]:
    (found,) = [x for x in lines if x["key"] == key and x["period"] == period]
    return found


def test_usage_adds_ledger_and_live_reservations(
    env: dict[str, str], spent: tuple[Tenant, Tenant]
) -> None:
    acme, other = spent
    ci, bot = acme.keys
    lines = as_json(env, "usage")
    assert [(x["scope"], x["tenant"], x["key"], x["period"]) for x in lines] == [
        (scope, tenant, key, period)
        for scope, tenant, key in [
            ("key", "acme", ci),
            ("key", "acme", bot),
            ("tenant", "acme", None),
            ("key", "other", other.keys[0]),
            ("tenant", "other", None),
        ]
        for period in ("day", "month", "total")
    ]
    today = periods_at(datetime.now(UTC))
    assert line(lines, ci, "day") == {
        "scope": "key",
        "tenant": "acme",
        "key": ci,
        "period": "day",
        "period_start": today.day.isoformat(),
        "used": 300,
        "requests": 3,
        "reserved": 200,
        "budget": 1000,
        "remaining": 500,
    }
    assert line(lines, ci, "month")["period_start"] == today.month.isoformat()
    assert (line(lines, ci, "month")["used"], line(lines, ci, "month")["remaining"]) == (600, None)
    # Over budget: never below zero.
    assert (line(lines, ci, "total")["used"], line(lines, ci, "total")["remaining"]) == (900, 0)
    assert [line(lines, bot, p)["used"] for p in ("day", "month", "total")] == [0, 30, 0]
    assert line(lines, bot, "day")["reserved"] == 50
    tenant_day = line([x for x in lines if x["tenant"] == "acme"], None, "day")
    assert (tenant_day["used"], tenant_day["requests"], tenant_day["reserved"]) == (3300, 33, 250)
    assert (tenant_day["budget"], tenant_day["remaining"]) == (10_000, 10_000 - 3300 - 250)
    other_total = line([x for x in lines if x["tenant"] == "other"], None, "total")
    assert (other_total["used"], other_total["reserved"], other_total["budget"]) == (9, 0, None)


def test_usage_narrows_to_a_tenant_or_a_key(
    env: dict[str, str], spent: tuple[Tenant, Tenant]
) -> None:
    acme, other = spent
    by_tenant = as_json(env, "usage", "--tenant", "other")
    assert {(x["tenant"], x["key"]) for x in by_tenant} == {
        ("other", other.keys[0]),
        ("other", None),
    }
    by_key = as_json(env, "usage", "--key", key_id(acme.keys[1]))
    assert [(x["key"], x["period"]) for x in by_key] == [
        (key, period) for key in (acme.keys[1], None) for period in ("day", "month", "total")
    ]
    assert line(by_key, None, "month")["used"] == 630
    mismatch = gateway(env, "usage", "--tenant", "other", "--key", acme.keys[0])
    assert mismatch.returncode == 1
    assert (
        mismatch.stderr.strip()
        == f"error: no key with prefix '{acme.keys[0]}' in tenant 'other'; list them with"
        " `gateway keys list --tenant other`"
    )


def test_usage_table_says_unlimited_and_unknown(
    env: dict[str, str], spent: tuple[Tenant, Tenant]
) -> None:
    acme, _ = spent
    table = ok(env, "usage", "--key", acme.keys[0]).splitlines()
    assert table[0].split() == [
        "tenant",
        "key",
        "period",
        "start",
        "used",
        "requests",
        "reserved",
        "budget",
        "remaining",
    ]
    assert table[1].split()[1:] == [
        acme.keys[0],
        "day",
        table[1].split()[3],
        "300",
        "3",
        "200",
        "1000",
        "500",
    ]
    assert table[2].split()[-2:] == ["unlimited", "-"]
    assert table[4].split()[1] == "(tenant)"
    down = gateway({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "usage", "--key", acme.keys[0])
    assert down.returncode == 0
    assert "warning: could not reach Redis; in-flight reservations are unknown" in down.stderr
    assert down.stdout.splitlines()[1].split()[-3:] == ["unknown", "1000", "700"]


def test_usage_without_redis_reports_reservations_as_unknown(
    env: dict[str, str], spent: tuple[Tenant, Tenant]
) -> None:
    acme, _ = spent
    result = gateway({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "usage", "--json")
    assert result.returncode == 0
    lines = msgspec.json.decode(result.stdout)
    assert {x["reserved"] for x in lines} == {None}
    # Without the reservations, what is left counts the ledger alone.
    assert line(lines, acme.keys[0], "day")["remaining"] == 700
