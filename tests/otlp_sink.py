"""A real OTLP/HTTP receiver on loopback for tests: decodes what arrives with opentelemetry-proto
and keeps it, as a collector would see it."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.secret_watch import WATCH


def any_value(value: AnyValue) -> Any:
    """An OTLP attribute value as the Python value the SDK was given."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def attributes(items: Any) -> dict[str, Any]:
    return {item.key: any_value(item.value) for item in items if isinstance(item, KeyValue)}


@dataclass(frozen=True)
class SinkSpan:
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 2 server, 3 client, 1 internal
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]


@dataclass(frozen=True)
class SinkPoint:
    attributes: dict[str, Any]
    value: float  # a sum's or gauge's value; a histogram's sum
    count: int | None  # a histogram's count


@dataclass(frozen=True)
class SinkMetric:
    name: str
    unit: str
    kind: str  # sum, gauge, histogram
    points: list[SinkPoint]
    resource: dict[str, Any]


@dataclass
class OtlpSink:
    """What arrived; `url` is the base for OTEL_EXPORTER_OTLP_ENDPOINT."""

    url: str = ""
    spans: list[SinkSpan] = field(default_factory=list)
    metrics: list[SinkMetric] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # path, headers
    lock: threading.RLock = field(default_factory=threading.RLock)
    # Cleared: every export hangs until it is set again (a collector that accepts, then stalls).
    answering: threading.Event = field(default_factory=threading.Event)
    arrived: int = 0  # exports received, answered or not

    def wait_for(self, ready: Callable[[OtlpSink], bool], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                if ready(self):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the OTLP sink did not receive it within {timeout_s} s")
            time.sleep(0.02)

    def metric(self, name: str) -> list[SinkMetric]:
        with self.lock:
            return [metric for metric in self.metrics if metric.name == name]

    def _add_traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        SinkSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=attributes(span.attributes),
                            events=[(e.name, attributes(e.attributes)) for e in span.events],
                            status_code=span.status.code,
                            resource=resource,
                        )
                    )

    def _add_metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data") or ""
                    points = [
                        SinkPoint(
                            attributes(point.attributes),
                            point.sum
                            if kind == "histogram"
                            else getattr(point, point.WhichOneof("value") or "as_double"),
                            point.count if kind == "histogram" else None,
                        )
                        for point in getattr(metric, kind).data_points
                    ]
                    self.metrics.append(
                        SinkMetric(metric.name, metric.unit, kind, points, resource)
                    )


def _decoded(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _handler(sink: OtlpSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with sink.lock:
                sink.arrived += 1
            sink.answering.wait()
            body = _decoded(body, self.headers.get("content-encoding"))
            # Protobuf keeps strings as they are: a secret in any field shows in the raw bytes.
            WATCH.see(f"OTLP export {self.path}", body.decode("latin-1"))
            with sink.lock:
                sink.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path == "/v1/traces":
                    sink._add_traces(body)
                    answer = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    sink._add_metrics(body)
                    answer = ExportMetricsServiceResponse().SerializeToString()
                else:
                    answer = None
            self.send_response(404 if answer is None else 200)
            answer = answer or b""
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


@contextmanager
def otlp_sink() -> Iterator[OtlpSink]:
    """Serve an OTLP/HTTP receiver on a free loopback port until the block ends."""
    sink = OtlpSink()
    sink.answering.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(sink))
    server.daemon_threads = True
    sink.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.answering.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
