"""`gateway audit tail` and `gateway audit export`: the operator's reading of the audit log."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, BinaryIO, Literal

import anyio
import msgspec
from cyclopts import App, Parameter

from gateway.cli_common import (
    CliError,
    Json,
    cli_settings,
    key_id_of,
    parse_duration,
    with_database,
)
from gateway.config import Settings
from gateway.errors import ServiceUnavailable
from gateway.store import pg_audit, pg_tenants
from gateway.store.pg import Database
from gateway.store.pg_audit import AuditFilter, AuditRow, AuditTail

audit = App(
    name="audit",
    help="""Read the audit log: the last requests, as they come, or exported.

    Examples
    - `gateway audit tail --follow`
    - `gateway audit export --since 24h --format csv --output audit.csv`
    """,
)

# Rows reach the log in batches after their requests end, so not quite in ts order: a follower
# reads again this far back from the newest row it has seen and skips the ones it printed.
FOLLOW_OVERLAP = timedelta(seconds=30)
POLL_S = 1.0
MAX_LINES = 10_000
EXPORT_BATCH = 1000
# Without a tenant, the first fetch may wait for Postgres to sort the whole range.
EXPORT_FETCH_TIMEOUT_S = 600.0

Follow = Annotated[bool, Parameter(name=["--follow", "-f"], negative=())]
Lines = Annotated[int, Parameter(name=["--lines", "-n"])]
Tenant = Annotated[
    str | None, Parameter(help="Only this tenant's requests (a deleted tenant: its id).")
]
Key = Annotated[str | None, Parameter(help="Only this key's requests: `gw_<id>` or the bare id.")]
Status = Annotated[
    str | None, Parameter(help="Only this status (429) or class of statuses (4xx, 5xx).")
]
Format = Annotated[Literal["jsonl", "csv"], Parameter(name="--format")]

_STATUS_HELP = "use a status code such as 429, or a class such as 4xx or 5xx"
_WHEN_HELP = (
    "use an ISO date or time (2025-01-31, 2025-01-31T08:00, UTC unless it names a zone) "
    "or a duration back from now (90m, 24h, 7d)"
)
# Each column is this wide at least; the last one takes what it needs.
_HEADERS = "time|status|tenant|key|request|model|backend|tokens in/out|ttfb ms|ms|error|request id"
_WIDTHS = (24, 6, 12, 15, 22, 14, 10, 13, 7, 7, 14, 0)
_FIELDS = AuditRow.__struct_fields__
_ENCODER = msgspec.json.Encoder()


def status_filter(text: str | None) -> dict[str, int]:
    """`AuditFilter`'s status bounds: `429` → 429 to 429; `4xx` → 400 to 499; None: any."""
    if text is None:
        return {}
    code = text.lower()
    if len(code) == 3 and code[0] in "12345":
        if code[1:] == "xx":
            return {"status_min": int(code[0]) * 100, "status_max": int(code[0]) * 100 + 99}
        if code.isascii() and code.isdigit():
            return {"status_min": int(code), "status_max": int(code)}
    raise CliError(f"invalid --status '{text}': {_STATUS_HELP}", 2)


def parse_when(option: str, text: str, now: datetime) -> datetime:
    """An ISO date or datetime (UTC when it names no zone), or `24h`-style: that long before now."""
    if text[-1:] in "smhdw" and text[:-1].isascii() and text[:-1].isdigit():
        try:
            return now - parse_duration(text)
        except (CliError, OverflowError):
            raise CliError(f"invalid {option} '{text}': {_WHEN_HELP}", 2) from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"invalid {option} '{text}': {_WHEN_HELP}", 2) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


