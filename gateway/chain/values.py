"""The typed values handed from stage to stage along the chain."""

from __future__ import annotations

import msgspec

from gateway.models import ModelAccess
from gateway.upstream.usage import Usage


class Limits(msgspec.Struct, frozen=True, array_like=True):
    """Effective per-minute and in-flight limits: the key's own, and its tenant's in total."""

    key_rpm: int
    tenant_rpm: int
    key_tpm: int
    tenant_tpm: int
    key_concurrent: int
    tenant_concurrent: int


class Budgets(msgspec.Struct, frozen=True, array_like=True):
    """Token budgets per UTC day, UTC month and in total; None is unlimited."""

    key_daily: int | None = None
    key_monthly: int | None = None
    key_total: int | None = None
    tenant_daily: int | None = None
    tenant_monthly: int | None = None
    tenant_total: int | None = None

    def as_tuple(self) -> tuple[int | None, ...]:
        """Key day, month, total, then tenant day, month, total: the order of the counters."""
        return (
            self.key_daily,
            self.key_monthly,
            self.key_total,
            self.tenant_daily,
            self.tenant_monthly,
            self.tenant_total,
        )


class Principal(msgspec.Struct, frozen=True, array_like=True):
    """Who is calling and what they may spend; cached, never holding the key or its hash."""

    tenant_id: str
    tenant_name: str
    key_id: str
    key_name: str
    expires_at_s: float | None  # wall-clock epoch seconds; None never expires
    limits: Limits
    budgets: Budgets
    models: ModelAccess
    # None: this key's prompt log is off; else how many days its rows are kept.
    prompt_log_days: int | None = None
    queue_weight: int = 1  # the tenant's share when requests wait for a backend


class Routed(msgspec.Struct, frozen=True):
    """A request body checked and rewritten for the backend (caps applied)."""

    model: str
    stream: bool
    body: bytes
    max_completion_tokens: int
    strip_usage: bool = False  # the gateway asked for a usage event the client did not


class Outcome(msgspec.Struct):
    """How one proxied request went and ended; what settle and audit record."""

    principal: Principal | None = None
    model: str | None = None
    streamed: bool | None = None
    backend: str | None = None
    status: int = 0
    usage: Usage | None = None  # as reported by the backend, then as charged by settle
    ttfb_s: float | None = None
    error_code: str | None = None
    client_gone: bool = False
    completion_frames: int = 0
    transcript: bytearray | None = None  # what was relayed, kept only for the prompt log
