"""The OpenTelemetry implementation of the request path's telemetry: spans parented explicitly
(no context variables, so a stage may end in another task) and the request metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Self

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.errors import GatewayError
from gateway.telemetry import names as n
from gateway.telemetry.api import Headers
from gateway.telemetry.instruments import Instruments
from gateway.telemetry.spans import Attributes, LightSpan, Spans

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_STAGE = nullcontext()


def error_type(exc: BaseException) -> str:
    """A short, secret-free name for a failure: the catalogue's code, else the class name."""
    return exc.code if isinstance(exc, GatewayError) else type(exc).__qualname__


def client_context(headers: Headers) -> Context | None:
    """The caller's W3C trace context, if it sent one (ASGI header names are lower-case)."""
    carrier: dict[str, str] | None = None
    for name, value in headers:
        if name == b"traceparent" or name == b"tracestate":
            carrier = carrier or {}
            carrier.setdefault(name.decode("ascii"), value.decode("latin-1"))
    return None if carrier is None else _PROPAGATOR.extract(carrier)


class _Stage:
    __slots__ = ("_name", "_previous", "_span", "_trace")

    def __init__(self, trace: OtelRequestTrace, name: str) -> None:
        self._trace = trace
        self._name = name

    def __enter__(self) -> None:
        trace = self._trace
        self._previous = trace.innermost
        self._span = trace.spans.child(self._previous, self._name, SpanKind.INTERNAL, {})
        trace.innermost = self._span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._span.set_error(error_type(exc))
        self._span.end()
        self._trace.innermost = self._previous


class OtelUpstreamTrace:
    __slots__ = (
        "_attributes",
        "_backend_name",
        "_first",
        "_name",
        "_previous",
        "_span",
        "_system",
        "_trace",
    )

    def __init__(
        self, trace: OtelRequestTrace, attributes: Attributes, system: str, name: str, backend: str
    ) -> None:
        self._trace = trace
        self._name = name
        self._attributes = attributes  # the metrics' (the span adds the system and backend)
        self._system = system
        self._backend_name = backend
        self._first = False

    def __enter__(self) -> Self:
        trace = self._trace
        self._previous = trace.innermost
        if trace.recording:
            self._span = trace.spans.child(
                trace.innermost,
                self._name,
                SpanKind.CLIENT,
                {**self._attributes, n.GEN_AI_SYSTEM: self._system, n.BACKEND: self._backend_name},
            )
        else:
            # Unsampled: the server span stands in; it records nothing and carries the trace id.
            self._span = trace.innermost
        trace.innermost = self._span
        in_flight = trace.instruments.in_flight
        in_flight[self._backend_name] = in_flight.get(self._backend_name, 0) + 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.failed(error_type(exc))
        self._trace.instruments.in_flight[self._backend_name] -= 1
        if self._span is not self._previous:
            self._span.end()
        self._trace.innermost = self._previous

    def first_token(self) -> None:
        if self._first:
            return
        self._first = True
        ttft_s = time.perf_counter() - self._trace.started_s
        if self._trace.recording:
            self._span.add_event(n.FIRST_TOKEN_EVENT, {n.TIME_TO_FIRST_TOKEN.name: ttft_s})
        self._trace.instruments.ttft.record(ttft_s, self._attributes)

    def usage(
        self, input_tokens: int, output_tokens: int, finish_reasons: Sequence[str] | None = None
    ) -> None:
        if self._trace.recording:
            attributes = self._span.attributes
            attributes[n.GEN_AI_INPUT_TOKENS] = input_tokens
            attributes[n.GEN_AI_OUTPUT_TOKENS] = output_tokens
            if finish_reasons:
                attributes[n.GEN_AI_FINISH_REASONS] = tuple(finish_reasons)
        tokens = self._trace.instruments.tokens
        tokens.record(input_tokens, {**self._attributes, n.GEN_AI_TOKEN_TYPE: "input"})
        tokens.record(output_tokens, {**self._attributes, n.GEN_AI_TOKEN_TYPE: "output"})

    def responded(self, status: int) -> None:
        if self._trace.recording:
            self._span.attributes[n.HTTP_STATUS] = status
        if status >= 400:
            self.failed(str(status))

    def failed(self, error_type: str) -> None:
        if self._trace.recording:
            self._span.set_error(error_type)


