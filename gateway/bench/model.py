"""What a bench run measures and writes to bench-results.json: msgspec Structs, times in ms."""

from __future__ import annotations

import msgspec


class Percentiles(msgspec.Struct, frozen=True):
    p50: float
    p90: float
    p99: float
    max: float


class LoadSpec(msgspec.Struct, frozen=True):
    """One load: what to send, how hard, how long. Sent to the bundled generator on stdin."""

    url: str
    body: str
    headers: dict[str, str]
    concurrency: int
    duration_s: float
    stream: bool = False


class LoadResult(msgspec.Struct, frozen=True):
    """What a generator saw: every answer counted, non-2xx and transport errors apart."""

    generator: str
    requests: int
    ok: int
    non_2xx: int
    errors: int
    elapsed_s: float
    latency: Percentiles
    ttfb: Percentiles | None = None  # streamed loads: to the first body byte


class Run(msgspec.Struct, frozen=True):
    """One load against one target, with the server's own CPU and the generator's."""

    target: str  # direct, passthrough, gateway, gateway+otel
    path: str
    concurrency: int
    stream: bool
    rps: float
    cpu_ms_per_req: float
    generator_cpu_ms_per_req: float
    load: LoadResult
    redis_cpu_ms_per_req: float | None = None


class Added(msgspec.Struct, frozen=True):
    """Target minus direct, at the same path and concurrency."""

    target: str
    path: str
    concurrency: int
    stream: bool
    p50: float
    p90: float
    p99: float
    ttfb_p50: float | None = None


class IdleStreams(msgspec.Struct, frozen=True):
    """Slow streams held open through the gateway, and what they cost it in memory."""

    wanted: int
    opened: int
    rss_before_bytes: int
    rss_open_bytes: int
    rss_per_stream_bytes: float
    upstream_connections: int


class Telemetry(msgspec.Struct, frozen=True):
    status: str  # "measured" or "not measured"
    reason: str = ""
    sink_requests: int = 0


class Target(msgspec.Struct, frozen=True):
    """One of the issue's targets, as a value from this run against its bound."""

    name: str
    value: float | None
    bound: str
    met: bool | None


class Machine(msgspec.Struct, frozen=True):
    cpu_model: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    load_average_before: tuple[float, float, float]
    generator: str
    generator_version: str


class Settings(msgspec.Struct, frozen=True):
    quick: bool
    duration_s: float
    repeat: int
    workers: int
    concurrencies: tuple[int, ...]
    stream_concurrencies: tuple[int, ...]
    chunks: int
    idle_streams: int


class Results(msgspec.Struct):
    started_at: str
    machine: Machine
    settings: Settings
    runs: list[Run] = msgspec.field(default_factory=list)
    added: list[Added] = msgspec.field(default_factory=list)
    idle_streams: IdleStreams | None = None
    telemetry: Telemetry = msgspec.field(default_factory=lambda: Telemetry("not measured"))
    targets: list[Target] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)
