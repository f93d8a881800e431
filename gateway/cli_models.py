"""`gateway models allow|deny|inherit|list`: which models a tenant's or a key's callers may use.

A key's unset setting inherits its tenant's; names are stored canonically (no tag is `:latest`).
Changes commit with a NOTIFY that running gateways act on at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated

import msgspec
from cyclopts import App, Parameter

from gateway.cli_common import (
    Json,
    cli_settings,
    key_id_of,
    no_key,
    no_tenant,
    print_json,
    print_table,
    with_cache,
    with_database,
)
from gateway.cli_model_settings import (
    allowing,
    denying,
    models_in_force,
    names_or_all,
    one_scope,
    setting_of,
    source_note,
    unless_same,
    whose,
)
from gateway.config import Settings
from gateway.models import DISCOVERED_SUFFIX, DiscoveredCache, canonical_model
from gateway.store import pg_keys, pg_tenants
from gateway.store.pg import Database
from gateway.store.pg_tenants import ModelsRow, ModelsUpdate
from gateway.store.redis import Cache

models = App(
    name="models",
    help="""Choose the models a tenant or a key may use.

    Examples
    - `gateway models allow --tenant acme llama3.2:1b mistral`
    - `gateway models list --tenant acme`
    """,
)

AllFlag = Annotated[bool, Parameter(name="--all", negative=(), help="Every model.")]

_decode_discovered = msgspec.json.Decoder(DiscoveredCache).decode


def _change(
    settings: Settings,
    tenant: str | None,
    key: str | None,
    decide: Callable[[ModelsRow], ModelsUpdate | None],
) -> tuple[ModelsRow, ModelsRow]:
    """Commit the change with its NOTIFY, then drop what Redis cached from before it."""
    key_id = key_id_of(key, settings) if key is not None else None

    async def work(database: Database) -> tuple[tuple[ModelsRow, ModelsRow] | None, list[str]]:
        rows = await pg_tenants.change_models(database, decide, tenant=tenant, key_id=key_id)
        if rows is None or rows[0] == rows[1]:
            return rows, []
        if key_id is not None:
            return rows, [key_id]
        return rows, [k.key_id for k in await pg_keys.list_keys(database, tenant)]

    rows, key_ids = with_database(settings, work)
    if rows is None:
        raise no_key(key) if key else no_tenant(tenant)
    before, after = rows
    if before == after:
        return rows
    if settings.redis_url.reveal():
        warning = (
            "could not reach Redis; gateways that missed the change notice apply it when their "
            f"cached key expires (within {settings.redis_key_cache_ttl_s} s)"
        )
        with_cache(settings, partial(_evict, key_ids), warning=warning)
    # Again, now that Redis holds nothing stale: a gateway that re-read the old setting from
    # Redis between the first notice and the eviction drops it now.
    subject = f"k:{after.key_id}" if after.key_id else f"t:{after.tenant_id}"
    with_database(settings, lambda database: database.notify_principals(subject))
    return rows


async def _evict(key_ids: list[str], cache: Cache) -> None:
    for key_id in key_ids:
        await cache.evict_key(key_id)


def _show(
    settings: Settings, rows: tuple[ModelsRow, ModelsRow], json: bool, notes: list[str]
) -> None:
    """The setting after a change; in words, with what the operator may not expect."""
    before, after = rows
    shown = setting_of(settings, after)
    if json:
        print_json(shown)
        return
    if before == after:
        notes.append("nothing changed")
    if before.key_id is not None and before.key_allowed is None and after.key_allowed is not None:
        notes.append(
            f"key {shown.key} now has its own model list and no longer follows tenant "
            f"{shown.tenant}'s (`gateway models inherit --key {shown.key}` undoes this)"
        )
    for note in notes:
        print(note)
    what = "all models" if shown.allow_all else ", ".join(shown.allowed) or "no models"
    print(f"models for {whose(shown)}{source_note(shown)}: {what}")


@models.command(name="allow")
def models_allow(
    *names: str,
    tenant: str | None = None,
    key: str | None = None,
    all_models: AllFlag = False,
    json: Json = False,
) -> None:
    """Let a tenant or a key use these models (`name` means `name:latest`), or every model.

    Examples
    - `gateway models allow --tenant acme llama3.2:1b mistral`
    - `gateway models allow --key gw_0123456789ab --all`

    Parameters
    ----------
    names
        Models to add to the scope's list. A key that follows its tenant's list gets its own.
    tenant
        The tenant's setting: its keys follow it unless they have their own.
    key
        One key's setting: `gw_<id>` or the bare 12-character id.
    """
    one_scope(tenant, key)
    chosen = names_or_all(names, all_models)
    settings = cli_settings()
    rows = _change(settings, tenant, key, partial(allowing, chosen))
    shown = setting_of(settings, rows[1])
    notes = []
    if chosen is not None and shown.allow_all:
        notes.append(f"{whose(shown)} may use all models already{source_note(shown)}")
    _show(settings, rows, json, notes)


@models.command(name="deny")
def models_deny(
    *names: str,
    tenant: str | None = None,
    key: str | None = None,
    all_models: AllFlag = False,
    json: Json = False,
) -> None:
    """Stop a tenant or a key using these models, or any model (`--all` also empties its list).

    Examples
    - `gateway models deny --tenant acme mistral`

    Parameters
    ----------
    names
        Models to remove from the scope's list. A key that follows its tenant's list gets its
        own: the tenant's without these.
    tenant
        The tenant's setting: its keys follow it unless they have their own.
    key
        One key's setting: `gw_<id>` or the bare 12-character id.
    """
    one_scope(tenant, key)
    chosen = names_or_all(names, all_models)
    settings = cli_settings()
    rows = _change(settings, tenant, key, partial(denying, settings, chosen))
    allowed_before = setting_of(settings, rows[0]).allowed
    missing = [name for name in chosen or () if name not in allowed_before]
    notes = [f"not allowed before either: {', '.join(missing)}"] if missing else []
    _show(settings, rows, json, notes)


@models.command(name="inherit")
def models_inherit(*, key: str, json: Json = False) -> None:
    """Make a key follow its tenant's models again (drop the key's own setting).

    Examples
    - `gateway models inherit --key gw_0123456789ab`

    Parameters
    ----------
    key
        The key: `gw_<id>` or the bare 12-character id.
    """
    settings = cli_settings()
    rows = _change(settings, None, key, partial(unless_same, update=ModelsUpdate(None, None)))
    _show(settings, rows, json, [])


def discovered_models(settings: Settings) -> frozenset[str] | None:
    """The models the gateways discovered, from their shared cache; None (with a warning on
    stderr) when that cannot be known."""
    if not settings.redis_url.reveal():
        print(
            "warning: REDIS_URL is not set; whether models are discovered is unknown",
            file=sys.stderr,
        )
        return None

    async def read(cache: Cache) -> list[DiscoveredCache]:
        # A list, so that "nothing shared" ([]) differs from "Redis unreachable" (None).
        blob = await cache.get_blob(f"{cache.prefix}:{DISCOVERED_SUFFIX}")
        try:
            return [] if blob is None else [_decode_discovered(blob)]
        except msgspec.DecodeError:
            return []

    unknown = "whether models are discovered is unknown"
    found = with_cache(settings, read, warning=f"could not reach Redis; {unknown}")
    if found is None:
        return None
    shared = found[0] if found else None
    if shared is None or time.time() - shared.at_s > settings.model_discovery_cache_ttl_s:
        print(f"warning: no gateway has discovered models lately; {unknown}", file=sys.stderr)
        return None
    return frozenset(canonical_model(name) for name in shared.models)


@models.command(name="list")
def models_list(*, tenant: str | None = None, key: str | None = None, json: Json = False) -> None:
    """Show the models a tenant or a key may use, and whether a backend serves each right now.

    Examples
    - `gateway models list --key gw_0123456789ab --json`

    Parameters
    ----------
    tenant
        The tenant's own setting.
    key
        One key's setting, after inheriting its tenant's: `gw_<id>` or the bare 12-character id.
    """
    one_scope(tenant, key)
    settings = cli_settings()
    key_id = key_id_of(key, settings) if key is not None else None
    row = with_database(
        settings, lambda database: pg_tenants.models_of(database, tenant=tenant, key_id=key_id)
    )
    if row is None:
        raise no_key(key) if key else no_tenant(tenant)
    discovered = discovered_models(settings)
    shown = models_in_force(settings, row, discovered)
    if json:
        print_json(shown)
        return
    head = f"models for {whose(shown)}{source_note(shown)}:"
    if not shown.models:
        if not shown.allow_all:
            print(f"{head} no models")
        else:
            why = "discovery unknown" if discovered is None else "none discovered right now"
            print(f"{head} all models ({why})")
        return
    print(f"{head} all models, of which discovered now:" if shown.allow_all else head)
    answer = {True: "yes", False: "no", None: "unknown"}
    print_table(["model", "discovered"], [(m.name, answer[m.discovered]) for m in shown.models])
