"""Token budgets as data: UTC calendar periods, reservation sizes, when a budget refills. Pure."""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from gateway.chain.values import Budgets

TOTAL_START = date(1970, 1, 1)
DAY_S = 86_400
# Prompts are JSON-escaped in the body and real tokens average several bytes, so half a token
# per byte bounds the prompt from above; the constant covers the chat template's own tokens.
PROMPT_TOKENS_PER_BYTE = 0.5
TEMPLATE_TOKENS = 64


class Periods(NamedTuple):
    """The budget periods a moment falls in, and how long until each rolls over."""

    day: date
    month: date
    seconds_to_next_day: int
    seconds_to_next_month: int
    day_tag: str  # the day in counter names: 20261126
    month_tag: str  # 202611

    def counter_ttls_s(self) -> tuple[int, int, int, int, int, int]:
        """How long Redis keeps each counter: past its period, so settles near the end land."""
        day = self.seconds_to_next_day + DAY_S
        month = self.seconds_to_next_month + DAY_S
        return (day, month, 0, day, month, 0)

    def refill_after_s(self, counter: int) -> int | None:
        """Seconds until counter 1..6 (key day, month, total, tenant ...) starts over."""
        kind = (counter - 1) % 3
        if kind == 0:
            return self.seconds_to_next_day
        if kind == 1:
            return self.seconds_to_next_month
        return None


def periods_at(moment: datetime) -> Periods:
    moment = moment.astimezone(UTC)
    # Periods turn over on whole seconds, so a moment's periods are those of its second;
    # every admission asks, and most of them in a second already asked.
    return _periods_of_second(moment.replace(microsecond=0))


@functools.lru_cache(maxsize=4)
def _periods_of_second(moment: datetime) -> Periods:
    day = moment.date()
    month = day.replace(day=1)
    next_day = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    next_month_date = (month + timedelta(days=32)).replace(day=1)
    next_month = datetime.combine(next_month_date, datetime.min.time(), UTC)
    return Periods(
        day=day,
        month=month,
        # Whole seconds: a moment later in this second rounds up to the same count, so a
        # client told to come back then finds the new period begun.
        seconds_to_next_day=int((next_day - moment).total_seconds()),
        seconds_to_next_month=int((next_month - moment).total_seconds()),
        day_tag=day.strftime("%Y%m%d"),
        month_tag=month.strftime("%Y%m"),
    )


def prompt_tokens_bound(body_bytes: int) -> int:
    """The most prompt tokens a body can hold: with the completion cap, what admission reserves."""
    return int(body_bytes * PROMPT_TOKENS_PER_BYTE) + TEMPLATE_TOKENS


def effective_budgets(
    key: tuple[int | None, int | None, int | None],
    tenant: tuple[int | None, int | None, int | None],
) -> Budgets:
    """Each triple is (daily, monthly, total). A key's budget is its own; the tenant's is shared
    by all its keys. Neither inherits the other: both apply."""
    return Budgets(*key, *tenant)
