"""What the gateway answers itself: the caller's models (Ollama and OpenAI listings) and its own
version. Built from discovery and filtered to the caller, never forwarded to a backend."""

from __future__ import annotations

from datetime import datetime

import msgspec

from gateway import __version__
from gateway.chain.route import Kind
from gateway.chain.values import Principal
from gateway.upstream.discovery import Discovery


class _Tags(msgspec.Struct):
    models: list[msgspec.Raw]


class _Modified(msgspec.Struct):
    modified_at: datetime | None = None


class _Model(msgspec.Struct):
    id: str
    created: int
    object: str = "model"
    owned_by: str = "library"


class _ModelList(msgspec.Struct):
    data: list[_Model]
    object: str = "list"


class _Version(msgspec.Struct):
    version: str


_encode = msgspec.json.Encoder().encode
_decode_modified = msgspec.json.Decoder(_Modified).decode


def _created_s(entry: msgspec.Raw) -> int:
    try:
        modified = _decode_modified(entry).modified_at
    except msgspec.DecodeError:
        return 0
    return int(modified.timestamp()) if modified else 0


class _Budget(msgspec.Struct):
    scope: str
    period: str
    budget: int
    used: int
    remaining: int


class _PromptLog(msgspec.Struct):
    enabled: bool
    retention_days: int | None


class _Me(msgspec.Struct):
    tenant: str
    key: str
    limits: dict[str, int]
    budgets: list[_Budget]
    models: list[str]
    prompt_log: _PromptLog


def me_answer(
    principal: Principal, key_prefix: str, used: tuple[int, ...], discovered: frozenset[str]
) -> bytes:
    """The caller's own limits, budgets, models and prompt log; `used` in `Ledger.unflushed`'s
    order."""
    limits = principal.limits
    budgets = [
        _Budget(scope, period, budget, spent, max(0, budget - spent))
        for (scope, period), budget, spent in zip(
            [(s, p) for s in ("key", "tenant") for p in ("day", "month", "total")],
            principal.budgets.as_tuple(),
            used,
            strict=True,
        )
        if budget is not None
    ]
    return _encode(
        _Me(
            tenant=principal.tenant_name,
            key=f"{key_prefix}_{principal.key_id}",
            limits={
                "requests_per_minute": limits.key_rpm,
                "tenant_requests_per_minute": limits.tenant_rpm,
                "tokens_per_minute": limits.key_tpm,
                "tenant_tokens_per_minute": limits.tenant_tpm,
                "concurrent_requests": limits.key_concurrent,
                "tenant_concurrent_requests": limits.tenant_concurrent,
            },
            budgets=budgets,
            models=principal.models.visible(discovered),
            prompt_log=_PromptLog(principal.prompt_log_days is not None, principal.prompt_log_days),
        )
    )


def local_answer(kind: Kind, principal: Principal, discovery: Discovery) -> bytes:
    if kind is Kind.VERSION:
        return _encode(_Version(__version__))
    names = principal.models.visible(discovery.models())
    entries = discovery.entries(names)
    if kind is Kind.TAGS:
        return _encode(_Tags(entries))
    return _encode(
        _ModelList(
            [_Model(name, _created_s(entry)) for name, entry in zip(names, entries, strict=True)]
        )
    )
