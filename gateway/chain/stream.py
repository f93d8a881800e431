"""The stream stage: relay an answer byte for byte, count its tokens, stop when the client goes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Protocol

import msgspec

from gateway.chain.answer import Answer
from gateway.chain.route import Endpoint, Kind
from gateway.chain.route import Protocol as WireProtocol
from gateway.chain.values import Outcome, Routed
from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
)
from gateway.http import Receive, Request, Responder
from gateway.tasks import Cancellable, cancel_and_wait
from gateway.telemetry import NoRequestTrace, RequestTrace, UpstreamTrace
from gateway.upstream.backends import Backends, Member
from gateway.upstream.breaker import BreakerState
from gateway.upstream.discovery import Discovery
from gateway.upstream.show import StrippedShow
from gateway.upstream.sse import JsonUsage, SseUsage
from gateway.upstream.usage import NdjsonUsage, Usage

NDJSON = b"application/x-ndjson"
SSE = b"text/event-stream; charset=utf-8"
JSON = b"application/json; charset=utf-8"


class UsageReader(Protocol):
    usage: Usage | None
    frames: int

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


def _reader(endpoint: Endpoint, routed: Routed) -> tuple[bytes, UsageReader]:
    """The content type to answer with, and what reads counts out of the answer on its way."""
    if endpoint.kind is Kind.SHOW:
        return JSON, StrippedShow()
    if endpoint.kind is Kind.EMBED:
        return JSON, JsonUsage()
    if endpoint.protocol is WireProtocol.OLLAMA:
        return (NDJSON if routed.stream else JSON), NdjsonUsage()
    if routed.stream:
        return SSE, SseUsage(strip_usage=routed.strip_usage)
    return JSON, JsonUsage()


class EndedEarly(BadGateway):
    message = "the model backend ended the answer early"


def upstream_status_error(status: int) -> GatewayError:
    """Our own error for a backend's error status; its body is never looked at."""
    if status == 404:
        return ModelNotFound()
    if status == 400:
        return InvalidRequest("the model backend rejected the request")
    if status in (429, 503):
        return ServiceUnavailable()
    return BadGateway()


NO_TRACE: RequestTrace = NoRequestTrace()


class _Retry(Exception):
    """The backend failed before the client saw a byte: another backend may answer instead."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.code)
        self.error = error


class Relay:
    """Sends one routed request to the best backend that hosts its model, fails over to the next
    while the client has seen nothing, and streams the answer back."""

    def __init__(self, backends: Backends, discovery: Discovery, *, queue_timeout_s: float) -> None:
        self._backends = backends
        self._discovery = discovery
        self._queue_timeout_s = queue_timeout_s

    async def forward(
        self,
        request: Request,
        endpoint: Endpoint,
        routed: Routed,
        responder: Responder,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        outcome: Outcome,
        trace: RequestTrace = NO_TRACE,
    ) -> None:
        started_s = time.perf_counter()
        relaying = Cancellable()

        async def cancel_when_client_leaves() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            # A server may report the disconnect of a client that got the whole answer.
            outcome.client_gone = not responder.ended
            relaying.cancel()

        # A bare asyncio task, not an anyio task group: this runs for every request, and a
        # task group's start and cancellation cost about 50 µs of CPU (the server is asyncio).
        watcher = asyncio.get_running_loop().create_task(cancel_when_client_leaves())
        attempt = _Attempt(request, endpoint, routed, responder, headers, outcome, started_s, trace)
        try:
            async with relaying:
                with trace.stage("upstream"):
                    await self._route(attempt)
        finally:
            # Ended before we go on, and its failure, if any, ours to raise: as in a task group.
            await cancel_and_wait(watcher)

    async def _route(self, attempt: _Attempt) -> None:
        """Try the backends that host the model, best first, until one answers."""
        principal = attempt.outcome.principal
        tenant, weight = (principal.tenant_id, principal.queue_weight) if principal else ("", 1)
        hosts = self._discovery.hosts(attempt.routed.model)
        protocol = attempt.endpoint.protocol
        tried: set[str] = set()
        failure: GatewayError = ModelNotFound()  # no backend that speaks this route hosts it
        while candidates := self._backends.candidates(hosts, protocol, tried):
            async with AsyncExitStack() as held:
                with attempt.trace.stage("queue"):
                    name = await held.enter_async_context(
                        self._backends.slots.slot(tenant, weight, candidates, self._queue_timeout_s)
                    )
                tried.add(name)
                member = self._backends.members.get(name)
                if member is None:
                    continue  # gone since it was chosen
                trial = member.breaker.state is BreakerState.HALF_OPEN
                if not member.breaker.allows():
                    continue  # its one half-open trial is out already
                attempt.outcome.backend = name
                member.enter()
                try:
                    await _relay(member, attempt, trial=trial)
                except _Retry as retry:
                    failure = retry.error
                else:
                    return
                finally:
                    member.leave()
        raise failure


class _Attempt(msgspec.Struct):
    request: Request
    endpoint: Endpoint
    routed: Routed
    responder: Responder
    extra_headers: list[tuple[bytes, bytes]]
    outcome: Outcome
    started_s: float
    trace: RequestTrace


def _operation(endpoint: Endpoint) -> str:
    """The GenAI operation name of an endpoint."""
    if endpoint.kind is Kind.EMBED:
        return "embeddings"
    if endpoint.kind is Kind.SHOW:
        return "show"
    return (
        "chat"
        if endpoint.path.endswith("chat") or endpoint.path.endswith("/chat/completions")
        else "text_completion"
    )


async def _relay(member: Member, attempt: _Attempt, *, trial: bool) -> None:
    """One backend's answer to the client; every way it ends is reported to its breaker."""
    reported = False

    def report(ok: bool) -> None:
        nonlocal reported
        reported = True
        member.breaker.succeeded() if ok else member.breaker.failed()

    spec = member.spec
    span = attempt.trace.upstream(
        spec.kind, _operation(attempt.endpoint), attempt.routed.model, spec.name
    )
    try:
        with span as up:
            await _relay_reporting(member, attempt, report, up)
    finally:
        if trial and not reported:
            # The client left before the trial showed how the backend is doing: let another try.
            member.breaker.abandoned()


