"""Telemetry under test: the real SDK providers with in-memory exporters, read back simply."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.telemetry import OtelTelemetry
from tests.secret_watch import WATCH

# A key and a backend token as the gateway would hold them; never to be seen in telemetry.
KEY = "gw_tel3metry_Sup3rS3cretKeyMaterial_0123456789"
BACKEND_TOKEN = "backend-token-7c1d9e"
PROMPT = "the prompt text that must stay private"
WATCH.record_token(KEY)
WATCH.record_token(BACKEND_TOKEN)


@dataclass(frozen=True)
class Point:
    attributes: dict[str, Any]
    value: float  # a sum's or gauge's value; a histogram's sum
    count: int | None  # a histogram's count


@dataclass
class Rig:
    telemetry: OtelTelemetry
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        self.telemetry.flush()
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        (found,) = [span for span in self.spans() if span.name == name]
        return found

    def metrics(self) -> dict[str, list[Point]]:
        data = self.reader.get_metrics_data()
        found: dict[str, list[Point]] = {}
        for resource_metrics in data.resource_metrics if data else ():
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = [_point(p) for p in metric.data.data_points]
        return found


def _point(point: Any) -> Point:
    if isinstance(point, HistogramDataPoint):
        return Point(dict(point.attributes or {}), point.sum, point.count)
    assert isinstance(point, NumberDataPoint)
    return Point(dict(point.attributes or {}), point.value, None)


@contextmanager
def rig() -> Iterator[Rig]:
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = OtelTelemetry(span_exporter=exporter, metric_reader=reader)
    held = Rig(telemetry, exporter, reader)
    try:
        yield held
        WATCH.see("in-memory telemetry", "\n".join(every_value(held)))
    finally:
        telemetry.close()


def every_value(rig: Rig) -> list[str]:
    """Every attribute value, event attribute and span name the rig holds, as text."""
    values: list[str] = []
    for span in rig.spans():
        values.append(span.name)
        values.extend(str(v) for v in (span.attributes or {}).values())
        for event in span.events:
            values.append(event.name)
            values.extend(str(v) for v in (event.attributes or {}).values())
        values.extend(str(v) for v in span.resource.attributes.values())
    for points in rig.metrics().values():
        for point in points:
            values.extend(str(v) for v in point.attributes.values())
    return values