async def _filter(
    database: Database,
    settings: Settings,
    tenant: str | None,
    key: str | None,
    limits: dict[str, int],
) -> AuditFilter:
    tenant_id = None
    if tenant is not None:
        tenant_id = await pg_tenants.tenant_id(database, tenant)
        if tenant_id is None:
            # A deleted tenant's rows remain, under its id.
            try:
                tenant_id = str(uuid.UUID(tenant))
            except ValueError:
                raise CliError(
                    f"no tenant named '{tenant}' (a deleted tenant's rows go by its id); list "
                    "them with `gateway tenants list`"
                ) from None
    return AuditFilter(
        key_prefix=settings.key_prefix,
        tenant_id=tenant_id,
        key_id=key_id_of(key, settings) if key is not None else None,
        **limits,
    )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _cells(row: AuditRow) -> list[str]:
    time = row.ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    tokens = f"{_number(row.prompt_tokens)}/{_number(row.completion_tokens)}"
    return [
        time,
        str(row.status),
        row.tenant or "-",
        row.key or "-",
        f"{row.method} {row.route}",
        row.model or "-",
        row.backend or "-",
        tokens,
        _number(row.ttfb_ms),
        _number(row.duration_ms),
        row.error_code or "-",
        row.request_id,
    ]


class _Printer:
    """Rows to stdout as they come, as an aligned table or one JSON object a line."""

    def __init__(self, json: bool) -> None:
        self.json = json
        if not json:
            self._line(_HEADERS.split("|"))

    def _line(self, cells: list[str]) -> None:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, _WIDTHS, strict=True)))

    def rows(self, rows: list[AuditRow]) -> None:
        for row in rows:
            if self.json:
                print(_ENCODER.encode(row).decode())
            else:
                self._line(_cells(row))
        sys.stdout.flush()


async def _follow(database: Database, where: AuditFilter, tail: AuditTail, out: _Printer) -> None:
    start = tail.start
    seen = {row.request_id: row.ts for row in tail.window}
    down = False
    while True:
        await anyio.sleep(POLL_S)
        try:
            rows = await pg_audit.audit_since(database, where, start - FOLLOW_OVERLAP)
        except ServiceUnavailable:
            if not down:
                print("warning: lost Postgres; retrying every second", file=sys.stderr)
            down = True
            continue
        if down:
            print("Postgres is back", file=sys.stderr)
            down = False
        fresh = []
        for row in rows:
            if row.request_id not in seen:
                seen[row.request_id] = row.ts
                fresh.append(row)
                start = max(start, row.ts)
        # The next read starts at `start - FOLLOW_OVERLAP`: older ids cannot come back.
        seen = {rid: ts for rid, ts in seen.items() if ts >= start - FOLLOW_OVERLAP}
        out.rows(fresh)


def _quiet_broken_pipe() -> None:
    # The reader went away (`| head`): stop quietly, and keep Python's exit flush from failing.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@audit.command(name="tail")
def tail(
    *,
    tenant: Tenant = None,
    key: Key = None,
    status: Status = None,
    lines: Lines = 20,
    follow: Follow = False,
    json: Json = False,
) -> None:
    """Print the last audited requests, oldest first; with --follow, go on printing new ones.

    Examples
    - `gateway audit tail --tenant acme --status 5xx -n 50`
    - `gateway audit tail --follow --json`

    Parameters
    ----------
    lines
        How many of the last requests to print first (0 to 10000).
    follow
        Keep printing new requests as they are written, until Ctrl-C.
    """
    limits = status_filter(status)
    if not 0 <= lines <= MAX_LINES:
        raise CliError(f"invalid --lines {lines}: use 0 to {MAX_LINES} (or `audit export`)", 2)
    settings = cli_settings()

    async def work(database: Database) -> None:
        where = await _filter(database, settings, tenant, key, limits)
        first = await pg_audit.audit_tail(
            database, where, lines, FOLLOW_OVERLAP if follow else None
        )
        out = _Printer(json)
        out.rows(first.rows)
        if follow:
            await _follow(database, where, first, out)

    try:
        with_database(settings, work)
    except BrokenPipeError:
        _quiet_broken_pipe()


