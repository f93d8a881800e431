"""What every `gateway …` command shares: settings, store access, one-line errors, output."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import anyio
import msgspec
from cyclopts import Parameter

from gateway.config import ConfigError, Settings, load_settings
from gateway.errors import ServiceUnavailable
from gateway.store.pg import Database
from gateway.store.redis import Cache

T = TypeVar("T")
# What the database's name checks accept, for tenants, keys and backends alike.
NAME_RULE = "1-63 of a-z 0-9 . _ -, starting with a letter or digit"
Json = Annotated[bool, Parameter(name="--json", negative=(), help="Machine-readable output.")]


class CliError(Exception):
    """An expected failure: its message is for the operator, its code for scripts."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def cli_settings() -> Settings:
    """Settings from the environment; Redis is optional for the CLI, Postgres is not."""
    try:
        settings = load_settings(os.environ, require_stores=False)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    if not settings.database_url.reveal():
        raise CliError(
            "DATABASE_URL: required but not set; export it, e.g."
            " DATABASE_URL=postgresql://gateway@localhost/gateway",
            2,
        )
    return settings


# Also what a database that was never migrated gives: the fix names both.
UNREACHABLE_POSTGRES = (
    "cannot reach Postgres at DATABASE_URL; check that it is running and the URL is right,"
    " then run `gateway migrate`"
)


def no_tenant(name: str | None) -> CliError:
    return CliError(f"no tenant named '{name}'; list them with `gateway tenants list`")


def no_key(prefix: str | None) -> CliError:
    return CliError(f"no key with prefix '{prefix}'; list them with `gateway keys list`")


def with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def run() -> T:
        async with Database.open(
            settings.database_url.reveal(), pool_size=1, timeout_s=settings.database_timeout_s
        ) as database:
            return await work(database)

    try:
        return anyio.run(run, backend="asyncio")
    except ServiceUnavailable:
        raise CliError(UNREACHABLE_POSTGRES) from None


def with_cache(
    settings: Settings, work: Callable[[Cache], Awaitable[T]], *, warning: str
) -> T | None:
    """`work` against Redis; None, and `warning: …` on stderr, when Redis cannot be reached.

    Callers check that REDIS_URL is set: without it there is nothing to warn about.
    """

    async def run() -> T:
        async with Cache.open(
            settings.redis_url.reveal(),
            prefix=settings.redis_key_prefix,
            timeout_s=settings.redis_timeout_s,
        ) as cache:
            return await work(cache)

    try:
        return anyio.run(run, backend="asyncio")
    except ServiceUnavailable:
        print(f"warning: {warning}", file=sys.stderr)
        return None


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str, *, allow_zero: bool = False) -> timedelta:
    """`90s`, `15m`, `24h`, `30d`, `2w` (and `0` when `allow_zero`); exit 2 on anything else."""
    number, unit = (text, "s") if allow_zero and text == "0" else (text[:-1], text[-1:])
    valid = unit in _UNITS and number.isascii() and number.isdigit()
    if valid and (allow_zero or int(number) > 0):
        try:
            return timedelta(**{_UNITS[unit]: int(number)})
        except OverflowError:
            pass
    zero = ", or 0" if allow_zero else ""
    raise CliError(
        f"invalid duration '{text}': use a whole number with s, m, h, d or w, such as 15m, 24h "
        f"or 30d{zero}",
        2,
    )


def key_id_of(prefix: str, settings: Settings) -> str:
    """The key id in `gw_<id>` (or a bare id, or a whole key), as `keys revoke` reads it."""
    return prefix.removeprefix(f"{settings.key_prefix}_")[:12]


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *([cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)
