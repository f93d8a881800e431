"""The gateway's own OTLP span encoder: a collector decodes exactly what the SDK's encoder gives,
for the spans the gateway makes and for any span the SDK's types allow."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from gateway.telemetry.wire import encode_spans
from tests.telemetry_support import rig
from tests.unit.test_telemetry import CLIENT_SPAN, CLIENT_TRACE, streamed_chat


def decoded(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(data)


def same_as_sdk(spans: list[ReadableSpan], seen: dict[Any, bytes] | None = None) -> None:
    ours = decoded(encode_spans(spans, seen))
    theirs = decoded(sdk_encode(spans).SerializePartialToString())
    assert ours == theirs


def test_the_spans_of_a_streamed_chat_decode_as_the_sdks() -> None:
    parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode()
    with rig() as otel:
        streamed_chat(otel.telemetry)
        streamed_chat(otel.telemetry, (b"traceparent", parent), (b"tracestate", b"vendor=1"))
        spans = otel.spans()
    assert len(spans) == 16
    seen: dict[Any, bytes] = {}
    same_as_sdk(spans, seen)
    same_as_sdk(spans, seen)  # a second batch, from the attributes already encoded


scalars = (
    st.text(max_size=40)
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
)
values = (
    scalars
    | st.lists(st.text(max_size=8), max_size=3).map(tuple)
    | st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3).map(tuple)
    | st.lists(st.floats(allow_nan=False), max_size=2).map(tuple)
)
attributes = st.dictionaries(st.text(min_size=1, max_size=20), values, max_size=6)
ids = st.integers(min_value=1, max_value=2**64 - 1)
RESOURCE = Resource({"service.name": "gateway", "service.instance.id": "i-1"})
SCOPE = InstrumentationScope("gateway", "1.0")


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    context = SpanContext(
        draw(st.integers(min_value=1, max_value=2**128 - 1)),
        draw(ids),
        is_remote=False,
        trace_flags=TraceFlags(draw(st.sampled_from([0, 1, 3]))),
        trace_state=TraceState(draw(st.sampled_from([[], [("vendor", "1")], [("a", "b")]]))),
    )
    parent = draw(st.none() | st.builds(SpanContext, ids, ids, is_remote=st.booleans()))
    events = [
        Event(name, attrs, stamp)
        for name, attrs, stamp in draw(
            st.lists(st.tuples(st.text(max_size=10), attributes, ids), max_size=2)
        )
    ]
    links = [
        Link(SpanContext(trace_id, span_id, is_remote=remote), attrs)
        for trace_id, span_id, remote, attrs in draw(
            st.lists(st.tuples(ids, ids, st.booleans(), attributes), max_size=2)
        )
    ]
    return ReadableSpan(
        name=draw(st.text(max_size=30)),
        context=context,
        parent=parent,
        resource=RESOURCE,
        attributes=draw(attributes),
        events=events,
        links=links,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=draw(
            st.sampled_from(
                [Status(StatusCode.UNSET), Status(StatusCode.ERROR, "boom"), Status(StatusCode.OK)]
            )
        ),
        start_time=draw(ids),
        end_time=draw(ids),
        instrumentation_scope=SCOPE,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(spans(), min_size=1, max_size=4))
def test_any_span_decodes_as_the_sdks(batch: list[ReadableSpan]) -> None:
    same_as_sdk(batch)
    same_as_sdk(batch, {})