class OtelRequestTrace:
    __slots__ = (
        "_ended",
        "_metric",
        "_span",
        "innermost",
        "instruments",
        "recording",
        "spans",
        "started_s",
    )

    def __init__(
        self, spans: Spans, instruments: Instruments, span: LightSpan, metric: Attributes
    ) -> None:
        self.spans = spans
        self.instruments = instruments
        self.started_s = time.perf_counter()
        self._span = span
        self.innermost = span
        # Unsampled: no stage or client spans at all; the metrics are recorded all the same.
        self.recording = span.recording
        self._metric = metric
        self._ended = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ended:
            return
        if exc is None:
            self.end(0)
        else:
            self.end(exc.status if isinstance(exc, GatewayError) else 500, error_type(exc))

    def stage(self, name: str) -> AbstractContextManager[None]:
        return _Stage(self, name) if self.recording else _NO_STAGE

    def upstream(self, system: str, operation: str, model: str, backend: str) -> OtelUpstreamTrace:
        attributes: Attributes = {
            n.GEN_AI_PROVIDER: system,
            n.GEN_AI_OPERATION: operation,
            n.GEN_AI_REQUEST_MODEL: model,
        }
        tenant = self._metric.get(n.TENANT_ID)
        if tenant is not None:
            attributes[n.TENANT_ID] = tenant
        return OtelUpstreamTrace(self, attributes, system, f"{operation} {model}", backend)

    def traceparent(self) -> tuple[tuple[bytes, bytes], ...]:
        context = self.innermost.context
        parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        state = context.trace_state.to_header()
        if not state:
            return ((b"traceparent", parent.encode("ascii")),)
        return ((b"traceparent", parent.encode("ascii")), (b"tracestate", state.encode("latin-1")))

    def set_tenant(self, tenant_id: str, tenant_name: str | None = None) -> None:
        self._metric[n.TENANT_ID] = tenant_id
        attributes = self._span.attributes
        attributes[n.TENANT_ID] = tenant_id
        if tenant_name is not None:
            attributes[n.TENANT_NAME] = tenant_name

    def set_model(self, model: str) -> None:
        self._metric[n.GEN_AI_REQUEST_MODEL] = model
        self._span.attributes[n.GEN_AI_REQUEST_MODEL] = model

    def deny(self, reason: str) -> None:
        self._span.attributes[n.DENIAL_REASON] = reason
        denial: Attributes = {n.DENIAL_REASON: reason}
        tenant = self._metric.get(n.TENANT_ID)
        if tenant is not None:
            denial[n.TENANT_ID] = tenant
        self.instruments.denials.add(1, denial)

    def end(self, status: int, error_code: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        span, metric = self._span, self._metric
        if status:
            metric[n.HTTP_STATUS] = status
            span.attributes[n.HTTP_STATUS] = status
        if error_code is not None:
            metric[n.ERROR_TYPE] = error_code
            span.attributes[n.ERROR_TYPE] = error_code
        # A 4xx is the client's doing: not an error of the server span (HTTP conventions).
        span.error = status >= 500 or (not status and error_code is not None)
        self.instruments.duration.record(time.perf_counter() - self.started_s, metric)
        span.end()


def start_request(
    spans: Spans,
    instruments: Instruments,
    method: str,
    route: str | None,
    headers: Headers,
    client_ip: str | None,
    request_id: str,
) -> OtelRequestTrace:
    """The server span (named per the HTTP conventions) and the request's metric attributes."""
    method = method if method in n.KNOWN_METHODS else "_OTHER"
    metric: Attributes = {n.HTTP_METHOD: method}
    if route is not None:
        metric[n.HTTP_ROUTE] = route
    attributes: Attributes = {**metric, n.REQUEST_ID: request_id}
    if client_ip is not None:
        attributes[n.CLIENT_ADDRESS] = client_ip
    name = f"{method} {route}" if route is not None else method
    span = spans.server(name, client_context(headers), attributes)
    return OtelRequestTrace(spans, instruments, span, metric)
