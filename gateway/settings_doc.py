"""Every setting's meaning, and the settings table of docs/DEPLOYMENT.md rendered from `Settings`.

`python -m gateway.settings_doc --write` regenerates the table; `--check` fails when it is stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
import msgspec.inspect as mi

from gateway.config import Secret, Settings

BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
COMMAND = "python -m gateway.settings_doc --write"
DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "DEPLOYMENT.md"

# One line per environment variable: what it means to an operator. A new Settings field needs
# its line here, or tests/unit/test_settings_doc.py fails.
DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "GATEWAY_BIND_HOST": "address to listen on; inside a container it must be `0.0.0.0`",
        "GATEWAY_BIND_PORT": "port to listen on",
        "GATEWAY_WORKERS": "hypercorn worker processes, each with its own pools and caches; "
        "about one per CPU core",
        "GATEWAY_LOG_LEVEL": "log level",
        "GATEWAY_LOG_FORMAT": "`json` for log shippers, `text` for people",
        "GATEWAY_REQUEST_ID_HEADER": "header that carries the request id in and out "
        "(a well-formed incoming value is kept, otherwise a new one is made)",
        "GATEWAY_TRUSTED_PROXIES": "addresses or CIDR networks of the reverse proxies whose "
        "`X-Forwarded-For` is believed for the client IP; from any other peer it is ignored",
        "GATEWAY_KEY_PREFIX": "prefix of issued API keys (`gw_…`); changing it invalidates "
        "every existing key",
        "OLLAMA_URL": "the one backend, named `default`, while the `backends` table is empty; "
        "`OLLAMA_BASE_URL`, the earlier name, is read when this is not set",
        "OLLAMA_CONNECT_TIMEOUT_S": "seconds to wait for a TCP connection to a backend",
        "OLLAMA_READ_TIMEOUT_S": "seconds to wait between bytes from a backend "
        "(long, for slow generations)",
        "OLLAMA_MAX_CONNECTIONS": "connection pool size per backend (also the `default` "
        "backend's `max_parallel`)",
        "OLLAMA_AUTH_TOKEN": "token sent to the `default` backend (for one behind an auth "
        "proxy); empty means none; never logged",
        "OLLAMA_AUTH_HEADER": "header that carries `OLLAMA_AUTH_TOKEN`",
        "OLLAMA_AUTH_SCHEME": "scheme put before the token in that header (empty: the bare token)",
        "BACKEND_QUEUE_SIZE": "requests that may wait for a busy backend, per process; "
        "more get 503",
        "BACKEND_QUEUE_TIMEOUT_S": "how long a request waits for a backend slot before a 503",
        "BREAKER_FAILURES": "failures in a row (connection errors, 5xx, broken streams) that "
        "open a backend's circuit breaker",
        "BREAKER_OPEN_S": "how long an open breaker keeps requests away before one trial "
        "request goes through",
        "MODEL_DISCOVERY_REFRESH_S": "how often each gateway asks every backend for its models",
        "MODEL_DISCOVERY_CACHE_TTL_S": "how long a backend's discovered model list counts; "
        "older, the backend hosts no model. Keep it above `MODEL_DISCOVERY_REFRESH_S`",
        "DATABASE_URL": "Postgres connection URL; required to serve",
        "DATABASE_POOL_SIZE": "Postgres connections per process",
        "DATABASE_TIMEOUT_S": "deadline for getting a Postgres connection and for each query; "
        "past it the request fails closed",
        "REDIS_URL": "Redis URL; required to serve",
        "REDIS_KEY_PREFIX": "prefix of every Redis key the gateway writes, so deployments can "
        "share one Redis",
        "REDIS_TIMEOUT_S": "deadline for each Redis call and for getting a connection; past it "
        "the request fails closed (503)",
        "REDIS_MAX_CONNECTIONS": "Redis connections per process; a burst waits for a free one",
        "REDIS_KEY_CACHE_TTL_S": "seconds a resolved key stays in the Redis cache all replicas "
        "share",
        "LOCAL_KEY_CACHE_TTL_S": "seconds a resolved key stays in each process's own cache",
        "LOCAL_KEY_CACHE_SIZE": "entries in each process's own key cache; the oldest go first",
        "DEFAULT_RPM": "requests per minute of a tenant that sets none, inherited by its keys "
        "that set none (`0`: nothing allowed)",
        "DEFAULT_TPM": "tokens per minute, likewise",
        "DEFAULT_CONCURRENT": "requests in flight at once, likewise",
        "LEASE_TTL_S": "how long an in-flight request's lease outlives its last renewal; the "
        "requests of a replica that died stop counting after at most this long",
        "LEDGER_FLUSH_INTERVAL_S": "how often settled usage is written to the Postgres ledger",
        "MAX_REQUEST_BODY_BYTES": "largest request body accepted (413 above)",
        "MAX_NUM_PREDICT": "cap on the completion tokens a request may ask for "
        "(`options.num_predict`, `max_tokens`, `max_completion_tokens`)",
        "CLIENT_HEADER_TIMEOUT_S": "seconds a connection may take to send a whole request head, "
        "and may sit idle between requests (keep-alive); then it is closed",
        "MAX_HEADER_BYTES": "largest request line and headers accepted (431 above)",
        "CLIENT_BODY_TIMEOUT_S": "seconds a client may take to send its whole request body "
        "(408 after)",
        "GATEWAY_MAX_CONCURRENT_REQUESTS": "requests each worker process serves at once; more "
        "get 503 with `Retry-After` at once, never queued",
        "ARGON2_TIME_COST": "argon2id passes",
        "ARGON2_MEMORY_COST_KIB": "argon2id memory per hash, in KiB",
        "ARGON2_PARALLELISM": "argon2id lanes",
        "ARGON2_MAX_CONCURRENT_VERIFIES": "argon2 hashes and verifies running at once per "
        "process (each takes `ARGON2_MEMORY_COST_KIB`)",
        "AUTH_FAILURE_RATE_LIMIT_PER_IP_PER_MIN": "failed authentications allowed per client IP "
        "(IPv6: per /64) per minute; past it, 429 before any key check (`0`: no throttle)",
        "AUDIT_BUFFER_SIZE": "audit rows held in memory while Postgres is slow or away; when "
        "full, new proxied requests get 503 until it drains",
        "PROMPT_LOG_DEFAULT_RETENTION_DAYS": "days an opted-in key's prompts are kept when the "
        "key sets no retention of its own",
        "AUDIT_LOG_DEFAULT_RETENTION_DAYS": "days audit rows are kept for tenants without their "
        "own retention, and for rows of no tenant",
        "AUDIT_FLUSH_INTERVAL_S": "how often buffered audit rows are written (sooner once a "
        "quarter of the buffer is used)",
        "RETENTION_SWEEP_INTERVAL_S": "how often the retention sweep runs (one replica at a time)",
        "SHUTDOWN_GRACE_S": "on SIGTERM, how long live requests and streams may run on before "
        "the audit buffer is flushed and the process exits",
        "PLAYGROUND_ENABLED": "serve the browser playground at `/playground` "
        "(see [Playground](PLAYGROUND.md))",
    }
)


class SettingRow(msgspec.Struct, frozen=True):
    """One line of the table: what an operator sets, in the words the table prints."""

    env: str
    kind: str
    default: str
    meaning: str


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bounds(info: mi.IntType | mi.FloatType) -> str:
    low = f"≥ {_number(info.ge)}" if info.ge is not None else ""
    low = f"> {_number(info.gt)}" if info.gt is not None else low
    high = f"≤ {_number(info.le)}" if info.le is not None else ""
    high = f"< {_number(info.lt)}" if info.lt is not None else high
    return ", ".join(part for part in (low, high) if part)


def describe_type(info: mi.Type) -> str:
    """The type and its constraint, as an operator reads it."""
    if isinstance(info, mi.IntType | mi.FloatType):
        name = "integer" if isinstance(info, mi.IntType) else "number"
        bounds = _bounds(info)
        return f"{name}, {bounds}" if bounds else name
    if isinstance(info, mi.BoolType):
        return "boolean (`true` / `false`)"
    if isinstance(info, mi.StrType):
        return f"string matching `{info.pattern}`" if info.pattern else "string"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(f"`{value}`" for value in info.values)
    if isinstance(info, mi.VarTupleType | mi.ListType | mi.SetType | mi.FrozenSetType):
        return "comma-separated list"
    if isinstance(info, mi.CustomType) and info.cls is Secret:
        return "secret"
    if isinstance(info, mi.UnionType):
        parts = [describe_type(part) for part in info.types if not isinstance(part, mi.NoneType)]
        return " or ".join(parts) + (", optional" if len(parts) < len(info.types) else "")
    return type(info).__name__.removesuffix("Type").lower()


def _is_secret(info: mi.Type) -> bool:
    if isinstance(info, mi.UnionType):
        return any(_is_secret(part) for part in info.types)
    return isinstance(info, mi.CustomType) and info.cls is Secret


def describe_default(value: Any, *, secret: bool) -> str:
    """The default as an operator would write it in the environment; a secret never shows."""
    if secret or value is None:
        return "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`"
    if isinstance(value, tuple | list | frozenset | set):
        return f"`{','.join(str(item) for item in value)}`" if value else "(empty)"
    text = str(value)
    return f"`{text}`" if text else "(empty)"


def _default_of(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return None


def setting_rows(descriptions: Mapping[str, str] = DESCRIPTIONS) -> list[SettingRow]:
    """One row per Settings field, in the Struct's order; a missing description is `KeyError`."""
    rows = []
    for field in msgspec.structs.fields(Settings):
        info = mi.type_info(field.type)
        rows.append(
            SettingRow(
                env=field.encode_name,
                kind=describe_type(info),
                default=describe_default(_default_of(field), secret=_is_secret(info)),
                meaning=descriptions[field.encode_name],
            )
        )
    return rows


