"""Rate limits as data: effective limits, Redis key names, the admission's reply and its headers.

Pure: the arithmetic lives in Lua (one atomic round trip); this module prepares and reads it.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import NamedTuple

import msgspec

from gateway.chain.values import Limits
from gateway.errors import BudgetExhausted, GatewayError, RateLimited, ServiceUnavailable

Headers = list[tuple[bytes, bytes]]


class Verdict(enum.IntEnum):
    ADMITTED = 0
    KEY_RPM = 1
    TENANT_RPM = 2
    KEY_TPM = 3
    TENANT_TPM = 4
    KEY_CONCURRENT = 5
    TENANT_CONCURRENT = 6
    KEY_BUDGET = 7
    TENANT_BUDGET = 8
    COUNTERS_MISSING = 9


_REFUSALS = {
    Verdict.KEY_RPM: "rate limit reached: requests per minute for this key",
    Verdict.TENANT_RPM: "rate limit reached: requests per minute for this tenant",
    Verdict.KEY_TPM: "rate limit reached: tokens per minute for this key",
    Verdict.TENANT_TPM: "rate limit reached: tokens per minute for this tenant",
    Verdict.KEY_CONCURRENT: "too many requests in flight for this key",
    Verdict.TENANT_CONCURRENT: "too many requests in flight for this tenant",
}


class Decision(msgspec.Struct, frozen=True, array_like=True):
    """The admission script's reply, field for field."""

    verdict: int
    retry_after_ms: int
    rpm_limit: int
    rpm_remaining: int
    rpm_reset_ms: int
    tpm_limit: int
    tpm_remaining: int
    tpm_reset_ms: int
    detail: int


def effective(own: int | None, tenant: int | None, default: int) -> tuple[int, int]:
    """(key limit, tenant limit): a key inherits its tenant's value, the tenant the default."""
    tenant_limit = default if tenant is None else tenant
    return (tenant_limit if own is None else own), tenant_limit


def effective_limits(
    key: tuple[int | None, int | None, int | None],
    tenant: tuple[int | None, int | None, int | None],
    defaults: tuple[int, int, int],
) -> Limits:
    """Each triple is (rpm, tpm, concurrent)."""
    (k_rpm, t_rpm), (k_tpm, t_tpm), (k_conc, t_conc) = (
        effective(own, shared, default)
        for own, shared, default in zip(key, tenant, defaults, strict=True)
    )
    return Limits(k_rpm, t_rpm, k_tpm, t_tpm, k_conc, t_conc)


class QuotaKeys(NamedTuple):
    """Every Redis key one admission touches; the tenant hash tag keeps them in one slot."""

    rpm_key: str
    rpm_tenant: str
    tpm_key: str
    tpm_tenant: str
    leases: str
    lease_tokens: str
    counters: tuple[str, str, str, str, str, str]
    # Each token window's running total and oldest second, beside its per-second buckets.
    tpm_totals: tuple[str, str]


# Every admission of a key asks for the same fourteen names all day: formatted once. An entry
# takes about 2 kB, so a full cache about 2 MB.
@functools.lru_cache(maxsize=1024)
def quota_keys(prefix: str, tenant_id: str, key_id: str, day: str, month: str) -> QuotaKeys:
    tenant = f"{prefix}:{{t:{tenant_id}}}"
    key = f"{tenant}:k:{key_id}"
    return QuotaKeys(
        rpm_key=f"{key}:rpm",
        rpm_tenant=f"{tenant}:rpm",
        tpm_key=f"{key}:tpm",
        tpm_tenant=f"{tenant}:tpm",
        leases=f"{tenant}:leases",
        lease_tokens=f"{tenant}:lease_tokens",
        counters=(
            f"{key}:used:d:{day}",
            f"{key}:used:m:{month}",
            f"{key}:used:total",
            f"{tenant}:used:d:{day}",
            f"{tenant}:used:m:{month}",
            f"{tenant}:used:total",
        ),
        tpm_totals=(f"{key}:tpm:totals", f"{tenant}:tpm:totals"),
    )


def retry_after_s(milliseconds: int) -> int:
    """Whole seconds, never zero: a client told to retry at once would only be refused again."""
    return max(1, math.ceil(milliseconds / 1000))


def reset_text(milliseconds: int) -> bytes:
    """OpenAI's reset format: `1s`, `6m0s`, `250ms`."""
    if milliseconds < 1000:
        return f"{max(milliseconds, 0)}ms".encode("ascii")
    seconds = math.ceil(milliseconds / 1000)
    minutes, seconds = divmod(seconds, 60)
    return (f"{minutes}m{seconds}s" if minutes else f"{seconds}s").encode("ascii")


def ratelimit_headers(decision: Decision) -> Headers:
    return [
        (b"x-ratelimit-limit-requests", str(decision.rpm_limit).encode("ascii")),
        (b"x-ratelimit-remaining-requests", str(decision.rpm_remaining).encode("ascii")),
        (b"x-ratelimit-reset-requests", reset_text(decision.rpm_reset_ms)),
        (b"x-ratelimit-limit-tokens", str(decision.tpm_limit).encode("ascii")),
        (b"x-ratelimit-remaining-tokens", str(decision.tpm_remaining).encode("ascii")),
        (b"x-ratelimit-reset-tokens", reset_text(decision.tpm_reset_ms)),
    ]


def refusal(decision: Decision, budget_retry_after_s: int | None) -> GatewayError:
    """The 429 for a refused admission: which limit, when to come back, nobody else's data."""
    verdict = Verdict(decision.verdict)
    if verdict is Verdict.COUNTERS_MISSING:
        # Seeded and gone again within one admission: Redis is evicting; refuse to guess.
        return ServiceUnavailable()
    headers = ratelimit_headers(decision)
    if verdict in (Verdict.KEY_BUDGET, Verdict.TENANT_BUDGET):
        whose = "this key" if verdict is Verdict.KEY_BUDGET else "this tenant"
        period = ("daily", "monthly", "total")[(decision.detail - 1) % 3]
        if budget_retry_after_s is not None:
            headers.append((b"retry-after", str(budget_retry_after_s).encode("ascii")))
        return BudgetExhausted(
            f"the {period} token budget of {whose} is exhausted", headers=tuple(headers)
        )
    headers.append((b"retry-after", str(retry_after_s(decision.retry_after_ms)).encode("ascii")))
    return RateLimited(_REFUSALS[verdict], headers=tuple(headers))
