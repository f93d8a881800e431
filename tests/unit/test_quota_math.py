"""Limit inheritance, Redis key layout, reset formats and budget periods: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.chain.budget import effective_budgets, periods_at, prompt_tokens_bound
from gateway.chain.limits import (
    Decision,
    Verdict,
    effective_limits,
    quota_keys,
    refusal,
    reset_text,
    retry_after_s,
)
from gateway.chain.values import Budgets, Limits
from gateway.errors import BudgetExhausted, RateLimited, ServiceUnavailable

maybe = st.none() | st.integers(min_value=0, max_value=10**9)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(st.tuples(maybe, maybe, maybe), st.tuples(maybe, maybe, maybe))
def test_a_key_inherits_its_tenant_and_the_tenant_the_default(
    key: tuple[int | None, int | None, int | None],
    tenant: tuple[int | None, int | None, int | None],
) -> None:
    defaults = (60, 100_000, 8)
    limits = effective_limits(key, tenant, defaults)
    pairs = [
        (limits.key_rpm, limits.tenant_rpm),
        (limits.key_tpm, limits.tenant_tpm),
        (limits.key_concurrent, limits.tenant_concurrent),
    ]
    for (own, shared), k, t, d in zip(pairs, key, tenant, defaults, strict=True):
        assert shared == (d if t is None else t)
        assert own == (shared if k is None else k)


def test_budgets_are_not_inherited() -> None:
    assert effective_budgets((None, 5, None), (100, None, 7)) == Budgets(
        None, 5, None, 100, None, 7
    )
    assert Budgets(1, 2, 3, 4, 5, 6).as_tuple() == (1, 2, 3, 4, 5, 6)


@given(st.uuids(), st.text("abcdefghijkl", min_size=12, max_size=12))
def test_every_key_of_one_admission_shares_the_tenants_hash_tag(
    tenant: object, key_id: str
) -> None:
    keys = quota_keys("gw", str(tenant), key_id, "20261126", "202611")
    names = [*keys[:6], *keys.counters]
    assert len(set(names)) == len(names)
    assert {name.split("{", 1)[1].split("}", 1)[0] for name in names} == {f"t:{tenant}"}


@pytest.mark.parametrize(
    ("ms", "text"), [(0, b"0ms"), (250, b"250ms"), (1000, b"1s"), (1001, b"2s"), (360_000, b"6m0s")]
)
def test_reset_uses_openais_format(ms: int, text: bytes) -> None:
    assert reset_text(ms) == text


@given(st.integers(min_value=-10_000, max_value=120_000))
def test_retry_after_is_whole_seconds_and_never_zero(ms: int) -> None:
    seconds = retry_after_s(ms)
    assert seconds >= 1
    assert seconds * 1000 >= ms


def decision(verdict: Verdict, detail: int = 0) -> Decision:
    return Decision(int(verdict), 2500, 60, 0, 2500, 1000, 10, 30_000, detail)


def test_refusals_name_the_limit_and_carry_the_headers() -> None:
    error = refusal(decision(Verdict.TENANT_TPM), None)
    assert isinstance(error, RateLimited)
    assert error.detail == "rate limit reached: tokens per minute for this tenant"
    headers = dict(error.headers)
    assert headers[b"retry-after"] == b"3"
    assert headers[b"x-ratelimit-limit-tokens"] == b"1000"
    assert headers[b"x-ratelimit-reset-tokens"] == b"30s"
    budget = refusal(decision(Verdict.KEY_BUDGET, 2), 86_000)
    assert isinstance(budget, BudgetExhausted)
    assert budget.detail == "the monthly token budget of this key is exhausted"
    assert dict(budget.headers)[b"retry-after"] == b"86000"
    assert isinstance(refusal(decision(Verdict.COUNTERS_MISSING, 1), None), ServiceUnavailable)


@given(moments)
def test_periods_follow_the_utc_calendar(moment: datetime) -> None:
    periods = periods_at(moment)
    assert periods.day == moment.date()
    assert periods.month == moment.date().replace(day=1)
    next_day = moment + timedelta(seconds=periods.seconds_to_next_day)
    assert next_day.date() == moment.date() + timedelta(days=1)
    assert 1 <= periods.seconds_to_next_day <= 86_400
    assert periods.seconds_to_next_day <= periods.seconds_to_next_month <= 31 * 86_400
    assert periods.day_tag == moment.strftime("%Y%m%d")
    assert periods.month_tag == moment.strftime("%Y%m")
    # Every moment of one second has the same periods: the start of the next is a whole second.
    assert periods_at(moment.replace(microsecond=999_999)) == periods
    ttls = periods.counter_ttls_s()
    assert ttls[2] == ttls[5] == 0
    assert ttls[0] > periods.seconds_to_next_day
    assert [periods.refill_after_s(i) for i in (1, 2, 3, 4, 5, 6)] == [
        periods.seconds_to_next_day,
        periods.seconds_to_next_month,
        None,
        periods.seconds_to_next_day,
        periods.seconds_to_next_month,
        None,
    ]


def test_the_last_second_of_a_year_rolls_day_and_month() -> None:
    aware = periods_at(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert aware.month_tag == "202612"
    assert aware.seconds_to_next_day == 1
    assert aware.seconds_to_next_month == 1


@given(st.integers(min_value=0, max_value=10**6))
def test_the_prompt_bound_grows_with_the_body(body: int) -> None:
    assert prompt_tokens_bound(body) >= body // 2
    assert prompt_tokens_bound(body + 2) > prompt_tokens_bound(body)


def test_limits_are_a_plain_record() -> None:
    assert Limits(1, 2, 3, 4, 5, 6).tenant_concurrent == 6
