"""`gateway backends probe`: each backend asked for its model list, all at once, through the
proxy's own `Backend` with exactly the headers `auth_headers` gives it."""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio
import msgspec

from gateway.errors import BadGateway, GatewayTimeout
from gateway.upstream.backend import Backend
from gateway.upstream.spec import LISTING_PATH, BackendSpec, Source, SpecError, auth_headers


class ProbeResult(msgspec.Struct, frozen=True):
    """One backend's answer to its model listing. `error` is an exception's class name;
    `message` is ours (never a token, never the backend's body)."""

    name: str
    ok: bool
    status: int | None
    error: str | None
    message: str | None
    latency_ms: float
    models: int | None
    source: Source


class _OllamaTags(msgspec.Struct):
    models: list[msgspec.Raw]


class _OpenAIModels(msgspec.Struct):
    data: list[msgspec.Raw]


_LISTING_SHAPE: dict[str, type[_OllamaTags] | type[_OpenAIModels]] = {
    "ollama": _OllamaTags,
    "openai": _OpenAIModels,
}


async def probe(
    spec: BackendSpec, source: Source, environ: Mapping[str, str], timeout_s: float
) -> ProbeResult:
    """Ask the backend for its model list with exactly the proxy's transport and headers."""
    started = time.perf_counter()

    def result(
        status: int | None = None,
        error: str | None = None,
        message: str | None = None,
        models: int | None = None,
    ) -> ProbeResult:
        ok = error is None and status == 200
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        return ProbeResult(spec.name, ok, status, error, message, latency_ms, models, source)

    try:
        headers = auth_headers(spec, environ)
    except SpecError as exc:
        return result(error=type(exc).__name__, message=str(exc))
    header, value = headers[0] if headers else (None, None)
    try:
        with anyio.fail_after(timeout_s):
            async with Backend.open(
                spec.name,
                spec.base_url,
                auth_header=header,
                auth_value=value.reveal() if value is not None else None,
                connect_timeout_s=timeout_s,
                read_timeout_s=timeout_s,
                max_connections=1,
            ) as backend:
                status, body = await backend.get(LISTING_PATH[spec.kind])
    except (BadGateway, GatewayTimeout) as exc:
        return result(error=_root_cause(exc))
    except TimeoutError:
        return result(error="TimeoutError", message=f"no answer within {timeout_s:g} s")
    if status != 200:
        return result(status)
    try:
        listing = msgspec.json.decode(body, type=_LISTING_SHAPE[spec.kind])
    except msgspec.DecodeError:
        return result(status, "UnexpectedAnswer", f"not an {spec.kind} model list")
    models = listing.models if isinstance(listing, _OllamaTags) else listing.data
    return result(status, models=len(models))


def _root_cause(exc: BaseException) -> str:
    """The class of the error at the bottom of the chain (`ConnectionRefusedError`, `gaierror`,
    `SSLCertVerificationError`): what went wrong, where ours only says the backend failed."""
    for _ in range(8):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return type(exc).__name__


async def probe_all(
    targets: list[tuple[BackendSpec | SpecError, str, Source]],
    environ: Mapping[str, str],
    timeout_s: float,
) -> list[ProbeResult]:
    """Every target at once, in one task group; results in the targets' order."""
    results: dict[int, ProbeResult] = {}

    async def one(index: int, spec: BackendSpec, source: Source) -> None:
        results[index] = await probe(spec, source, environ, timeout_s)

    async with anyio.create_task_group() as group:
        for index, (spec, name, source) in enumerate(targets):
            if isinstance(spec, SpecError):
                error = type(spec).__name__
                results[index] = ProbeResult(name, False, None, error, str(spec), 0.0, None, source)
            else:
                group.start_soon(one, index, spec, source)
    return [results[index] for index in range(len(targets))]
