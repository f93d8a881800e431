"""Serving with hypercorn: the gateway (N uvloop workers) and the simulator (one process)."""

from __future__ import annotations

import logging
from functools import partial

import anyio
from hypercorn.config import Config
from hypercorn.run import run

from gateway.config import Settings
from gateway.upstream.sim import SimConfig, Simulator


def configure_logging(settings: Settings) -> None:
    fmt = (
        '{"ts":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}'
        if settings.log_format == "json"
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=settings.log_level, format=fmt)


def hypercorn_config(host: str, port: int, *, graceful_timeout_s: float = 30.0) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # On SIGTERM: stop accepting, give live streams this long, then run the lifespan shutdown
    # (which flushes the audit buffer).
    config.graceful_timeout = graceful_timeout_s
    config.accesslog = None
    # No software banner for scanners to match against advisories.
    config.include_server_header = False
    config.errorlog = "-"
    return config


def gateway_config(settings: Settings, *, host: str, port: int) -> Config:
    """The hypercorn configuration the gateway serves with: slow and greedy clients bounded.

    Hypercorn's idle timer runs from the moment a connection opens (or finishes its last
    answer) until a whole request head has arrived, so `keep_alive_timeout` is both the
    keep-alive idle timeout and the header deadline: a client trickling its headers is cut off.
    The body's deadline is the gateway's own (`read_body`). `read_timeout` stays unset: it
    would count the silence of a client waiting for a long answer, and end the answer.
    """
    config = hypercorn_config(host, port, graceful_timeout_s=settings.shutdown_grace_s)
    config.keep_alive_timeout = settings.client_header_timeout_s
    # The request line and headers together (HTTP/1.1); the same bound for HTTP/2's header list.
    config.h11_max_incomplete_size = settings.max_header_bytes
    config.h2_max_header_list_size = settings.max_header_bytes
    config.read_timeout = None
    return config


def run_gateway(
    settings: Settings, *, host: str | None, port: int | None, workers: int | None
) -> None:
    configure_logging(settings)
    config = gateway_config(
        settings, host=host or settings.bind_host, port=port or settings.bind_port
    )
    config.workers = workers or settings.workers
    config.worker_class = "uvloop"
    # Workers are separate processes; each builds its own app from the same environment.
    config.application_path = "gateway.serving:worker_app()"
    run(config)


def run_simulator(sim_config: SimConfig, *, host: str, port: int) -> None:
    from hypercorn.asyncio import serve

    config = hypercorn_config(host, port)
    anyio.run(
        partial(serve, Simulator(sim_config), config),  # type: ignore[arg-type] # hypercorn's own ASGI typing is narrower than a plain callable
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )
