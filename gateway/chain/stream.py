"""The stream stage: relay an answer byte for byte, count its tokens, stop when the client goes."""

from __future__ import annotations

import time
from typing import Protocol

import anyio

from gateway.chain.route import Endpoint, Kind
from gateway.chain.route import Protocol as WireProtocol
from gateway.chain.values import Outcome, Routed
from gateway.errors import (
    BadGateway,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
    stream_error_frame,
)
from gateway.http import Receive, Request, Responder
from gateway.upstream.backend import Backend
from gateway.upstream.show import StrippedShow
from gateway.upstream.sse import JsonUsage, SseUsage
from gateway.upstream.transcript import TRANSCRIPT_MAX_BYTES
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


async def _pass_on(data: bytes, responder: Responder, outcome: Outcome) -> None:
    await responder.chunk(data)
    if outcome.transcript is not None:
        outcome.transcript += data[: TRANSCRIPT_MAX_BYTES - len(outcome.transcript)]


class Relay:
    """Sends one routed request to a backend and streams the answer to the client."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def forward(
        self,
        request: Request,
        endpoint: Endpoint,
        routed: Routed,
        responder: Responder,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        outcome: Outcome,
    ) -> None:
        started_s = time.perf_counter()
        failure: GatewayError | None = None
        async with anyio.create_task_group() as tg:

            async def cancel_when_client_leaves() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                # A server may report the disconnect of a client that got the whole answer.
                outcome.client_gone = not responder.ended
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_client_leaves)
            try:
                await self._relay(request, endpoint, routed, responder, headers, outcome, started_s)
            except GatewayError as exc:
                # Raised outside the task group, so callers see our error, not an ExceptionGroup.
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _relay(
        self,
        request: Request,
        endpoint: Endpoint,
        routed: Routed,
        responder: Responder,
        extra_headers: list[tuple[bytes, bytes]],
        outcome: Outcome,
        started_s: float,
    ) -> None:
        async with self.backend.post(
            endpoint.upstream_path, routed.body, request.request_id
        ) as upstream:
            if upstream.status != 200:
                await upstream.discard()
                raise upstream_status_error(upstream.status)
            content_type, usage = _reader(endpoint, routed)
            headers = [
                (b"content-type", content_type),
                (b"cache-control", b"no-store"),
                *extra_headers,
            ]
            await responder.start(200, headers)
            outcome.status = 200
            try:
                async for chunk in upstream.chunks():
                    if outcome.ttfb_s is None:
                        outcome.ttfb_s = time.perf_counter() - started_s
                    forward = usage.feed(chunk)
                    if forward:
                        await _pass_on(forward, responder, outcome)
                tail = usage.finish()
                if tail:
                    await _pass_on(tail, responder, outcome)
                outcome.usage = usage.usage
                if outcome.usage is None and routed.stream:
                    # A stream always ends with its counts; without them it was cut short.
                    raise EndedEarly
            except GatewayError as exc:
                # Headers are gone already: the only honest signal left is a final error frame.
                outcome.error_code = exc.code
                await responder.end(stream_error_frame(exc, request.surface))
                return
            finally:
                # Also when the client left: what was generated until then is what is charged.
                outcome.completion_frames = usage.frames
            await responder.end()
