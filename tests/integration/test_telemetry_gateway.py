"""Telemetry from the real gateway: the span tree of a streamed chat, a 401, a 429 and a failover,
a client's trace reaching the backend, no secret anywhere, and OTLP export to a real receiver."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.devservices import free_port
from gateway.upstream.sim import SimConfig, Simulator
from tests.integration.quota_support import bearer
from tests.integration.test_audit import sql_key
from tests.integration.test_audit_outage import wait_healthy
from tests.integration.test_backends import add_backend, chat
from tests.otlp_sink import otlp_sink
from tests.secret_watch import WATCH
from tests.servers import serve_in_thread
from tests.telemetry_support import Rig, every_value, rig

pytestmark = pytest.mark.anyio

PROMPT = "a prompt that must never reach telemetry"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def telemetry() -> Iterator[Rig]:
    with rig() as made:
        yield made


async def settled(rig_: Rig, roots: int) -> None:
    """The server span ends just after the last byte went out: wait for `roots` of them."""
    with anyio.fail_after(5):
        while sum(1 for s in rig_.spans() if s.parent is None or s.parent.is_remote) < roots:  # noqa: ASYNC110 - spans end on the server thread
            await anyio.sleep(0.02)


def children(rig_: Rig, parent: Any) -> list[str]:
    return sorted(
        s.name for s in rig_.spans() if s.parent is not None and s.parent.span_id == parent
    )


async def test_a_streamed_chat_is_one_tree_that_reaches_the_backend_with_the_clients_trace(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    database_url: str,
    telemetry: Rig,
) -> None:
    sim = Simulator(SimConfig(chunks=5))
    add_backend(database_url, "gpu", serve_app(sim))
    key, _ = sql_key(database_url, "acme", "app")
    url = serve_app(Gateway(load_settings(env), telemetry=telemetry.telemetry))
    body = {**chat("llama3.2:1b", stream=True), "messages": [{"role": "user", "content": PROMPT}]}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        resp = await client.post(
            "/api/chat", json=body, headers={**bearer(key), "traceparent": TRACEPARENT}
        )
    assert resp.status_code == 200
    await settled(telemetry, 1)
    server = telemetry.span("POST /api/chat")
    assert format(server.context.trace_id, "032x") == TRACE_ID
    attributes = dict(server.attributes or {})
    assert attributes["http.response.status_code"] == 200
    assert attributes["gateway.tenant.id"]
    assert children(telemetry, server.context.span_id) == [
        "auth",
        "limits_and_budget",
        "route",
        "upstream",
    ]
    upstream = telemetry.span("upstream")
    assert children(telemetry, upstream.context.span_id) == ["chat llama3.2:1b", "queue"]
    client_span = telemetry.span("chat llama3.2:1b")
    gen_ai = dict(client_span.attributes or {})
    assert gen_ai["gen_ai.system"] == "ollama"
    assert gen_ai["gen_ai.request.model"] == "llama3.2:1b"
    assert gen_ai["gen_ai.usage.output_tokens"] == 5
    assert isinstance(gen_ai["gen_ai.usage.input_tokens"], int)
    assert gen_ai["gen_ai.usage.input_tokens"] > 0
    assert [event.name for event in client_span.events] == ["first_token"]
    # The backend saw the client's trace, continued by the gateway's own client span.
    (seen,) = sim.stats.log
    assert seen.traceparent is not None
    assert seen.traceparent.split("-")[1] == TRACE_ID
    values = every_value(telemetry)
    assert not any(key in v or PROMPT in v or "Bearer" in v for v in values)


async def test_a_401_and_a_429_are_denials_with_their_reason(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    database_url: str,
    telemetry: Rig,
) -> None:
    key, _ = sql_key(database_url, "acme", "app", rpm=1)
    url = serve_app(Gateway(load_settings(env), telemetry=telemetry.telemetry))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        wrong = key[:-1] + ("y" if key.endswith("x") else "x")
        assert (await client.get("/v1/models", headers=bearer(wrong))).status_code == 401
        for expected in (200, 429):
            resp = await client.post(
                "/v1/chat/completions", json=chat("llama3.2:1b"), headers=bearer(key)
            )
            assert resp.status_code == expected
    await settled(telemetry, 3)
    statuses = sorted(
        (s.name, dict(s.attributes or {})["http.response.status_code"])
        for s in telemetry.spans()
        if s.parent is None
    )
    assert statuses == [
        ("GET /v1/models", 401),
        ("POST /v1/chat/completions", 200),
        ("POST /v1/chat/completions", 429),
    ]
    denials = telemetry.metrics()["gateway.admission.denials"]
    reasons = {p.attributes["gateway.denial.reason"]: p.value for p in denials}
    assert reasons == {"invalid_api_key": 1, "rate_limit_exceeded": 1}
    assert not any(wrong in v or key in v for v in every_value(telemetry))


async def test_a_failover_shows_both_attempts(
    env: dict[str, str],
    serve_app: Callable[[Any], str],
    database_url: str,
    telemetry: Rig,
) -> None:
    with serve_in_thread(Simulator()) as doomed:
        add_backend(database_url, "first", doomed, priority=10)
        add_backend(database_url, "second", serve_app(Simulator()))
        key, _ = sql_key(database_url, "acme", "app")
        url = serve_app(Gateway(load_settings(env), telemetry=telemetry.telemetry))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        resp = await client.post("/api/chat", json=chat("llama3.2:1b"), headers=bearer(key))
    assert resp.status_code == 200
    await settled(telemetry, 1)
    attempts = [s for s in telemetry.spans() if s.name == "chat llama3.2:1b"]
    by_backend = {dict(s.attributes or {})["gateway.backend.name"]: s for s in attempts}
    assert set(by_backend) == {"first", "second"}
    assert "error.type" in dict(by_backend["first"].attributes or {})
    assert dict(by_backend["second"].attributes or {})["gen_ai.usage.output_tokens"] == 8


def test_a_served_gateway_exports_spans_and_metrics_over_otlp(
    env: dict[str, str], database_url: str
) -> None:
    key, _ = sql_key(database_url, "acme", "app")
    port = free_port()
    with otlp_sink() as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={
                **os.environ,
                **env,
                "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
                "OTEL_METRIC_EXPORT_INTERVAL": "200",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
            stdout=WATCH.output_file("gateway serve"),
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, process)
            resp = httpx.post(
                f"{url}/api/chat", json=chat("llama3.2:1b"), headers=bearer(key), timeout=30
            )
            assert resp.status_code == 200
            sink.wait_for(
                lambda s: (
                    any(span.name == "POST /api/chat" for span in s.spans)
                    and bool(s.metric("gen_ai.client.token.usage"))
                )
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
    names = {span.name for span in sink.spans}
    assert {"POST /api/chat", "auth", "chat llama3.2:1b"} <= names
    assert sink.metric("http.server.request.duration")
