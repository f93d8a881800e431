"""`gateway backends add|remove|list|probe`: the model backends kept in Postgres.

A token is never taken from the command line (argv is visible to other users) and never shown:
listings say only where it comes from (`stored`, `env:VAR` or `none`).
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated, Literal

import anyio
import msgspec
from cyclopts import App, Parameter

from gateway.cli_common import CliError, Json, cli_settings, print_json, print_table, with_database
from gateway.config import Secret, Settings
from gateway.store import pg_backends
from gateway.store.pg import BackendRow, Conflict, Database, Rejected
from gateway.upstream.backends import spec_of
from gateway.upstream.probe import ProbeResult, probe_all
from gateway.upstream.spec import (
    DEFAULT_AUTH_HEADER,
    DEFAULT_AUTH_SCHEME,
    BackendSpec,
    Kind,
    Source,
    SpecError,
    default_spec,
)

_LIST_THEM = "list them with `gateway backends list`"

backends = App(
    name="backends",
    help="""Add, remove, list and probe the model backends.

    Examples
    - `gateway backends add gpu1 http://10.0.0.5:11434`
    - `gateway backends probe`
    """,
)

DryRun = Annotated[
    bool, Parameter(name="--dry-run", negative=(), help="Check everything, change nothing.")
]
DEFAULT_NOTE = "the backends table is empty: the gateway uses OLLAMA_URL as its one backend"


class ListedBackend(msgspec.Struct, frozen=True):
    """A backend as shown: `token` says where the token comes from, never what it is."""

    name: str
    url: str
    kind: str
    auth_header: str | None
    auth_scheme: str | None
    token: str
    priority: int
    max_parallel: int
    enabled: bool
    source: Source  # `environment`: the OLLAMA_URL default, used while the table is empty


class BackendChange(msgspec.Struct, frozen=True):
    action: Literal["add", "remove"]
    dry_run: bool
    backend: ListedBackend


def token_source(backend: BackendRow | BackendSpec, source: Source = "database") -> str:
    if backend.token is not None:
        return "env:OLLAMA_AUTH_TOKEN" if source == "environment" else "stored"
    return f"env:{backend.token_env}" if backend.token_env is not None else "none"


def listed(backend: BackendRow | BackendSpec, source: Source = "database") -> ListedBackend:
    return ListedBackend(
        backend.name,
        backend.url,
        backend.kind,
        backend.auth_header,
        backend.auth_scheme,
        token_source(backend, source),
        backend.priority,
        backend.max_parallel,
        backend.enabled,
        source,
    )


def _default(settings: Settings) -> BackendSpec:
    try:
        return default_spec(settings)
    except SpecError as exc:
        raise CliError(str(exc), 2) from None


def _or(value: str | None, default: str) -> str:
    return default if value is None else value


def _auth(backend: ListedBackend) -> str | None:
    if backend.auth_header is None:
        return None
    scheme = f"{backend.auth_scheme} " if backend.auth_scheme else ""
    return f"{backend.auth_header}: {scheme}<token>"


def _read_token() -> Secret:
    # A prompt without echo on a terminal; otherwise the piped value, e.g. from a secret store.
    text = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.read()
    token = text.strip()
    if not token:
        raise CliError("--token-stdin: no token on standard input", 2)
    return Secret(token)


@backends.command(name="add")
def backends_add(
    name: str,
    url: str,
    *,
    kind: Kind = "ollama",
    auth_header: str | None = None,
    auth_scheme: str | None = None,
    token_env: str | None = None,
    token_stdin: Annotated[bool, Parameter(negative=())] = False,
    priority: int = 0,
    max_parallel: int = 8,
    dry_run: DryRun = False,
    json: Json = False,
) -> None:
    """Add a backend. Running gateways hear of it through Postgres (NOTIFY gateway_backends).

    Examples
    - `gateway backends add gpu1 http://10.0.0.5:11434 --priority 10`
    - `gateway backends add vllm1 https://vllm.lan --kind openai --token-env VLLM_KEY`

    Parameters
    ----------
    name
        1-63 of a-z 0-9 . _ -, starting with a letter or digit.
    url
        Base URL, http:// or https://, without credentials, query or fragment.
    kind
        `ollama` (probed at /api/tags) or an OpenAI-compatible server (`openai`, /v1/models).
    auth_header
        Header that carries the token (default Authorization).
    auth_scheme
        Put before the token (default Bearer; an empty string sends the bare token).
    token_env
        Read the token from this environment variable of each gateway (and of `probe`).
    token_stdin
        Read the token from standard input and store it in Postgres.
    priority
        Higher is preferred.
    max_parallel
        Requests the gateway sends it at once.
    """
    if token_env is not None and token_stdin:
        raise CliError("give --token-env or --token-stdin, not both", 2)
    has_token = token_env is not None or token_stdin
    if not has_token and (auth_header is not None or auth_scheme is not None):
        raise CliError("--auth-header and --auth-scheme need --token-env or --token-stdin", 2)
    settings = cli_settings()
    try:
        spec = BackendSpec(
            name=name,
            url=url,
            kind=kind,
            auth_header=_or(auth_header, DEFAULT_AUTH_HEADER) if has_token else None,
            auth_scheme=_or(auth_scheme, DEFAULT_AUTH_SCHEME) if has_token else None,
            token_env=token_env,
            token=_read_token() if token_stdin else None,
            priority=priority,
            max_parallel=max_parallel,
        )
    except SpecError as exc:
        raise CliError(str(exc), 2) from None
    row = BackendRow(**msgspec.structs.asdict(spec))

    async def work(database: Database) -> tuple[BackendRow, bool]:
        was_empty = not await database.list_backends()
        try:
            return await pg_backends.add_backend(database, row, dry_run=dry_run), was_empty
        except Conflict:
            raise CliError(
                f"backend '{name}' already exists; remove it first with `gateway backends remove`"
            ) from None
        except Rejected as exc:
            raise CliError(f"backend '{name}' refused by the database ({exc})", 2) from None

    added, was_empty = with_database(settings, work)
    if token_env is not None and not os.environ.get(token_env):
        print(
            f"warning: {token_env} is not set here; gateways and `probe` need it in their "
            "environment",
            file=sys.stderr,
        )
    if json:
        print_json(BackendChange("add", dry_run, listed(added)))
        return
    shown = f"backend '{added.name}' ({added.kind} {added.url}, token {token_source(added)})"
    if dry_run:
        print(f"dry run: would add {shown}; nothing was written")
        return
    print(f"added {shown}")
    if was_empty:
        print("the backends table was empty: it now replaces the OLLAMA_URL default")


@backends.command(name="remove")
def backends_remove(name: str, *, dry_run: DryRun = False, json: Json = False) -> None:
    """Remove a backend (running gateways hear of it as of `add`).

    Examples
    - `gateway backends remove gpu1 --dry-run`

    Parameters
    ----------
    name
        The backend (`gateway backends list` shows them).
    """
    settings = cli_settings()

    async def work(database: Database) -> tuple[BackendRow | None, bool]:
        removed = await pg_backends.remove_backend(database, name, dry_run=dry_run)
        now_empty = removed is not None and not dry_run and not await database.list_backends()
        return removed, now_empty

    removed, now_empty = with_database(settings, work)
    if removed is None:
        raise CliError(f"no backend named '{name}'; {_LIST_THEM}")
    if json:
        print_json(BackendChange("remove", dry_run, listed(removed)))
        return
    if dry_run:
        print(f"dry run: would remove backend '{name}'; nothing was written")
        return
    print(f"removed backend '{name}'")
    if now_empty:
        print(f"{DEFAULT_NOTE} ({_default(settings).url})")


def _current(settings: Settings) -> list[tuple[BackendRow | BackendSpec, Source]]:
    rows = with_database(settings, lambda database: database.list_backends())
    if not rows:
        return [(_default(settings), "environment")]
    return [(row, "database") for row in rows]


@backends.command(name="list")
def backends_list(*, json: Json = False) -> None:
    """List the backends, highest priority first; tokens only as `stored`, `env:VAR` or `none`.

    Examples
    - `gateway backends list --json`
    """
    shown = [listed(backend, source) for backend, source in _current(cli_settings())]
    if json:
        print_json(shown)
        return
    print_table(
        ["name", "kind", "url", "auth", "token", "priority", "max parallel", "enabled"],
        [
            (
                b.name,
                b.kind,
                b.url,
                _auth(b),
                b.token,
                b.priority,
                b.max_parallel,
                "yes" if b.enabled else "no",
            )
            for b in shown
        ],
    )
    if shown[0].source == "environment":
        print(DEFAULT_NOTE)


def _targets(
    settings: Settings, name: str | None
) -> list[tuple[BackendSpec | SpecError, str, Source]]:
    targets: list[tuple[BackendSpec | SpecError, str, Source]] = []
    for backend, source in _current(settings):
        if name is None and not backend.enabled:
            continue
        if name is not None and backend.name != name:
            continue
        try:
            spec = spec_of(backend) if isinstance(backend, BackendRow) else backend
        except SpecError as exc:  # a row edited by hand past the CLI's checks
            targets.append((exc, backend.name, source))
        else:
            targets.append((spec, backend.name, source))
    if not targets:
        raise CliError(
            f"no backend named '{name}'; {_LIST_THEM}"
            if name
            else "no enabled backend to probe; add one with `gateway backends add`"
        )
    return targets


def _detail(result: ProbeResult) -> str:
    if result.status is not None and result.error is None:
        models = f", {result.models} models" if result.models is not None else ""
        return f"HTTP {result.status}{models}"
    parts = [f"HTTP {result.status}" if result.status is not None else None, result.error]
    detail = ", ".join(part for part in parts if part)
    return f"{detail}: {result.message}" if result.message else detail


@backends.command(name="probe")
def backends_probe(name: str | None = None, *, json: Json = False, timeout_s: float = 5.0) -> None:
    """Ask each enabled backend (or the one named) for its models, with the headers the proxy
    sends; exit 1 if any fails. Tokens from `--token-env` are read from this environment.

    Examples
    - `gateway backends probe`
    - `gateway backends probe gpu1 --timeout-s 2`

    Parameters
    ----------
    name
        Probe only this backend, even if it is disabled.
    timeout_s
        Give up on a backend after this many seconds.
    """
    if not timeout_s > 0:
        raise CliError("--timeout-s must be more than 0", 2)
    targets = _targets(cli_settings(), name)
    results = anyio.run(probe_all, targets, os.environ, timeout_s, backend="asyncio")
    if json:
        print_json(results)
    else:
        print_table(
            ["backend", "result", "detail", "latency ms"],
            [
                (
                    f"{r.name} (OLLAMA_URL)" if r.source == "environment" else r.name,
                    "ok" if r.ok else "failed",
                    _detail(r),
                    r.latency_ms,
                )
                for r in results
            ],
        )
    failed = sum(not r.ok for r in results)
    if failed:
        raise CliError(
            f"{failed} of {len(results)} backend(s) failed the probe; check each URL and token"
            " in the table above"
        )
