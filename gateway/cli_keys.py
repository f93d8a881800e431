"""`gateway keys create|list|revoke|rotate|update`: API keys, their secrets and their prompt log.

A full key is printed once, when it is made (create, rotate), and never again. Changes commit
with a NOTIFY that running gateways act on at once.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from cyclopts import App, Parameter

from gateway.cli_common import (
    NAME_RULE,
    CliError,
    Json,
    cli_settings,
    key_id_of,
    no_key,
    no_tenant,
    parse_duration,
    print_json,
    print_table,
    with_cache,
    with_database,
)
from gateway.config import Settings
from gateway.keys import SECRET_LENGTH, generate_key
from gateway.services import hasher_for
from gateway.store import pg_keys, pg_tenants
from gateway.store.pg import Conflict, Database, Rejected
from gateway.store.pg_keys import KeySettings

keys = App(
    name="keys",
    help="""Create, list, revoke, rotate and update API keys.

    Examples
    - `gateway keys create --tenant acme --name ci`
    - `gateway keys list --tenant acme`
    """,
)

MAX_RETENTION_DAYS = 2**31 - 1  # the column is an integer
KeyPrefix = Annotated[str, Parameter(help="The key: `gw_<id>`, the bare id, or the whole key.")]


class PromptLogSetting(msgspec.Struct, frozen=True):
    """A key's prompt log: `retention_days` as stored (None: the configured default)."""

    prefix: str
    tenant: str
    name: str
    prompt_log: bool
    retention_days: int | None
    retention_days_in_force: int


@keys.command(name="create")
def keys_create(
    *, tenant: str, name: str, expires_in: str | None = None, json: Json = False
) -> None:
    """Create a key; the full key is printed this once and never again.

    Examples
    - `gateway keys create --tenant acme --name ci`
    - `gateway keys create --tenant acme --name bot --expires-in 30d --json`

    Parameters
    ----------
    tenant
        The tenant the key belongs to (`gateway tenants list`).
    name
        Unique within its tenant: 1-63 of a-z 0-9 . _ -, starting with a letter or digit.
    expires_in
        Stop accepting it after this long: e.g. 90m, 24h, 30d, 2w. Default: never.
    """
    settings = cli_settings()
    expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
    issued = generate_key(settings.key_prefix)
    secret_hash = hasher_for(settings).hash(issued.full_key)

    async def work(database: Database) -> datetime:
        tenant_id = await pg_tenants.tenant_id(database, tenant)
        if tenant_id is None:
            raise no_tenant(tenant)
        try:
            return await pg_keys.create_key(
                database,
                key_id=issued.key_id,
                tenant_id=tenant_id,
                name=name,
                secret_hash=secret_hash,
                expires_at=expires_at,
            )
        except Conflict:
            raise CliError(
                f"tenant '{tenant}' already has a key named '{name}'; pick another name"
            ) from None
        except Rejected:
            raise CliError(f"invalid key name '{name}': use {NAME_RULE}", 2) from None

    created_at = with_database(settings, work)
    prefix = f"{settings.key_prefix}_{issued.key_id}"
    if json:
        print_json(
            {
                "key": issued.full_key,
                "prefix": prefix,
                "key_id": issued.key_id,
                "tenant": tenant,
                "name": name,
                "created_at": created_at,
                "expires_at": expires_at,
            }
        )
        return
    print(f"created key '{name}' for tenant '{tenant}' ({prefix})")
    print("this is the only time the key is shown; store it now:\n")
    print(issued.full_key)


@keys.command(name="list")
def keys_list(*, tenant: str | None = None, json: Json = False) -> None:
    """List keys (never their secrets).

    Examples
    - `gateway keys list --tenant acme`

    Parameters
    ----------
    tenant
        Only this tenant's keys.
    """
    settings = cli_settings()
    rows = with_database(settings, lambda database: pg_keys.list_keys(database, tenant))
    if json:
        print_json(
            [
                {"prefix": f"{settings.key_prefix}_{row.key_id}", **msgspec.to_builtins(row)}
                for row in rows
            ]
        )
        return
    print_table(
        ["prefix", "tenant", "name", "created", "expires", "revoked"],
        [
            (
                f"{settings.key_prefix}_{r.key_id}",
                r.tenant,
                r.name,
                r.created_at,
                r.expires_at,
                r.revoked_at,
            )
            for r in rows
        ],
    )


