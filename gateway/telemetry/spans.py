"""Spans kept as plain fields and handed to the span processor as the SDK's `ReadableSpan` when
they end: the SDK's own `Span` cost about 25 µs each (locks, attribute cleaning, a sampler call
per span), seven times per request. The sampler is asked once per request, at the server span;
every built-in sampler gives its children the same answer (parent-based, or by trace id)."""

from __future__ import annotations

# Trace and span ids are identifiers, not secrets: the SDK's own generator uses `random` too.
import random
import time

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
)
from opentelemetry.util.types import AttributeValue

from gateway.telemetry import names as n

Attributes = dict[str, AttributeValue]

_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
# W3C trace context level 2's "random trace id" flag, which the SDK sets on ids it generates;
# absent from older API versions.
_RANDOM = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))


class Spans:
    """Where a request's spans go: one per process, made at start-up."""

    __slots__ = ("processor", "resource", "sampler", "scope")

    def __init__(
        self,
        processor: SpanProcessor | None,
        sampler: Sampler,
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        self.processor = processor  # None: nothing is recorded, trace context still flows
        self.sampler = sampler
        self.resource = resource
        self.scope = scope

    def server(self, name: str, parent: Context | None, attributes: Attributes) -> LightSpan:
        """The root of the gateway's part of a trace: continues the client's if it sent one."""
        remote = get_current_span(parent).get_span_context() if parent is not None else None
        if remote is None or not remote.is_valid:
            remote = None
            trace_id = random.getrandbits(128) or 1  # nosec B311
            flags = _RANDOM
        else:
            trace_id = remote.trace_id
            flags = remote.trace_flags & _RANDOM
        result = self.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes)
        if result.attributes:
            attributes.update(result.attributes)
        if result.decision is Decision.RECORD_AND_SAMPLE:
            flags |= TraceFlags.SAMPLED
        context = SpanContext(
            trace_id,
            random.getrandbits(64) or 1,  # nosec B311
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=result.trace_state,
        )
        recording = self.processor is not None and result.decision is not Decision.DROP
        return LightSpan(
            self if recording else None, name, context, remote, SpanKind.SERVER, attributes
        )

    def child(
        self, parent: LightSpan, name: str, kind: SpanKind, attributes: Attributes
    ) -> LightSpan:
        """A span under `parent`, in its trace; recorded when the parent is."""
        above = parent.context
        context = SpanContext(
            above.trace_id,
            random.getrandbits(64) or 1,  # nosec B311
            is_remote=False,
            trace_flags=above.trace_flags,
            trace_state=above.trace_state,
        )
        return LightSpan(parent.spans, name, context, above, kind, attributes)


class LightSpan:
    """One span's fields; `end` makes the `ReadableSpan` the processors and exporters take."""

    __slots__ = (
        "attributes",
        "context",
        "error",
        "events",
        "kind",
        "name",
        "parent",
        "spans",
        "start_ns",
    )

    def __init__(
        self,
        spans: Spans | None,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Attributes,
    ) -> None:
        self.spans = spans  # None: not recorded
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.events: list[Event] = []
        self.error = False
        self.start_ns = time.time_ns()

    @property
    def recording(self) -> bool:
        """Sampled and not yet ended."""
        return self.spans is not None

    def add_event(self, name: str, attributes: Attributes) -> None:
        self.events.append(Event(name, attributes, time.time_ns()))

    def set_error(self, error_type: str) -> None:
        self.attributes[n.ERROR_TYPE] = error_type
        self.error = True

    def end(self) -> None:
        spans = self.spans
        if spans is None or spans.processor is None:
            return
        self.spans = None  # ends once
        spans.processor.on_end(
            ReadableSpan(
                name=self.name,
                context=self.context,
                parent=self.parent,
                resource=spans.resource,
                # Copies: the export thread reads them while a late call might still write.
                attributes=dict(self.attributes),
                events=tuple(self.events),
                kind=self.kind,
                status=_ERROR if self.error else _UNSET,
                start_time=self.start_ns,
                end_time=time.time_ns(),
                instrumentation_scope=spans.scope,
            )
        )