class _Sink:
    """Writes batches of rows as JSON lines or CSV (with a header) to a binary stream."""

    def __init__(self, fmt: Literal["jsonl", "csv"], stream: BinaryIO) -> None:
        self.fmt = fmt
        self.stream = stream
        if fmt == "csv":
            self._csv([_FIELDS])

    def _csv(self, rows: list[tuple[object, ...]]) -> None:
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        self.stream.write(text.getvalue().encode())

    def write(self, rows: list[AuditRow]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(_ENCODER.encode_lines(rows))
            return
        self._csv([_csv_values(row) for row in rows])


def _csv_values(row: AuditRow) -> tuple[object, ...]:
    values = msgspec.to_builtins(row).values()  # ts as ISO 8601, None stays None (empty)
    return tuple("true" if v is True else "false" if v is False else v for v in values)


def _open(output: str) -> BinaryIO:
    try:
        return open(output, "wb")
    except OSError as exc:
        raise CliError(_unwritable(output, exc)) from None


def _unwritable(output: str, exc: OSError) -> str:
    return (
        f"cannot write {output}: {exc.strerror or type(exc).__name__}; choose a file in a "
        "directory you can write to, or leave out --output to write to stdout"
    )


def _discard(output: str | None, stream: BinaryIO) -> None:
    """A partial export is worse than none: it looks complete."""
    if output is not None:
        with contextlib.suppress(OSError):
            stream.close()
        with contextlib.suppress(OSError):
            os.unlink(output)


@audit.command(name="export")
def export(
    *,
    since: str,
    fmt: Format,
    until: str | None = None,
    tenant: Tenant = None,
    key: Key = None,
    status: Status = None,
    output: str | None = None,
) -> None:
    """Write audited requests from --since (up to --until) in time order, as JSON lines or CSV,
    to stdout or --output. The row count goes to stderr.

    Examples
    - `gateway audit export --since 7d --format jsonl > audit.jsonl`
    - `gateway audit export --since 2025-01-01 --until 2025-02-01 --format csv`

    Parameters
    ----------
    since
        From this time on: an ISO date or time (UTC unless it names a zone), or a duration back
        from now such as 24h or 7d.
    fmt
        jsonl (one JSON object a line) or csv (with a header line).
    until
        Before this time (same forms as --since); default: up to now.
    output
        Write to this file (replaced if it exists) instead of stdout.
    """
    now = datetime.now(UTC)
    start = parse_when("--since", since, now)
    end = parse_when("--until", until, now) if until is not None else None
    if end is not None and end <= start:
        raise CliError("--until must be later than --since", 2)
    limits = status_filter(status)
    settings = cli_settings()

    async def work(database: Database) -> int:
        where = await _filter(database, settings, tenant, key, limits)
        stream = sys.stdout.buffer if output is None else _open(output)
        count = 0
        try:
            sink = _Sink(fmt, stream)
            batches = pg_audit.audit_export(
                database,
                where,
                start,
                end,
                batch=EXPORT_BATCH,
                fetch_timeout_s=EXPORT_FETCH_TIMEOUT_S,
            )
            async with contextlib.aclosing(batches):
                async for rows in batches:
                    sink.write(rows)
                    count += len(rows)
            stream.flush()
        except ServiceUnavailable:
            _discard(output, stream)
            gone = f"; {output} was removed" if output is not None else ""
            raise CliError(f"lost Postgres after {count} rows{gone}; run it again") from None
        except BrokenPipeError:
            raise
        except OSError as exc:
            if output is None:
                raise CliError(f"cannot write to stdout: {exc.strerror}") from None
            _discard(output, stream)
            raise CliError(
                f"{_unwritable(output, exc)} (stopped after {count} rows; {output} was removed)"
            ) from None
        finally:
            if output is not None:
                stream.close()
        return count

    try:
        count = with_database(settings, work)
    except BrokenPipeError:
        _quiet_broken_pipe()
        return
    print(f"exported {count} rows" + (f" to {output}" if output else ""), file=sys.stderr)
