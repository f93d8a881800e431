"""Telemetry configured from the OTEL_* variables, exporting over real OTLP/HTTP to a loopback
receiver; a dead or stalled collector never holds a request, and shutdown has a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.telemetry import NoTelemetry, OtelTelemetry, Telemetry, telemetry_from_env
from gateway.telemetry import names as n
from tests.otlp_sink import OtlpSink, otlp_sink
from tests.telemetry_support import KEY

# What "promptly" means here: 200 requests' worth of telemetry calls, and a close's overrun.
REQUESTS = 200
REQUESTS_BOUND_S = 2.0
CLOSE_SLACK_S = 0.5
OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # Short batch delays: the tests wait for what the background threads send.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with otlp_sink() as running:
        yield running


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_request(telemetry: Telemetry, index: int = 0) -> None:
    auth = (b"authorization", f"Bearer {KEY}".encode())
    with telemetry.request("POST", "/api/chat", [auth], "127.0.0.1", f"r{index}") as trace:
        with trace.stage("auth"):
            trace.set_tenant("t-1", "acme")
        trace.set_model("llama3.2:1b")
        with trace.stage("upstream"), trace.upstream("ollama", "chat", "llama3.2:1b", "b1") as up:
            up.first_token()
            up.usage(3, 5, ["stop"])
        trace.end(200)


def test_spans_and_metrics_arrive_over_otlp_http(
    sink: OtlpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant-of-collector=ops")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-test")
    telemetry = telemetry_from_env()
    assert isinstance(telemetry, OtelTelemetry)
    try:
        telemetry.observe_audit_depth(lambda: 3)
        one_request(telemetry)
        sink.wait_for(lambda s: len(s.spans) == 4 and bool(s.metric(n.REQUEST_DURATION.name)))
    finally:
        telemetry.close()
    spans = {span.name: span for span in sink.spans}
    assert set(spans) == {"POST /api/chat", "auth", "upstream", "chat llama3.2:1b"}
    server, client = spans["POST /api/chat"], spans["chat llama3.2:1b"]
    assert server.kind == 2  # SPAN_KIND_SERVER
    assert client.kind == 3  # SPAN_KIND_CLIENT
    assert client.parent_span_id == spans["upstream"].span_id
    assert spans["upstream"].parent_span_id == server.span_id
    assert client.attributes[n.GEN_AI_OUTPUT_TOKENS] == 5
    assert client.attributes[n.GEN_AI_FINISH_REASONS] == ("stop",)
    assert [name for name, _ in client.events] == [n.FIRST_TOKEN_EVENT]
    assert server.resource["service.name"] == "gateway-test"
    assert server.resource["service.version"]
    (request,) = sink.metric(n.REQUEST_DURATION.name)[-1].points
    assert request.count == 1
    assert request.attributes[n.TENANT_ID] == "t-1"
    assert sink.metric(n.AUDIT_DEPTH.name)[-1].points[0].value == 3
    assert sink.metric(n.REQUEST_DURATION.name)[-1].unit == "s"
    paths = {path for path, _ in sink.requests}
    assert paths == {"/v1/traces", "/v1/metrics"}
    for _, headers in sink.requests:
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["x-tenant-of-collector"] == "ops"
        assert KEY not in str(headers)


def test_a_signal_endpoint_alone_turns_on_that_signal_only(
    sink: OtlpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"{sink.url}/v1/metrics")
    telemetry = telemetry_from_env()
    try:
        one_request(telemetry)
        assert telemetry.flush()
        sink.wait_for(lambda s: bool(s.metric(n.TOKEN_USAGE.name)))
    finally:
        telemetry.close()
    assert sink.spans == []
    assert {path for path, _ in sink.requests} == {"/v1/metrics"}


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
        },
    ],
)
def test_telemetry_is_off_unless_an_endpoint_is_set_and_the_sdk_enabled(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert isinstance(telemetry_from_env(), NoTelemetry)


def test_the_sampler_comes_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    telemetry = OtelTelemetry(span_exporter=exporter)
    try:
        one_request(telemetry)
        telemetry.flush()
    finally:
        telemetry.close()
    assert exporter.get_finished_spans() == ()


def test_service_name_defaults_to_gateway_and_each_process_is_its_own_instance() -> None:
    exporter = InMemorySpanExporter()
    telemetry = OtelTelemetry(span_exporter=exporter)
    try:
        one_request(telemetry)
        telemetry.flush()
    finally:
        telemetry.close()
    resource = exporter.get_finished_spans()[0].resource.attributes
    assert resource["service.name"] == "gateway"
    assert resource["service.instance.id"]


def test_a_collector_on_a_closed_port_never_holds_a_request_and_close_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    telemetry = telemetry_from_env()
    started = time.perf_counter()
    for index in range(REQUESTS):
        one_request(telemetry, index)
    assert time.perf_counter() - started < REQUESTS_BOUND_S
    time.sleep(0.3)  # the exporters are now failing and retrying in the background
    started = time.perf_counter()
    telemetry.close(timeout_s=1.0)
    assert time.perf_counter() - started < 1.0 + CLOSE_SLACK_S


def test_a_collector_that_accepts_and_stalls_never_holds_a_request_and_close_is_bounded(
    sink: OtlpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.url)
    sink.answering.clear()
    telemetry = telemetry_from_env()
    one_request(telemetry)
    sink.wait_for(lambda s: s.arrived > 0)  # an export is now stuck waiting for the answer
    started = time.perf_counter()
    for index in range(REQUESTS):
        one_request(telemetry, index)
    assert time.perf_counter() - started < REQUESTS_BOUND_S
    started = time.perf_counter()
    telemetry.close(timeout_s=1.0)
    assert time.perf_counter() - started < 1.0 + CLOSE_SLACK_S
    sink.answering.set()