@keys.command(name="revoke")
def keys_revoke(prefix: KeyPrefix, *, reason: str | None = None) -> None:
    """Revoke a key by its prefix (`gw_` + 12-character id); every replica drops it within 1 s.

    Examples
    - `gateway keys revoke gw_0123456789ab --reason leaked`

    Parameters
    ----------
    reason
        Why, kept in the record of revocations.
    """
    settings = cli_settings()
    key_id = key_id_of(prefix, settings)
    revoked = with_database(settings, lambda database: pg_keys.revoke_key(database, key_id, reason))
    if revoked is None:
        raise no_key(prefix)
    if revoked is False:
        print(f"key {settings.key_prefix}_{key_id} was already revoked")
        return
    # Gateways evict on the NOTIFY as well; this closes the gap if none is listening right now.
    if settings.redis_url.reveal():
        with_cache(
            settings,
            lambda cache: cache.evict_key(key_id),
            warning="could not reach Redis; running gateways evict the key themselves",
        )
    print(f"revoked key {settings.key_prefix}_{key_id}")


def _forget_cached(settings: Settings, key_id: str) -> None:
    """After the change's own notice: drop the shared entry, then notify again.

    Between the first notice and the eviction a gateway may re-read the old principal from
    Redis; the second notice comes when Redis holds nothing stale.
    """
    stale = (
        "gateways may serve the key's old state until their cached entry expires "
        f"(within {settings.redis_key_cache_ttl_s} s)"
    )
    if not settings.redis_url.reveal():
        print(f"warning: REDIS_URL is not set, so {stale}", file=sys.stderr)
        return
    with_cache(
        settings, lambda cache: cache.evict_key(key_id), warning=f"could not reach Redis; {stale}"
    )
    with_database(settings, lambda database: database.notify_principals(f"k:{key_id}"))


@keys.command(name="rotate")
def keys_rotate(prefix: KeyPrefix, *, grace: str = "24h", json: Json = False) -> None:
    """Give a key a new secret, printed this once; the old secret works for the grace period.

    Examples
    - `gateway keys rotate gw_0123456789ab --grace 7d`

    Parameters
    ----------
    grace
        How long the old secret keeps working: e.g. 30m, 24h, 7d. `0` ends it at once. A second
        rotation ends the grace of the first.
    """
    settings = cli_settings()
    grace_s = parse_duration(grace, allow_zero=True).total_seconds()
    key_id = key_id_of(prefix, settings)
    # Same id, new secret: the prefix clients and operators know stays the same.
    secret = generate_key(settings.key_prefix).full_key[-SECRET_LENGTH:]
    new_key = f"{settings.key_prefix}_{key_id}{secret}"
    secret_hash = hasher_for(settings).hash(new_key)

    async def work(database: Database) -> tuple[KeySettings, KeySettings] | None:
        try:
            return await pg_keys.rotate_key(database, key_id, secret_hash, grace_s)
        except Rejected:
            raise CliError(f"invalid grace '{grace}': too long; use a shorter one", 2) from None

    changed = with_database(settings, work)
    if changed is None:
        raise no_key(prefix)
    before, after = changed
    shown = f"{settings.key_prefix}_{key_id}"
    if after.revoked_at is not None:
        raise CliError(f"key {shown} is revoked and cannot be rotated; create a new key")
    _forget_cached(settings, key_id)
    if json:
        print_json(
            {
                "key": new_key,
                "prefix": shown,
                "key_id": key_id,
                "tenant": after.tenant,
                "name": after.name,
                "previous_secret_expires_at": after.previous_secret_expires_at,
                "expires_at": after.expires_at,
            }
        )
        return
    print(f"rotated key '{after.name}' of tenant '{after.tenant}' ({shown})")
    ended = before.previous_secret_expires_at
    if ended is not None and ended > datetime.now(UTC):
        print("the secret rotated out before this one stopped working now")
    until = after.previous_secret_expires_at
    print(
        "the old secret stopped working now"
        if until is None
        else f"the old secret keeps working until {until.astimezone(UTC):%Y-%m-%d %H:%M:%SZ}"
    )
    print("this is the only time the new key is shown; store it now:\n")
    print(new_key)


