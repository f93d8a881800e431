"""The servers of one bench run: simulators, gateways, the bare pass-through and the OTLP sink.

Every server is registered with the run's ExitStack the moment it starts, so it is stopped
however the run ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

from gateway.bench.procs import Server, free_ports

READY_TIMEOUT_S = 60.0
HUGE_LIMIT = 1_000_000_000
KEY_CACHE_TTL_S = 3600
# Variables of the surrounding shell that would change what is measured.
_DROPPED_ENV = ("DATABASE_URL", "REDIS_URL", "OLLAMA_URL", "OLLAMA_BASE_URL", "GATEWAY_WORKERS")
_DROPPED_PREFIXES = ("OTEL_", "DEFAULT_", "AUDIT_", "OLLAMA_", "REDIS_", "LOCAL_KEY_")


def telemetry_env(sink_url: str | None) -> dict[str, str]:
    """OpenTelemetry's own variables: exporting to the sink, or off when there is none."""
    if sink_url is None:
        return {"OTEL_SDK_DISABLED": "true"}
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }


class Stack:
    """Starts servers for the run; each is stopped when the run's ExitStack closes."""

    def __init__(self, exits: ExitStack, logs: Path, workers: int) -> None:
        self._exits = exits
        self._logs = logs
        self.workers = workers
        base = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        self._base_env = {k: v for k, v in base.items() if not k.startswith(_DROPPED_PREFIXES)}

    def _start(self, name: str, argv: list[str], env: Mapping[str, str], ready: str) -> Server:
        server = Server(name, argv, env, self._logs / f"{name}.log")
        self._exits.callback(server.stop)
        server.wait_ready(ready, READY_TIMEOUT_S)
        return server

    def simulator(self, name: str, *, chunks: int, ttft_ms: float = 0.0) -> tuple[Server, str]:
        (port,) = free_ports(1)
        argv = [
            *(sys.executable, "-m", "gateway", "sim", "--host", "127.0.0.1", "--port", str(port)),
            *("--chunks", str(chunks), "--token-delay-ms", "0", "--ttft-ms", str(ttft_ms)),
        ]
        url = f"http://127.0.0.1:{port}"
        return self._start(name, argv, self._base_env, url + "/api/version"), url

    def passthrough(self, upstream: str) -> tuple[Server, str]:
        (port,) = free_ports(1)
        argv = [
            *(sys.executable, "-m", "gateway.bench.passthrough", "--port", str(port)),
            *("--upstream", upstream, "--workers", str(self.workers)),
        ]
        url = f"http://127.0.0.1:{port}"
        return self._start("passthrough", argv, self._base_env, url + "/api/version"), url

    def gateway(
        self,
        name: str,
        stores: Mapping[str, str],
        upstream: str,
        *,
        sink_url: str | None = None,
        in_flight: int | None = None,
    ) -> tuple[Server, str]:
        """A gateway on the run's stores, with limits too high to refuse anything.

        in_flight raises what bounds the requests open at once in one process: its upstream
        connections and its cap on requests served at once.
        """
        (port,) = free_ports(1)
        sized = {}
        if in_flight is not None:
            sized = {
                "OLLAMA_MAX_CONNECTIONS": str(in_flight),
                "GATEWAY_MAX_CONCURRENT_REQUESTS": str(in_flight),
            }
        env = {
            **self._base_env,
            **stores,
            "OLLAMA_URL": upstream,
            **sized,
            "GATEWAY_LOG_LEVEL": "WARNING",
            # The bench measures the path, not refusals: nothing here may answer 429.
            "DEFAULT_RPM": str(HUGE_LIMIT),
            "DEFAULT_TPM": str(HUGE_LIMIT),
            "DEFAULT_CONCURRENT": str(HUGE_LIMIT),
            # The path of a cached key. When the shared entry expires under load, every
            # request in flight verifies argon2 at once: a stall of seconds (PERFORMANCE.md)
            # that would land in whichever load it happened to hit.
            "REDIS_KEY_CACHE_TTL_S": str(KEY_CACHE_TTL_S),
            **telemetry_env(sink_url),
        }
        argv = [
            *(sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1"),
            *("--port", str(port), "--workers", str(self.workers)),
        ]
        url = f"http://127.0.0.1:{port}"
        return self._start(name, argv, env, url + "/readyz"), url

    def sink(self) -> tuple[Server, str]:
        (port,) = free_ports(1)
        argv = [sys.executable, "-m", "gateway.bench.sink", "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        return self._start("otlp-sink", argv, self._base_env, url + "/stats"), url
