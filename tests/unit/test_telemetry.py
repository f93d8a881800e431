"""The telemetry module with the SDK's in-memory exporter and reader: spans, context, metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from gateway.errors import RateLimited, Unauthorized
from gateway.telemetry import NoTelemetry, RequestTrace, Telemetry
from gateway.telemetry import names as n
from tests.telemetry_support import BACKEND_TOKEN, KEY, PROMPT, Rig, every_value, rig

TENANT = "6b0e7c1a-5a0c-4d43-9d55-3f0f7e0c1a01"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
STAGES = ("auth", "limits", "budget", "route", "queue")


@pytest.fixture
def otel() -> Iterator[Rig]:
    with rig() as built:
        yield built


def headers(*extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"json"), *extra]


def streamed_chat(telemetry: Telemetry, *extra: tuple[bytes, bytes]) -> list[bytes]:
    """A request as the chain makes one; returns the trace headers it would send upstream."""
    sent: list[bytes] = []
    with telemetry.request("POST", "/api/chat", headers(*extra), "10.1.2.3", "req-1") as trace:
        for stage in STAGES:
            with trace.stage(stage):
                if stage == "auth":
                    trace.set_tenant(TENANT, "acme")
                if stage == "route":
                    trace.set_model("llama3.2:1b")
        with (
            trace.stage("upstream"),
            trace.upstream("ollama", "chat", "llama3.2:1b", "gpu-1") as up,
        ):
            sent.extend(value for name, value in trace.traceparent() if name == b"traceparent")
            up.responded(200)
            up.first_token()
            up.first_token()  # only the first counts
            up.usage(12, 34, ["stop"])
        trace.end(200)
    return sent


def test_a_streamed_chat_is_one_server_span_with_a_child_per_stage_and_a_client_span(
    otel: Rig,
) -> None:
    streamed_chat(otel.telemetry)
    spans = {span.name: span for span in otel.spans()}
    assert set(spans) == {"POST /api/chat", *STAGES, "upstream", "chat llama3.2:1b"}
    server, client = spans["POST /api/chat"], spans["chat llama3.2:1b"]
    assert server.kind is SpanKind.SERVER
    assert server.parent is None
    assert dict(server.attributes or {}) == {
        n.HTTP_METHOD: "POST",
        n.HTTP_ROUTE: "/api/chat",
        n.HTTP_STATUS: 200,
        n.CLIENT_ADDRESS: "10.1.2.3",
        n.REQUEST_ID: "req-1",
        n.TENANT_ID: TENANT,
        n.TENANT_NAME: "acme",
        n.GEN_AI_REQUEST_MODEL: "llama3.2:1b",
    }
    for stage in (*STAGES, "upstream"):
        parent = spans[stage].parent
        assert parent is not None
        assert parent.span_id == server.context.span_id
        assert spans[stage].kind is SpanKind.INTERNAL
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None
    assert client.parent.span_id == spans["upstream"].context.span_id
    assert dict(client.attributes or {}) == {
        n.GEN_AI_SYSTEM: "ollama",
        n.GEN_AI_PROVIDER: "ollama",
        n.GEN_AI_OPERATION: "chat",
        n.GEN_AI_REQUEST_MODEL: "llama3.2:1b",
        n.TENANT_ID: TENANT,
        n.BACKEND: "gpu-1",
        n.HTTP_STATUS: 200,
        n.GEN_AI_INPUT_TOKENS: 12,
        n.GEN_AI_OUTPUT_TOKENS: 34,
        n.GEN_AI_FINISH_REASONS: ("stop",),
    }
    (event,) = client.events
    assert event.name == n.FIRST_TOKEN_EVENT
    assert server.start_time is not None
    assert server.end_time is not None
    assert server.start_time <= event.timestamp <= server.end_time
    assert {span.context.trace_id for span in spans.values()} == {server.context.trace_id}
    assert all(span.status.status_code is StatusCode.UNSET for span in spans.values())


def test_a_client_traceparent_is_continued_and_sent_on_to_the_backend(otel: Rig) -> None:
    parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode()
    sent = streamed_chat(otel.telemetry, (b"traceparent", parent), (b"tracestate", b"vendor=1"))
    server, client = otel.span("POST /api/chat"), otel.span("chat llama3.2:1b")
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CLIENT_SPAN
    # The backend sees the same trace, with the gateway's client span as its parent.
    assert sent == [f"00-{CLIENT_TRACE}-{client.context.span_id:016x}-01".encode()]


def test_a_client_trace_that_is_not_sampled_records_nothing_but_keeps_its_trace_id(
    otel: Rig,
) -> None:
    sent = streamed_chat(
        otel.telemetry, (b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00".encode())
    )
    assert otel.spans() == []
    (header,) = sent
    assert header.startswith(f"00-{CLIENT_TRACE}-".encode())
    assert header.endswith(b"-00")


def test_without_a_client_trace_each_request_starts_its_own(otel: Rig) -> None:
    first, second = streamed_chat(otel.telemetry), streamed_chat(otel.telemetry)
    assert first[0].split(b"-")[1] != second[0].split(b"-")[1]
    assert {span.parent for span in otel.spans() if span.kind is SpanKind.SERVER} == {None}


def test_a_401_ends_in_the_auth_stage_with_no_tenant(otel: Rig) -> None:
    with otel.telemetry.request("POST", "/v1/chat/completions", headers(), None, "r") as trace:
        with pytest.raises(Unauthorized), trace.stage("auth"):
            raise Unauthorized
        trace.end(401, Unauthorized.code)
    server, auth = otel.span("POST /v1/chat/completions"), otel.span("auth")
    assert auth.status.status_code is StatusCode.ERROR
    assert (auth.attributes or {})[n.ERROR_TYPE] == "invalid_api_key"
    assert (server.attributes or {})[n.HTTP_STATUS] == 401
    assert n.TENANT_ID not in (server.attributes or {})
    # A 4xx is the client's doing: the server span is not an error (HTTP conventions).
    assert server.status.status_code is StatusCode.UNSET
    (point,) = otel.metrics()[n.REQUEST_DURATION.name]
    assert point.attributes == {
        n.HTTP_METHOD: "POST",
        n.HTTP_ROUTE: "/v1/chat/completions",
        n.HTTP_STATUS: 401,
        n.ERROR_TYPE: "invalid_api_key",
    }


def test_a_429_is_counted_as_a_denial_with_its_reason_and_tenant(otel: Rig) -> None:
    with otel.telemetry.request("POST", "/api/generate", headers(), None, "r") as trace:
        trace.set_tenant(TENANT)
        trace.set_model("qwen2.5:0.5b")
        trace.deny("key_rpm")
        with pytest.raises(RateLimited), trace.stage("limits"):
            raise RateLimited
        trace.end(429, RateLimited.code)
    limits = otel.span("limits")
    assert (limits.attributes or {})[n.ERROR_TYPE] == "rate_limit_exceeded"
    assert (otel.span("POST /api/generate").attributes or {})[n.DENIAL_REASON] == "key_rpm"
    metrics = otel.metrics()
    (denial,) = metrics[n.DENIALS.name]
    assert denial.attributes == {n.DENIAL_REASON: "key_rpm", n.TENANT_ID: TENANT}
    assert denial.value == 1
    (request,) = metrics[n.REQUEST_DURATION.name]
    assert request.attributes[n.HTTP_STATUS] == 429
    assert request.attributes[n.GEN_AI_REQUEST_MODEL] == "qwen2.5:0.5b"
    assert n.TOKEN_USAGE.name not in metrics


def test_a_failover_is_two_client_spans_the_first_failed(otel: Rig) -> None:
    with otel.telemetry.request("POST", "/api/chat", headers(), None, "r") as trace:
        with trace.stage("upstream"):
            with pytest.raises(ConnectionRefusedError), trace.upstream("ollama", "chat", "m", "a"):
                raise ConnectionRefusedError
            with trace.upstream("ollama", "chat", "m", "b") as up:
                up.responded(503)
            with trace.upstream("ollama", "chat", "m", "c") as up:
                up.responded(200)
                up.first_token()
        trace.end(200)
    stage = otel.span("upstream")
    attempts = sorted(
        (span for span in otel.spans() if span.kind is SpanKind.CLIENT),
        key=lambda span: span.start_time or 0,
    )
    assert [(s.attributes or {})[n.BACKEND] for s in attempts] == ["a", "b", "c"]
    assert all(s.parent is not None and s.parent.span_id == stage.context.span_id for s in attempts)
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]
    assert [(s.attributes or {}).get(n.ERROR_TYPE) for s in attempts] == [
        "ConnectionRefusedError",
        "503",
        None,
    ]
    in_flight = otel.metrics()[n.STREAMS_IN_FLIGHT.name]
    assert {p.attributes[n.BACKEND]: p.value for p in in_flight} == {"a": 0, "b": 0, "c": 0}


def test_an_unexpected_error_ends_the_request_as_a_500() -> None:
    with rig() as otel:
        with pytest.raises(KeyError), otel.telemetry.request("GET", None, [], None, "r"):
            raise KeyError("x")
        (server,) = otel.spans()
    assert server.name == "GET"
    assert server.status.status_code is StatusCode.ERROR
    assert (server.attributes or {})[n.ERROR_TYPE] == "KeyError"
    assert n.HTTP_ROUTE not in (server.attributes or {})


def test_an_error_that_leaves_the_request_sets_its_own_status(otel: Rig) -> None:
    with pytest.raises(RateLimited), otel.telemetry.request("POST", "/api/chat", [], None, "r"):
        raise RateLimited
    (server,) = otel.spans()
    assert (server.attributes or {})[n.HTTP_STATUS] == 429
    assert server.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("parent", [b"00-zz-00f067aa0ba902b7-01", b"00-" + b"0" * 32 + b"-01-01"])
def test_a_malformed_traceparent_starts_a_new_trace(otel: Rig, parent: bytes) -> None:
    sent = streamed_chat(otel.telemetry, (b"traceparent", parent))
    server = otel.span("POST /api/chat")
    assert server.parent is None
    assert sent[0].split(b"-")[1] == f"{server.context.trace_id:032x}".encode()


def test_a_made_up_method_cannot_mint_series(otel: Rig) -> None:
    otel.telemetry.request("BREW", None, [], None, "r").end(405, "method_not_allowed")
    (point,) = otel.metrics()[n.REQUEST_DURATION.name]
    assert point.attributes[n.HTTP_METHOD] == "_OTHER"


def test_the_metrics_of_a_streamed_chat_and_the_observed_gauges(otel: Rig) -> None:
    otel.telemetry.observe_audit_depth(lambda: 7)
    otel.telemetry.observe_breakers(lambda: {"gpu-1": "closed", "gpu-2": "open", "x": "odd"})
    streamed_chat(otel.telemetry)
    metrics = otel.metrics()
    (request,) = metrics[n.REQUEST_DURATION.name]
    assert request.count == 1
    assert request.attributes == {
        n.HTTP_METHOD: "POST",
        n.HTTP_ROUTE: "/api/chat",
        n.HTTP_STATUS: 200,
        n.GEN_AI_REQUEST_MODEL: "llama3.2:1b",
        n.TENANT_ID: TENANT,
    }
    genai = {
        n.GEN_AI_PROVIDER: "ollama",
        n.GEN_AI_OPERATION: "chat",
        n.GEN_AI_REQUEST_MODEL: "llama3.2:1b",
        n.TENANT_ID: TENANT,
    }
    tokens = {p.attributes[n.GEN_AI_TOKEN_TYPE]: p for p in metrics[n.TOKEN_USAGE.name]}
    assert {kind: (p.value, p.count) for kind, p in tokens.items()} == {
        "input": (12, 1),
        "output": (34, 1),
    }
    assert tokens["input"].attributes == {**genai, n.GEN_AI_TOKEN_TYPE: "input"}
    (ttft,) = metrics[n.TIME_TO_FIRST_TOKEN.name]
    assert ttft.count == 1
    assert ttft.attributes == genai
    assert ttft.value <= request.value
    (streams,) = metrics[n.STREAMS_IN_FLIGHT.name]
    assert streams.attributes == {n.BACKEND: "gpu-1"}
    assert streams.value == 0
    (audit,) = metrics[n.AUDIT_DEPTH.name]
    assert audit.value == 7
    breakers = {p.attributes[n.BACKEND]: p.value for p in metrics[n.BREAKER_STATE.name]}
    assert breakers == {"gpu-1": 0, "gpu-2": 2}
    assert set(metrics) == {i.name for i in n.INSTRUMENTS} - {n.DENIALS.name}


def test_a_stream_in_flight_is_counted_until_its_upstream_span_ends(otel: Rig) -> None:
    trace = otel.telemetry.request("POST", "/api/chat", [], None, "r")
    with trace.upstream("ollama", "chat", "m", "gpu-1"):
        (open_,) = otel.metrics()[n.STREAMS_IN_FLIGHT.name]
        assert open_.value == 1
    (closed,) = otel.metrics()[n.STREAMS_IN_FLIGHT.name]
    assert closed.value == 0


def test_no_key_prompt_or_token_in_any_span_or_metric(otel: Rig) -> None:
    # The request carries all three where a careless gateway might pick them up.
    streamed_chat(
        otel.telemetry, (b"x-backend-auth", BACKEND_TOKEN.encode()), (b"x-p", PROMPT.encode())
    )
    values = every_value(otel)
    assert values
    for secret in (KEY, BACKEND_TOKEN, PROMPT, "Bearer"):
        assert not [value for value in values if secret in value]


def test_no_telemetry_hands_out_shared_objects_and_records_nothing() -> None:
    telemetry: Telemetry = NoTelemetry()
    first = telemetry.request("POST", "/api/chat", headers(), "10.1.2.3", "r")
    second: RequestTrace = telemetry.request("GET", None, [], None, "s")
    assert first is second
    assert first.stage("auth") is second.stage("limits")
    assert first.upstream("ollama", "chat", "m", "b") is second.upstream("x", "y", "z", "w")
    assert first.traceparent() == ()
    assert streamed_chat(telemetry) == []
    telemetry.observe_audit_depth(lambda: 1)
    assert telemetry.flush()
    telemetry.close()
