"""Running the real `gateway` CLI in a subprocess, as an operator or a script would."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from typing import Any

import msgspec
import psycopg

from tests.integration.quota_support import FAST_ARGON2
from tests.secret_watch import WATCH


def gateway(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS...` with `env` on top of this process's environment (minus its stores),
    and `stdin` as its standard input when given."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**clean, **FAST_ARGON2, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr
    watch_cli(args, env, stdin, result)
    return result


def watch_cli(
    args: tuple[str, ...],
    env: dict[str, str],
    stdin: str | None,
    result: subprocess.CompletedProcess[str],
) -> None:
    """Record the secrets a CLI call was given or handed out, and keep its output to be scanned:
    the key `keys create|rotate` hands the operator is allowed in that output, nowhere else."""
    WATCH.record_env(env)
    if stdin is not None and "--token-stdin" in args:
        WATCH.record_token(stdin)
    command = f"`gateway {' '.join(args[:2])}`"
    issued: frozenset[str] = frozenset()
    if args[:2] in (("keys", "create"), ("keys", "rotate")) and result.returncode == 0:
        issued = WATCH.record_handout(result.stdout)
    WATCH.see(f"{command} stdout", result.stdout, allowed=issued)
    WATCH.see(f"{command} stderr", result.stderr)


def ok(env: dict[str, str], *args: str) -> str:
    result = gateway(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(env: dict[str, str], *args: str) -> Any:
    return msgspec.json.decode(ok(env, *args, "--json"))


class Tenant(msgspec.Struct):
    name: str
    id: str
    keys: list[str]  # prefixes, gw_<id>


def make_tenant(database_url: str, name: str, *key_names: str, allow_all: bool = False) -> Tenant:
    """A tenant and its keys, straight into Postgres: these tests are about other commands."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO gateway.tenants (name, allow_all_models) VALUES (%s, %s) "
            "RETURNING id::text",
            (name, allow_all),
        ).fetchone()
        assert row is not None
        prefixes = []
        for key_name in key_names:
            key = secrets.token_hex(6)
            conn.execute(
                "INSERT INTO gateway.api_keys (id, tenant_id, name, secret_hash, created_at) "
                "VALUES (%s, %s, %s, 'not-a-hash', clock_timestamp())",
                (key, row[0], key_name),
            )
            prefixes.append(f"gw_{key}")
    return Tenant(name, row[0], prefixes)


def key_id(prefix: str) -> str:
    return prefix.removeprefix("gw_")


def stored(database_url: str, sql: str, *params: object) -> tuple[Any, ...]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return tuple(row)