def _setting(settings: Settings, row: KeySettings) -> PromptLogSetting:
    days = row.prompt_log_retention_days
    return PromptLogSetting(
        prefix=f"{settings.key_prefix}_{row.key_id}",
        tenant=row.tenant,
        name=row.name,
        prompt_log=row.prompt_log,
        retention_days=days,
        retention_days_in_force=days or settings.prompt_log_default_retention_days,
    )


def _describe(shown: PromptLogSetting) -> str:
    kept = f"{shown.retention_days_in_force} days" + ("" if shown.retention_days else " (default)")
    return f"on, rows kept {kept}" if shown.prompt_log else f"off (when on, rows kept {kept})"


def _days(text: str) -> int:
    if text.isascii() and text.isdigit() and 0 < int(text) <= MAX_RETENTION_DAYS:
        return int(text)
    raise CliError(
        f"invalid --retention-days '{text}': use a whole number from 1 to {MAX_RETENTION_DAYS}, "
        "or 'default'",
        2,
    )


@keys.command(name="update")
def keys_update(
    prefix: KeyPrefix,
    *,
    prompt_log: str | None = None,
    retention_days: str | None = None,
    dry_run: Annotated[bool, Parameter(negative=())] = False,
    json: Json = False,
) -> None:
    """Change a key's prompt log (off by default). Gateways apply it at once.

    Examples
    - `gateway keys update gw_0123456789ab --prompt-log on --retention-days 7`

    Parameters
    ----------
    prompt_log
        `on` to keep this key's requests and answers in the prompt log, `off` to stop.
    retention_days
        How many days its prompt-log rows are kept, or `default`
        (PROMPT_LOG_DEFAULT_RETENTION_DAYS).
    dry_run
        Show what would change; write nothing.
    """
    if prompt_log is None and retention_days is None:
        raise CliError("nothing to change: give --prompt-log on|off or --retention-days N", 2)
    if prompt_log not in (None, "on", "off"):
        raise CliError(f"invalid --prompt-log '{prompt_log}': use on or off", 2)
    days = None if retention_days in (None, "default") else _days(retention_days)
    enabled = None if prompt_log is None else prompt_log == "on"
    settings = cli_settings()
    key_id = key_id_of(prefix, settings)

    async def work(database: Database) -> tuple[KeySettings, KeySettings] | None:
        if not dry_run:
            return await pg_keys.set_prompt_log(
                database,
                key_id,
                enabled=enabled,
                retention_days=days,
                retention_set=retention_days is not None,
            )
        before = await pg_keys.key_settings(database, key_id)
        if before is None:
            return None
        after = msgspec.structs.replace(
            before,
            prompt_log=before.prompt_log if enabled is None else enabled,
            prompt_log_retention_days=(
                before.prompt_log_retention_days if retention_days is None else days
            ),
        )
        return before, after

    changed = with_database(settings, work)
    if changed is None:
        raise no_key(prefix)
    if not dry_run:
        _forget_cached(settings, key_id)
    before, after = (_setting(settings, row) for row in changed)
    if json:
        print_json({"dry_run": dry_run, "before": before, "after": after})
        return
    whose = f"key {after.prefix} ('{after.name}' of tenant '{after.tenant}')"
    if not dry_run:
        print(f"prompt log for {whose}: {_describe(after)}")
        return
    print(f"dry run, nothing written; prompt log for {whose}")
    print(f"  now:   {_describe(before)}")
    print(f"  would: {_describe(after)}")
