"""`gateway …`: the operator's commands. Expected failures print one line and exit non-zero."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any, NoReturn

import anyio
import msgspec
from cyclopts import App, Parameter

from gateway import __version__
from gateway.cli_common import CliError, Json, cli_settings, print_json, print_table, with_database
from gateway.cli_models import models
from gateway.cli_quota import budgets, limits
from gateway.cli_usage import usage
from gateway.config import ConfigError, Settings, load_settings
from gateway.errors import ServiceUnavailable
from gateway.keys import generate_key
from gateway.services import hasher_for
from gateway.store.pg import Conflict, Database, Rejected
from gateway.store.redis import Cache

app = App(name="gateway", version=__version__, help="A secure gateway for self-hosted LLMs.")
tenants = App(name="tenants", help="Create and list tenants.")
keys = App(name="keys", help="Create, list and revoke API keys.")
app.command(tenants)
app.command(keys)
app.command(limits)
app.command(budgets)
app.command(usage)
app.command(models)


@app.command
def serve(*, host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Run the gateway with hypercorn (settings from the environment)."""
    from gateway.server import run_gateway

    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    run_gateway(settings, host=host, port=port, workers=workers)


@app.command
def sim(
    *,
    host: str = "127.0.0.1",
    port: int = 11434,
    models: str | None = None,
    chunks: int = 8,
    token_delay_ms: float = 0.0,
    ttft_ms: float = 0.0,
) -> None:
    """Serve the Ollama-compatible simulator (for tests, demos and load tests without a GPU)."""
    from gateway.server import run_simulator
    from gateway.upstream.sim import SimConfig

    names = tuple(name.strip() for name in (models or "").split(",") if name.strip())
    try:
        config = SimConfig(chunks=chunks, token_delay_ms=token_delay_ms, ttft_ms=ttft_ms)
        if names:
            config = msgspec.structs.replace(config, models=names)
    except ValueError as exc:
        raise CliError(f"invalid simulator settings: {exc}", 2) from None
    run_simulator(config, host=host, port=port)


@app.command
def migrate(*, status: bool = False) -> None:
    """Apply the SQL migrations in order (each once, under an advisory lock)."""
    from gateway.migrate import MigrationError, apply_migrations, migration_status

    url = cli_settings().database_url.reveal()
    try:
        if status:
            states = migration_status(url)
            print_table(
                ["migration", "applied", "checksum"],
                [(s.name, s.applied_at, "ok" if s.checksum_ok else "EDITED") for s in states],
            )
            return
        applied = apply_migrations(url)
    except MigrationError as exc:
        raise CliError(str(exc)) from None
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


@tenants.command(name="create")
def tenants_create(
    name: str,
    *,
    allow_all_models: Annotated[bool, Parameter(negative=())] = False,
    json: Json = False,
) -> None:
    """Create a tenant. It may use no model until `gateway models allow` says which.

    Parameters
    ----------
    allow_all_models
        Let it use every model the backends serve, from the start.
    """

    async def work(database: Database) -> Any:
        try:
            return await database.create_tenant(name, allow_all_models=allow_all_models)
        except Conflict:
            raise CliError(f"tenant '{name}' already exists") from None
        except Rejected:
            raise CliError(
                f"invalid tenant name '{name}': use 1-63 of a-z 0-9 . _ -, starting with a "
                "letter or digit",
                2,
            ) from None

    tenant = with_database(cli_settings(), work)
    if json:
        print_json(tenant)
    else:
        print(f"created tenant '{tenant.name}' ({tenant.id})")
        if tenant.allow_all_models:
            print("it may use every model the backends serve")
        else:
            print(f"it may use no model yet: `gateway models allow --tenant {tenant.name} MODEL…`")


@tenants.command(name="list")
def tenants_list(*, json: Json = False) -> None:
    """List tenants with their number of active keys."""
    rows = with_database(cli_settings(), lambda database: database.list_tenants())
    if json:
        print_json(rows)
    else:
        print_table(
            ["name", "id", "active keys", "created"],
            [(t.name, t.id, t.active_keys, t.created_at) for t in rows],
        )


def _parse_duration(text: str) -> timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise CliError(f"invalid duration '{text}': use a whole number with s, m, h, d or w", 2)
    return timedelta(**{units[unit]: int(number)})


@keys.command(name="create")
def keys_create(
    *, tenant: str, name: str, expires_in: str | None = None, json: Json = False
) -> None:
    """Create a key; the full key is printed this once and never again."""
    settings = cli_settings()
    expires_at = datetime.now(UTC) + _parse_duration(expires_in) if expires_in else None
    issued = generate_key(settings.key_prefix)
    secret_hash = hasher_for(settings).hash(issued.full_key)

    async def work(database: Database) -> datetime:
        tenant_id = await database.tenant_id(tenant)
        if tenant_id is None:
            raise CliError(f"no tenant named '{tenant}'")
        try:
            return await database.create_key(
                key_id=issued.key_id,
                tenant_id=tenant_id,
                name=name,
                secret_hash=secret_hash,
                expires_at=expires_at,
            )
        except Conflict:
            raise CliError(f"tenant '{tenant}' already has a key named '{name}'") from None
        except Rejected:
            raise CliError(f"invalid key name '{name}'", 2) from None

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
    """List keys (never their secrets)."""
    settings = cli_settings()
    rows = with_database(settings, lambda database: database.list_keys(tenant))
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
def keys_revoke(prefix: str, *, reason: str | None = None) -> None:
    """Revoke a key by its prefix (`gw_` + 12-character id); every replica drops it within 1 s."""
    settings = cli_settings()
    key_id = prefix.removeprefix(f"{settings.key_prefix}_")[:12]
    revoked = with_database(settings, lambda database: database.revoke_key(key_id, reason))
    if revoked is None:
        raise CliError(f"no key with prefix '{prefix}'")
    if revoked is False:
        print(f"key {settings.key_prefix}_{key_id} was already revoked")
        return
    if settings.redis_url.reveal():
        anyio.run(partial(_evict_shared, settings, key_id), backend="asyncio")
    print(f"revoked key {settings.key_prefix}_{key_id}")


async def _evict_shared(settings: Settings, key_id: str) -> None:
    # Gateways evict on the NOTIFY as well; this closes the gap if none is listening right now.
    try:
        async with Cache.open(
            settings.redis_url.reveal(), prefix=settings.redis_key_prefix, timeout_s=2
        ) as cache:
            await cache.evict_key(key_id)
    except ServiceUnavailable:
        print(
            "warning: could not reach Redis; running gateways evict the key themselves",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    # The pool's own retry warnings would repeat, less clearly, the one line we print.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    logging.getLogger("gateway.store").setLevel(logging.CRITICAL)
    try:
        app(list(argv) if argv is not None else None, exit_on_error=True)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