def _cell(text: str) -> str:
    # A `|` inside a cell (a regex alternation, say) would split the Markdown table.
    return text.replace("|", "\\|")


def render_table(rows: Sequence[SettingRow]) -> str:
    lines = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    lines += [
        f"| `{row.env}` | {_cell(row.kind)} | {_cell(row.default)} | {_cell(row.meaning)} |"
        for row in rows
    ]
    return "\n".join(lines)


def splice(document: str, table: str) -> str:
    """The document with the text between the two markers replaced by `table`."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document needs {BEGIN} followed by {END}")
    head = document[: start + len(BEGIN)]
    return (
        f"{head}\n<!-- generated by `{COMMAND}`; do not edit by hand -->\n{table}\n{document[end:]}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.settings_doc", description=__doc__)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the table in the file")
    action.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    parser.add_argument("--file", type=Path, default=DOCUMENT, help="the Markdown file")
    args = parser.parse_args(argv)
    missing = [
        f.encode_name for f in msgspec.structs.fields(Settings) if f.encode_name not in DESCRIPTIONS
    ]
    if missing:
        print(
            f"error: no description in gateway/settings_doc.py for {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    table = render_table(setting_rows())
    if not (args.write or args.check):
        print(table)
        return 0
    try:
        current = args.file.read_text(encoding="utf-8")
        wanted = splice(current, table)
    except (OSError, ValueError) as exc:
        print(f"error: {args.file.name}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if wanted != current:
            print(f"error: the settings table is stale; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        args.file.write_text(wanted, encoding="utf-8")
        print(f"updated the settings table in {args.file.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
