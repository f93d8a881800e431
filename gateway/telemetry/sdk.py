"""Providers built explicitly (never the global ones) from the standard OTEL_* variables, and a
shutdown that gives up after a deadline, so a dead collector cannot hold the process."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping

import anyio.to_thread
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway import __version__
from gateway.telemetry.api import Headers, NoTelemetry, Telemetry
from gateway.telemetry.histograms import HistogramSet
from gateway.telemetry.instruments import Instruments, own_histograms
from gateway.telemetry.otel import OtelRequestTrace, start_request
from gateway.telemetry.spans import Spans
from gateway.telemetry.wire import FastSpanExporter

log = logging.getLogger(__name__)

SCOPE = "gateway"
# Seconds one export may take, retries included, unless OTEL_EXPORTER_OTLP_*TIMEOUT says otherwise
# (the SDK's own default is 10 s). Exports run on the SDK's threads: this bounds how long a dead
# collector holds them, never a request.
EXPORT_TIMEOUT_S = 5.0


def gateway_resource() -> Resource:
    """service.name from OTEL_SERVICE_NAME (default `gateway`), the version, and an instance id
    unique to this process, so that series of several workers or replicas never overwrite."""
    resource = Resource.create(
        {"service.version": __version__, "service.instance.id": str(uuid.uuid4())}
    )
    name = resource.attributes.get("service.name")
    if not isinstance(name, str) or name.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "gateway"}))
    return resource


class OtelTelemetry:
    """Telemetry on: a batch span processor, a meter provider with `reader`.

    The tracer provider holds the sampler (from the OTEL_* variables unless given), the resource
    and the processor (flush, shutdown); the spans themselves are made by `Spans`, not its
    tracer (see `gateway.telemetry.spans`). `telemetry_from_env` exports with
    `FastSpanExporter`, the SDK's OTLP/HTTP exporter with a cheaper encoder.
    The request path's histograms are the gateway's own (`histograms.py`), added to what the
    reader collects, unless it asks for exponential buckets or the operator for exemplars.
    No span exporter: spans are not recorded, but trace context still flows to the backends.
    No metric reader: no meter provider at all.
    """

    def __init__(
        self,
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
        resource: Resource | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        resource = resource or gateway_resource()
        self._span_exporter = span_exporter
        # None lets the SDK read OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
        self._tracer_provider = TracerProvider(
            sampler=sampler if span_exporter is not None else ALWAYS_OFF,
            resource=resource,
            shutdown_on_exit=False,
        )
        processor = None
        if span_exporter is not None:
            processor = BatchSpanProcessor(span_exporter)
            # The provider flushes and shuts it down; spans reach it from `Spans` directly.
            self._tracer_provider.add_span_processor(processor)
        scope = InstrumentationScope(SCOPE, __version__)
        self._spans = Spans(
            processor, self._tracer_provider.sampler, self._tracer_provider.resource, scope
        )
        self._meter_provider: MeterProvider | None = None
        if metric_reader is not None:
            # The spans are never the current context, so trace-based exemplars would never be
            # taken: skip the per-record check unless the operator asks for one.
            asked = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip().lower()
            exemplars = asked not in ("", "always_off")
            self._meter_provider = MeterProvider(
                metric_readers=[metric_reader],
                resource=resource,
                shutdown_on_exit=False,
                exemplar_filter=None if exemplars else AlwaysOffExemplarFilter(),
            )
            own = HistogramSet(own_histograms(), resource, scope)
            attached = not exemplars and own.attach(metric_reader)
            meter = self._meter_provider.get_meter(SCOPE, __version__)
            self._instruments = Instruments(meter, own.histograms if attached else None)
        else:
            self._instruments = Instruments(NoOpMeter(SCOPE))
        self._closed = False

    def request(
        self,
        method: str,
        route: str | None,
        headers: Headers,
        client_ip: str | None,
        request_id: str,
    ) -> OtelRequestTrace:
        return start_request(
            self._spans, self._instruments, method, route, headers, client_ip, request_id
        )

    def observe_audit_depth(self, fn: Callable[[], int]) -> None:
        self._instruments.audit_depth.append(fn)

    def observe_breakers(self, fn: Callable[[], Mapping[str, str]]) -> None:
        self._instruments.breakers.append(fn)

    def flush(self, timeout_s: float = 5.0) -> bool:
        millis = int(timeout_s * 1000)
        done = self._tracer_provider.force_flush(millis)
        if self._meter_provider is not None:
            done = self._meter_provider.force_flush(millis) and done
        return done

    def close(self, timeout_s: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        # The SDK's span shutdown waits for the export in progress with no deadline of its own.
        worker = threading.Thread(
            target=self._shutdown, args=(timeout_s,), name="telemetry-shutdown", daemon=True
        )
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("telemetry: exports unfinished after %.1f s were dropped", timeout_s)
            if self._span_exporter is not None:
                # Ends the exporter's retry pauses, so the SDK's thread stops soon after.
                self._span_exporter.shutdown()

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await anyio.to_thread.run_sync(self.close, timeout_s)

    def _shutdown(self, timeout_s: float) -> None:
        if self._meter_provider is not None:
            self._meter_provider.shutdown(timeout_millis=timeout_s * 1000)
        self._tracer_provider.shutdown()


def _set(*names: str) -> bool:
    return any(os.environ.get(name) for name in names)


def _exporter_timeout(signal: str) -> float | None:
    # None: the SDK reads the variable the operator set.
    if _set("OTEL_EXPORTER_OTLP_TIMEOUT", f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT"):
        return None
    return EXPORT_TIMEOUT_S


def telemetry_from_env() -> Telemetry:
    """On when an OTLP endpoint is set (all signals, or traces or metrics alone) and
    OTEL_SDK_DISABLED is not `true`; OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER `none` turn
    one signal off. Everything else (headers, sampler, service name, intervals) is the SDK's."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return NoTelemetry()
    traces = _set("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") and (
        os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none"
    )
    metrics = _set("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") and (
        os.environ.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() != "none"
    )
    if not (traces or metrics):
        return NoTelemetry()
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        log.warning("telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=%s ignored: http/protobuf", protocol)
    span_exporter = FastSpanExporter(timeout=_exporter_timeout("TRACES")) if traces else None
    reader = (
        PeriodicExportingMetricReader(OTLPMetricExporter(timeout=_exporter_timeout("METRICS")))
        if metrics
        else None
    )
    return OtelTelemetry(span_exporter=span_exporter, metric_reader=reader)
