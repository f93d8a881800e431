"""The limits and budget stages at run time: one atomic admission before the first byte, one
settle after the last, and the lease keeper that holds in-flight leases while streams run."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import msgspec

from gateway.chain.budget import Periods, periods_at
from gateway.chain.limits import (
    Decision,
    Headers,
    QuotaKeys,
    Verdict,
    quota_keys,
    ratelimit_headers,
    refusal,
)
from gateway.chain.values import Outcome, Principal
from gateway.errors import ServiceUnavailable
from gateway.ledger import Ledger
from gateway.store.pg import Database
from gateway.store.redis import Cache
from gateway.upstream.usage import Usage

log = logging.getLogger(__name__)

_decode_decision = msgspec.convert


class Grant(msgspec.Struct, frozen=True):
    """An admitted request: its lease, its reservation and what it was told in headers."""

    principal: Principal
    member: str
    keys: QuotaKeys
    periods: Periods
    budgeted: tuple[bool, ...]
    reserved_prompt_tokens: int
    headers: Headers


def _no_seeds() -> tuple[int, ...]:
    return (-1,) * 6


class Admission:
    """Admits against Redis, seeds missing budget counters from the ledger, settles afterwards."""

    def __init__(
        self,
        cache: Cache,
        database: Database,
        ledger: Ledger,
        *,
        lease_ttl_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._cache = cache
        self._database = database
        self._ledger = ledger
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._clock = clock
        self._in_flight: dict[str, Grant] = {}

    async def admit(
        self, principal: Principal, reserved_prompt_tokens: int, max_completion_tokens: int
    ) -> Grant:
        periods = periods_at(self._clock())
        keys = quota_keys(
            self._cache.prefix,
            principal.tenant_id,
            principal.key_id,
            periods.day_tag,
            periods.month_tag,
        )
        # 32 random hex digits, as uuid4().hex gives, at a fifth of its CPU.
        member = f"{principal.key_id}:{os.urandom(16).hex()}"
        budgets = principal.budgets.as_tuple()
        limits = principal.limits
        args: list[str | int] = [
            member,
            principal.key_id,
            limits.key_rpm,
            limits.tenant_rpm,
            limits.key_tpm,
            limits.tenant_tpm,
            limits.key_concurrent,
            limits.tenant_concurrent,
            self._lease_ttl_ms,
            reserved_prompt_tokens + max_completion_tokens,
            *(-1 if budget is None else budget for budget in budgets),
        ]
        redis_keys = [*keys[:6], *keys.counters, *keys.tpm_totals]
        ttls = periods.counter_ttls_s()
        decision = await self._decide(redis_keys, [*args, *_no_seeds(), *ttls])
        if decision.verdict == Verdict.COUNTERS_MISSING:
            seeds = await self.used(principal, periods)
            decision = await self._decide(redis_keys, [*args, *seeds, *ttls])
        if decision.verdict != Verdict.ADMITTED:
            raise refusal(decision, periods.refill_after_s(decision.detail))
        grant = Grant(
            principal=principal,
            member=member,
            keys=keys,
            periods=periods,
            budgeted=tuple(budget is not None for budget in budgets),
            reserved_prompt_tokens=reserved_prompt_tokens,
            headers=ratelimit_headers(decision),
        )
        self._in_flight[member] = grant
        return grant

    async def _decide(self, keys: list[str], args: list[str | int]) -> Decision:
        return _decode_decision(await self._cache.admit(keys, args), Decision)

    async def used(self, principal: Principal, periods: Periods) -> tuple[int, ...]:
        """Tokens used per budget counter: the durable ledger plus what this replica has not
        flushed yet. Seeds for missing counters (the script uses them only where one is)."""
        durable = await self._database.usage_now(
            principal.tenant_id, principal.key_id, periods.day, periods.month
        )
        unflushed = self._ledger.unflushed(principal.tenant_id, principal.key_id, periods)
        return tuple(
            a + b for a, b in zip(msgspec.structs.astuple(durable), unflushed, strict=True)
        )

    async def settle(self, grant: Grant, outcome: Outcome) -> None:
        """Release the lease, count real tokens. An answer that came without counts (a broken
        stream, a backend that reports none) is charged its prompt bound and what it produced."""
        self._in_flight.pop(grant.member, None)
        usage = outcome.usage
        if usage is None and outcome.status == 200:
            usage = Usage(grant.reserved_prompt_tokens, outcome.completion_frames)
            outcome.usage = usage
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        principal = grant.principal
        self._ledger.record(
            principal.tenant_id, principal.key_id, grant.periods, prompt, completion
        )
        keys = grant.keys
        tokens_and_leases = (keys.tpm_key, keys.tpm_tenant, keys.leases, keys.lease_tokens)
        try:
            await self._cache.settle(
                [*tokens_and_leases, *keys.counters, *keys.tpm_totals],
                [grant.member, prompt + completion, *(int(b) for b in grant.budgeted)],
            )
        except ServiceUnavailable:
            # The lease expires by itself and the ledger has the tokens; nothing is lost for good.
            log.warning("settle skipped: Redis unavailable (request %s)", grant.member)

    async def keep_leases(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew the leases of streams still running here, well before their TTL runs out."""
        task_status.started()
        while True:
            await anyio.sleep(self._lease_ttl_ms / 3000)
            groups: dict[tuple[str, str], list[str]] = {}
            for grant in list(self._in_flight.values()):
                pair = (grant.keys.leases, grant.keys.lease_tokens)
                groups.setdefault(pair, []).append(grant.member)
            if not groups:
                continue
            try:
                await self._cache.renew_leases(groups, self._lease_ttl_ms)
            except ServiceUnavailable:
                log.warning("could not renew %d leases: Redis unavailable", len(self._in_flight))
