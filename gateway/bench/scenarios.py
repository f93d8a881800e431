"""The bench's loads: whole and streamed chat against each target, and idle streams held open.

Targets at one path and concurrency run back to back, so they share the machine's mood.
"""

from __future__ import annotations

import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from gateway.bench.measure import Generator, measure
from gateway.bench.model import IdleStreams, LoadResult, LoadSpec, Percentiles, Run
from gateway.bench.procs import BenchError, Server, say

MODEL = "llama3.2:1b"
PATHS = ("/v1/chat/completions", "/api/chat")
FIRST_ANSWER_TIMEOUT_S = 30.0
_MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@dataclass(frozen=True)
class Target:
    name: str
    server: Server
    url: str
    headers: dict[str, str]


def body(*, stream: bool) -> str:
    """A chat request, saying whether to stream (Ollama's default is yes, OpenAI's no)."""
    return msgspec.json.encode({"model": MODEL, "messages": _MESSAGES, "stream": stream}).decode()


def spec(target: Target, path: str, concurrency: int, duration_s: float, stream: bool) -> LoadSpec:
    return LoadSpec(
        url=target.url + path,
        body=body(stream=stream),
        headers=target.headers,
        concurrency=concurrency,
        duration_s=duration_s,
        stream=stream,
    )


def first_answer(target: Target, path: str, stream: bool) -> None:
    """One request, waited for patiently: the first one pays for the key's argon2 verify."""
    request = urllib.request.Request(  # noqa: S310 - loopback http, built from our own URL
        target.url + path, data=body(stream=stream).encode(), headers=target.headers
    )
    try:
        with urllib.request.urlopen(request, timeout=FIRST_ANSWER_TIMEOUT_S) as answer:  # noqa: S310
            answer.read()
    except urllib.error.HTTPError as error:
        raise BenchError(
            f"{target.name} answered {path} with {error.code}: {error.read(300)!r}"
        ) from None
    except OSError as error:
        raise BenchError(f"{target.name} did not answer {path}: {error}") from None


def warm_up(
    generator: Generator, targets: Sequence[Target], duration_s: float, stream: bool
) -> None:
    """Fill caches and pools; every answer must be a 2xx, or the numbers would be lies."""
    for target in targets:
        for path in PATHS:
            first_answer(target, path, stream)
            if not duration_s:
                continue
            load, _ = generator.load(spec(target, path, 8, duration_s, stream))
            if load.ok == 0 or load.non_2xx or load.errors:
                raise BenchError(
                    f"{target.name} {path}: {load.ok} answers 2xx, {load.non_2xx} not, "
                    f"{load.errors} transport errors during the warm-up; see its log"
                )


def matrix(
    generator: Generator,
    targets: Sequence[Target],
    concurrencies: Sequence[int],
    *,
    duration_s: float,
    repeat: int,
    stream: bool,
    redis_url: str,
) -> list[Run]:
    """Every target at every path and concurrency, repeat times; the median of the repeats."""
    runs: dict[tuple[str, str, int], list[Run]] = {}
    for _ in range(repeat):
        for path in PATHS:
            for concurrency in concurrencies:
                for target in targets:
                    # One request first: caches the idle gaps between loads let expire are
                    # refilled by it alone, not by the whole load at once (see PERFORMANCE.md).
                    first_answer(target, path, stream)
                    load = spec(target, path, concurrency, duration_s, stream)
                    uses_redis = target.name.startswith("gateway")
                    run = measure(
                        generator,
                        target.name,
                        target.server,
                        load,
                        path,
                        redis_url if uses_redis else None,
                    )
                    runs.setdefault((target.name, path, concurrency), []).append(run)
                    say(_line(run))
    return [median_run(group) for group in runs.values()]


def _line(run: Run) -> str:
    kind = "stream" if run.stream else "whole"
    first = f" ttfb p50 {run.load.ttfb.p50:.2f}" if run.load.ttfb else ""
    return (
        f"{run.target:<12} {run.path:<21} {kind} c={run.concurrency:<3} "
        f"{run.rps:8.1f} req/s  cpu {run.cpu_ms_per_req:.3f} ms/req  "
        f"p50 {run.load.latency.p50:.2f} p99 {run.load.latency.p99:.2f} ms{first}  "
        f"non-2xx {run.load.non_2xx} errors {run.load.errors}"
    )


def _median_percentiles(values: Sequence[Percentiles]) -> Percentiles:
    return Percentiles(
        p50=statistics.median(v.p50 for v in values),
        p90=statistics.median(v.p90 for v in values),
        p99=statistics.median(v.p99 for v in values),
        max=max(v.max for v in values),
    )


def median_run(runs: Sequence[Run]) -> Run:
    """One Run from repeats: medians of the rates and times, sums of the counts."""
    if len(runs) == 1:
        return runs[0]
    loads = [run.load for run in runs]
    ttfbs = [load.ttfb for load in loads if load.ttfb is not None]
    load = LoadResult(
        generator=loads[0].generator,
        requests=sum(x.requests for x in loads),
        ok=sum(x.ok for x in loads),
        non_2xx=sum(x.non_2xx for x in loads),
        errors=sum(x.errors for x in loads),
        elapsed_s=round(sum(x.elapsed_s for x in loads), 3),
        latency=_median_percentiles([x.latency for x in loads]),
        ttfb=_median_percentiles(ttfbs) if ttfbs else None,
    )
    redis = [run.redis_cpu_ms_per_req for run in runs if run.redis_cpu_ms_per_req is not None]
    return msgspec.structs.replace(
        runs[0],
        rps=statistics.median(run.rps for run in runs),
        cpu_ms_per_req=statistics.median(run.cpu_ms_per_req for run in runs),
        generator_cpu_ms_per_req=statistics.median(run.generator_cpu_ms_per_req for run in runs),
        redis_cpu_ms_per_req=statistics.median(redis) if redis else None,
        load=load,
    )


def established(port: int) -> int:
    """Established TCP connections whose local end is port (a server's accepted connections)."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def idle_streams(
    generator: Generator, gateway: Target, upstream_port: int, count: int, hold_s: float
) -> IdleStreams:
    """Open count slow streams through the gateway and weigh its RSS with them open."""
    load = spec(gateway, "/api/chat", 1, hold_s, stream=True)
    # A few streams first, so the first stream's one-off allocations are not billed to the rest.
    with generator.hold(load, 50, hold_s) as opened:
        if opened.ok == 0:
            raise BenchError("not one slow stream opened through the gateway; see its log")
    time.sleep(1.0)
    before = gateway.server.rss_bytes()
    with generator.hold(load, count, hold_s) as opened:
        time.sleep(1.0)
        during = gateway.server.rss_bytes()
        upstream = established(upstream_port)
    per_stream = (during - before) / opened.ok if opened.ok else 0.0
    return IdleStreams(
        wanted=count,
        opened=opened.ok,
        rss_before_bytes=before,
        rss_open_bytes=during,
        rss_per_stream_bytes=round(per_stream, 1),
        upstream_connections=upstream,
    )


def as_targets(
    servers: Mapping[str, tuple[Server, str]], key: str, gateways: Sequence[str]
) -> list[Target]:
    auth = {"Authorization": f"Bearer {key}"}
    return [
        Target(name, server, url, auth if name in gateways else {})
        for name, (server, url) in servers.items()
    ]
