"""The typed values handed from stage to stage along the chain."""

from __future__ import annotations

import msgspec

from gateway.upstream.usage import Usage


class Principal(msgspec.Struct, frozen=True, array_like=True):
    """Who is calling: resolved from a key, cached, never holding the key or its hash."""

    tenant_id: str
    tenant_name: str
    key_id: str
    key_name: str
    expires_at_s: float | None  # wall-clock epoch seconds; None never expires


class Routed(msgspec.Struct, frozen=True):
    """A request body checked and rewritten for the backend (caps applied)."""

    model: str
    stream: bool
    body: bytes


class Outcome(msgspec.Struct):
    """How one proxied request ended; what settle and audit record."""

    status: int = 0
    usage: Usage | None = None
    ttfb_s: float | None = None
    error_code: str | None = None
    client_gone: bool = False
