"""Which models a caller may use: canonical names, effective access, the discovered set. Pure."""

from __future__ import annotations

import msgspec

DISCOVERED_SUFFIX = "discovered"


def canonical_model(name: str) -> str:
    """Ollama's reading of a model name: no tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class ModelAccess(msgspec.Struct, frozen=True, array_like=True):
    """A principal's models: everything discovered, or the listed ones that are discovered."""

    allow_all: bool
    allowed: frozenset[str]

    def permits(self, model: str, discovered: frozenset[str]) -> bool:
        name = canonical_model(model)
        return name in discovered and (self.allow_all or name in self.allowed)

    def visible(self, discovered: frozenset[str]) -> list[str]:
        return sorted(discovered if self.allow_all else discovered & self.allowed)


def effective_access(
    key_allow_all: bool | None,
    key_allowed: list[str] | None,
    tenant_allow_all: bool,
    tenant_allowed: list[str],
) -> ModelAccess:
    """A key's own setting wins where it has one; otherwise its tenant's applies."""
    allow_all = tenant_allow_all if key_allow_all is None else key_allow_all
    allowed = tenant_allowed if key_allowed is None else key_allowed
    return ModelAccess(allow_all, frozenset(canonical_model(name) for name in allowed))


class DiscoveredCache(msgspec.Struct):
    """What replicas share in Redis: the names, the tag entries as the backends sent them, and
    which backend hosts what."""

    models: list[str]
    at_s: float
    entries: list[msgspec.Raw] = msgspec.field(default_factory=list)
    hosts: dict[str, list[str]] = msgspec.field(default_factory=dict)