async def _relay_reporting(
    member: Member, attempt: _Attempt, report: Callable[[bool], None], up: UpstreamTrace
) -> None:
    request, routed, responder, outcome = (
        attempt.request, attempt.routed, attempt.responder, attempt.outcome
    )  # fmt: skip
    async with AsyncExitStack() as stack:
        try:
            upstream = await stack.enter_async_context(
                member.backend.post(
                    attempt.endpoint.upstream_path,
                    routed.body,
                    request.request_id,
                    attempt.trace.traceparent(),
                )
            )
        except (BadGateway, GatewayTimeout) as exc:
            report(False)
            up.failed(exc.code)
            raise _Retry(exc) from None
        up.responded(upstream.status)
        if upstream.status != 200:
            with contextlib.suppress(BadGateway, GatewayTimeout):
                await upstream.discard()
            error = upstream_status_error(upstream.status)
            up.failed(error.code)
            if upstream.status >= 500:
                report(False)
                raise _Retry(error)
            report(True)  # it answered; the request was what it refused
            raise error
        content_type, usage = _reader(attempt.endpoint, routed)
        headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
        answer = Answer(
            responder,
            outcome,
            [*headers, *attempt.extra_headers],
            request.surface,
            whole=not routed.stream,
        )
        outcome.status = 200
        await answer.open()
        try:
            async for chunk in upstream.chunks():
                if outcome.ttfb_s is None:
                    outcome.ttfb_s = time.perf_counter() - attempt.started_s
                    up.first_token()
                forward = usage.feed(chunk)
                if forward:
                    await answer.send(forward)
            tail = usage.finish()
            if tail:
                await answer.send(tail)
            outcome.usage = usage.usage
            if outcome.usage is None and routed.stream:
                # A stream always ends with its counts; without them it was cut short.
                raise EndedEarly
            if outcome.usage is not None:
                up.usage(outcome.usage.prompt_tokens, outcome.usage.completion_tokens, None)
        except GatewayError as exc:
            report(False)
            up.failed(exc.code)
            outcome.error_code = exc.code
            await answer.fail(exc)
            return
        finally:
            # Also when the client left: what was generated until then is what is charged.
            outcome.completion_frames = usage.frames
        report(True)
        await answer.finish()
