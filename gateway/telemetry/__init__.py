"""OpenTelemetry traces and metrics of the request path, exported over OTLP/HTTP.

Start-up: `telemetry = telemetry_from_env()` gives `OtelTelemetry` when an OTLP endpoint is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, or `..._TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`) and
`OTEL_SDK_DISABLED` is not `true`, else `NoTelemetry`, whose calls do and allocate nothing.
Register the gauges once (`observe_audit_depth`, `observe_breakers`); `await telemetry.aclose()`
at shutdown. Per request::

    with telemetry.request(method, route, headers, client_ip, request_id) as trace:
        with trace.stage("auth"):
            principal = ...
        trace.set_tenant(principal.tenant_id, principal.tenant_name)
        trace.set_model(model)              # once the caller may use it
        trace.deny("rate_limit")            # when admission refuses
        with trace.stage("upstream"), trace.upstream("ollama", "chat", model, backend) as up:
            headers = [*headers, *trace.traceparent()]
            up.first_token(); up.usage(prompt, completion, ["stop"])
        trace.end(status, error_code)

Spans: a server span per request, a child per stage, a client span per backend attempt (GenAI
attributes, the `first_token` event); made as plain objects and handed to the SDK's batch
processor when they end (`spans.py`), encoded to OTLP by `wire.py`. Never recorded: keys,
prompts, backend tokens, raw paths or query strings. Names are in `gateway.telemetry.names`.
"""

from gateway.telemetry.api import (
    NoRequestTrace,
    NoTelemetry,
    NoUpstreamTrace,
    RequestTrace,
    Telemetry,
    UpstreamTrace,
)
from gateway.telemetry.otel import OtelRequestTrace, OtelUpstreamTrace
from gateway.telemetry.sdk import OtelTelemetry, gateway_resource, telemetry_from_env

__all__ = [
    "NoRequestTrace",
    "NoTelemetry",
    "NoUpstreamTrace",
    "OtelRequestTrace",
    "OtelTelemetry",
    "OtelUpstreamTrace",
    "RequestTrace",
    "Telemetry",
    "UpstreamTrace",
    "gateway_resource",
    "telemetry_from_env",
]
