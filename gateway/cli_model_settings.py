"""Pure: a scope's model setting for `gateway models` — checking names and scopes, planning an
`allow` or `deny`, and what a tenant or a key may use after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from gateway.cli_common import CliError
from gateway.cli_quota import Scope
from gateway.config import Settings
from gateway.models import ModelAccess, canonical_model, effective_access
from gateway.store.pg_tenants import ModelsRow, ModelsUpdate

Source = Literal["own", "tenant"]
MAX_MODEL_NAME_CHARS = 256


class ModelsSetting(msgspec.Struct, frozen=True):
    """What a scope may use after a change: every discovered model, or the `allowed` ones."""

    scope: Scope
    tenant: str
    key: str | None
    allow_all: bool
    source: Source
    allowed: list[str]


class ListedModel(msgspec.Struct, frozen=True):
    name: str
    discovered: bool | None  # None: the discovered set is unknown


class ModelsInForce(msgspec.Struct, frozen=True):
    """`models list`: the scope's models, each with whether a backend serves it right now."""

    scope: Scope
    tenant: str
    key: str | None
    allow_all: bool
    source: Source
    models: list[ListedModel]


def model_names(names: tuple[str, ...]) -> list[str]:
    """Canonical, deduplicated, sorted; exit 2 on a name no backend could serve."""
    for name in names:
        valid = (
            0 < len(name) <= MAX_MODEL_NAME_CHARS
            and name.isprintable()
            and not any(char.isspace() for char in name)
            and ":" not in (name[0], name[-1])  # an empty name or tag
        )
        if not valid:
            raise CliError(
                f"invalid model name {name!r}: use 1-{MAX_MODEL_NAME_CHARS} characters without "
                "whitespace or control characters, as `name` or `name:tag`",
                2,
            )
    return _canonical(names)


def one_scope(tenant: str | None, key: str | None) -> None:
    if (tenant is None) == (key is None):
        raise CliError("give exactly one of --tenant NAME and --key PREFIX", 2)


def names_or_all(names: tuple[str, ...], all_models: bool) -> list[str] | None:
    """The canonical names, or None for `--all`."""
    if bool(names) == all_models:
        raise CliError("give model names or --all, not both and not neither", 2)
    return None if all_models else model_names(names)


def _canonical(names: Iterable[str]) -> list[str]:
    return sorted({canonical_model(name) for name in names})


def _access(row: ModelsRow) -> ModelAccess:
    # A tenant's row has no key values, so this is the tenant's own setting.
    return effective_access(
        row.key_allow_all, row.key_allowed, row.tenant_allow_all, row.tenant_allowed
    )


def setting_of(settings: Settings, row: ModelsRow) -> ModelsSetting:
    """The scope's models by the rules of `gateway.models.effective_access`."""
    access = _access(row)
    if row.key_id is None:
        source: Source = "own"
        scope: Scope = "tenant"
        key = None
    else:
        own = row.key_allow_all if access.allow_all else row.key_allowed
        source = "tenant" if own is None else "own"
        scope = "key"
        key = f"{settings.key_prefix}_{row.key_id}"
    allowed = [] if access.allow_all else sorted(access.allowed)
    return ModelsSetting(scope, row.tenant_name, key, access.allow_all, source, allowed)


def whose(shown: ModelsSetting | ModelsInForce) -> str:
    return f"key {shown.key}" if shown.scope == "key" else f"tenant {shown.tenant}"


def source_note(shown: ModelsSetting | ModelsInForce) -> str:
    if shown.scope == "tenant":
        return ""
    return " (own setting)" if shown.source == "own" else f" (inherited from tenant {shown.tenant})"


def _stored(row: ModelsRow) -> tuple[bool | None, list[str] | None]:
    """The scope's own two columns: the key's (None inherits) or the tenant's."""
    if row.key_id is None:
        return row.tenant_allow_all, row.tenant_allowed
    return row.key_allow_all, row.key_allowed


def unless_same(row: ModelsRow, update: ModelsUpdate) -> ModelsUpdate | None:
    return None if (update.allow_all, update.allowed) == _stored(row) else update


def allowing(names: list[str] | None, row: ModelsRow) -> ModelsUpdate | None:
    """`models allow`: every model (names None), or these added to the scope's own list."""
    _, allowed = _stored(row)
    if names is None:
        return unless_same(row, ModelsUpdate(True, allowed))
    if _access(row).allow_all:
        return None  # it may use them already
    # A key's own list pins its own allow_all too: the list is the whole of its setting.
    start = _canonical(allowed) if allowed is not None else []
    return unless_same(row, ModelsUpdate(False, sorted({*start, *names})))


def denying(settings: Settings, names: list[str] | None, row: ModelsRow) -> ModelsUpdate | None:
    """`models deny`: nothing at all (names None), or these removed from the scope's list."""
    if names is None:
        return unless_same(row, ModelsUpdate(False, []))
    if _access(row).allow_all:
        shown = setting_of(settings, row)
        raise CliError(
            f"{whose(shown)} is allowed all models{source_note(shown)}; use `models deny --all` "
            "first, then allow the ones it may use",
            2,
        )
    _, allowed = _stored(row)
    # A key that follows its tenant's list keeps the rest of it, as its own list.
    start = _canonical(allowed if allowed is not None else row.tenant_allowed)
    return unless_same(row, ModelsUpdate(False, sorted(set(start) - set(names))))


def models_in_force(
    settings: Settings, row: ModelsRow, discovered: frozenset[str] | None
) -> ModelsInForce:
    setting = setting_of(settings, row)
    if setting.allow_all:
        listed = [ListedModel(name, True) for name in sorted(discovered or ())]
    else:
        listed = [
            ListedModel(name, None if discovered is None else name in discovered)
            for name in setting.allowed
        ]
    return ModelsInForce(
        setting.scope, setting.tenant, setting.key, setting.allow_all, setting.source, listed
    )
