"""`gateway …`: the operator's commands. Expected failures print one line and exit non-zero."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any, NoReturn

import msgspec
from cyclopts import App, Group, Parameter, validators

from gateway import __version__
from gateway.cli_audit import audit
from gateway.cli_backends import backends
from gateway.cli_common import (
    NAME_RULE,
    CliError,
    Json,
    cli_settings,
    no_tenant,
    print_json,
    print_table,
    with_database,
)
from gateway.cli_keys import keys
from gateway.cli_models import models
from gateway.cli_quota import budgets, limits
from gateway.cli_retention import retention
from gateway.cli_usage import usage
from gateway.config import ConfigError, load_settings
from gateway.store import pg_tenants
from gateway.store.pg import Conflict, Database, Rejected

app = App(
    name="gateway",
    version=__version__,
    help="""A secure gateway for self-hosted LLMs: serve it, and manage who may use it.

    Settings come from the environment: the admin commands need DATABASE_URL and use REDIS_URL
    when it is set; `gateway serve` needs both. `gateway COMMAND --help` shows examples.

    Examples
    - `gateway migrate`
    - `gateway tenants create acme --allow-all-models`
    - `gateway keys create --tenant acme --name ci`
    """,
)
tenants = App(
    name="tenants",
    help="""Create, list and update tenants.

    Examples
    - `gateway tenants create acme`
    - `gateway tenants list`
    """,
)
# Panels in `gateway --help`, in this order.
ACCESS = Group("Tenants, keys and what they may use", sort_key=1)
OBSERVE = Group("Usage and audit", sort_key=2)
OPERATE = Group("Running the gateway", sort_key=3)
for group, commands in (
    (ACCESS, (tenants, keys, models, limits, budgets)),
    (OBSERVE, (audit,)),
    (OPERATE, (backends, retention)),
):
    for command in commands:
        command.group = group  # a sub-App takes its panel from itself, not from `app.command`
        app.command(command)
app.command(usage, group=OBSERVE)


@app.command(group=OPERATE)
def serve(
    *,
    host: Annotated[str | None, Parameter(help="Address to listen on (GATEWAY_BIND_HOST).")] = None,
    port: Annotated[int | None, Parameter(help="Port to listen on (GATEWAY_BIND_PORT).")] = None,
    workers: Annotated[int | None, Parameter(help="Worker processes (GATEWAY_WORKERS).")] = None,
) -> None:
    """Run the gateway with hypercorn, configured by the environment.

    The options here override the environment's settings.

    Examples
    - `gateway serve`
    - `gateway serve --host 127.0.0.1 --port 8080 --workers 4`
    """
    from gateway.server import run_gateway

    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    run_gateway(settings, host=host, port=port, workers=workers)


@app.command(group=OPERATE)
def sim(
    *,
    host: str = "127.0.0.1",
    port: int = 11434,
    models: str | None = None,
    chunks: int = 8,
    token_delay_ms: float = 0.0,
    ttft_ms: float = 0.0,
) -> None:
    """Serve a simulated Ollama: for tests, demos and load tests without a GPU.

    Examples
    - `gateway sim --port 11434`
    - `gateway sim --models llama3.2:1b,mistral --token-delay-ms 20`

    Parameters
    ----------
    host
        Address to listen on.
    port
        Port to listen on.
    models
        Comma-separated model names it serves (default: llama3.2:1b,qwen2.5:0.5b).
    chunks
        Completion tokens in each answer.
    token_delay_ms
        Pause between streamed tokens.
    ttft_ms
        Pause before the first token.
    """
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


@app.command(group=OPERATE)
def migrate(*, status: bool = False) -> None:
    """Apply the SQL migrations that are not applied yet, in order.

    Each runs once, under an advisory lock: a second `gateway migrate` waits its turn.

    Examples
    - `gateway migrate`
    - `gateway migrate --status`

    Parameters
    ----------
    status
        Apply nothing: list each migration, when it was applied, and whether its file changed.
    """
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

    Examples
    - `gateway tenants create acme`
    - `gateway tenants create lab --allow-all-models`

    Parameters
    ----------
    name
        1-63 of a-z 0-9 . _ -, starting with a letter or digit.
    allow_all_models
        Let it use every model the backends serve, from the start.
    """

    async def work(database: Database) -> Any:
        try:
            return await pg_tenants.create_tenant(database, name, allow_all_models=allow_all_models)
        except Conflict:
            raise CliError(
                f"tenant '{name}' already exists; pick another name, or change it with"
                " `gateway tenants update`"
            ) from None
        except Rejected:
            raise CliError(f"invalid tenant name '{name}': use {NAME_RULE}", 2) from None

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
    """List tenants with their number of active keys.

    Examples
    - `gateway tenants list --json`
    """
    rows = with_database(cli_settings(), lambda database: pg_tenants.list_tenants(database))
    if json:
        print_json(rows)
    else:
        print_table(
            ["name", "id", "active keys", "queue weight", "created"],
            [(t.name, t.id, t.active_keys, t.queue_weight, t.created_at) for t in rows],
        )


@tenants.command(name="update")
def tenants_update(
    name: str,
    *,
    queue_weight: Annotated[int, Parameter(validator=validators.Number(gte=1, lte=1000))],
) -> None:
    """Change a tenant's settings.

    Examples
    - `gateway tenants update acme --queue-weight 3`

    Parameters
    ----------
    name
        The tenant to change.
    queue_weight
        Its share of a busy backend: when requests wait, tenants are served in turn, each taking
        up to this many requests per turn (1-1000; every tenant starts at 1).
    """
    settings = cli_settings()
    found = with_database(
        settings, lambda database: pg_tenants.set_queue_weight(database, name, queue_weight)
    )
    if found is None:
        raise no_tenant(name)
    print(f"tenant '{name}' now has queue weight {queue_weight}")


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
