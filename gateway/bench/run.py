"""One bench run from start to end: stores, servers, the loads, and everything stopped after.

The steps follow issue 8: whole answers at each concurrency (the gateway with telemetry exporting
among the targets), streams, and idle streams.
"""

from __future__ import annotations

import os
import platform
import secrets
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from gateway.bench import scenarios
from gateway.bench.measure import Generator
from gateway.bench.model import Added, Machine, Results, Run, Settings, Telemetry
from gateway.bench.procs import say
from gateway.bench.stack import Stack
from gateway.bench.stores import bench_database, bench_redis, provision
from gateway.bench.wrk import find_wrk, wrk_version


class Options(msgspec.Struct, frozen=True):
    settings: Settings
    generator: str  # auto, wrk, bundled
    install_wrk: bool
    telemetry: bool
    warmup_s: float
    hold_s: float
    logs: Path


def machine(generator: Generator) -> Machine:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    load = os.getloadavg()
    return Machine(
        cpu_model=cpu,
        cores=os.cpu_count() or 0,
        memory_gib=round(memory_kib / 1024**2, 1),
        kernel=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        load_average_before=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
        generator=generator.name,
        generator_version=wrk_version(generator.wrk) if generator.wrk else "",
    )


def choose_generator(options: Options, scratch: Path) -> Generator:
    if options.generator == "bundled":
        return Generator(None, scratch)
    wrk, why = find_wrk(install=options.install_wrk)
    if wrk is None:
        if options.generator == "wrk":
            raise SystemExit(f"bench: --generator wrk, but {why}")
        say(f"{why}; using the bundled generator for every load")
    return Generator(wrk, scratch)


def added(runs: list[Run]) -> list[Added]:
    """Each target's latency minus the direct run's at the same path, concurrency and kind."""
    direct = {(r.path, r.concurrency, r.stream): r for r in runs if r.target == "direct"}
    out = []
    for run in runs:
        base = direct.get((run.path, run.concurrency, run.stream))
        if run.target == "direct" or base is None:
            continue
        mine, theirs = run.load.latency, base.load.latency
        ttfb = None
        if run.load.ttfb is not None and base.load.ttfb is not None:
            ttfb = round(run.load.ttfb.p50 - base.load.ttfb.p50, 3)
        out.append(
            Added(
                target=run.target,
                path=run.path,
                concurrency=run.concurrency,
                stream=run.stream,
                p50=round(mine.p50 - theirs.p50, 3),
                p90=round(mine.p90 - theirs.p90, 3),
                p99=round(mine.p99 - theirs.p99, 3),
                ttfb_p50=ttfb,
            )
        )
    return out


def _sink_exports(url: str) -> int:
    with urllib.request.urlopen(url + "/stats", timeout=5) as answer:  # noqa: S310 - loopback
        counts: dict[str, int] = msgspec.json.decode(answer.read())["counts"]
    return sum(counts.values())


def run(options: Options) -> Results:
    settings = options.settings
    run_id = secrets.token_hex(4)
    options.logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as exits:
        # Private: the wrk script in it holds the API key.
        scratch = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        generator = choose_generator(options, scratch)
        results = Results(
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=machine(generator),
            settings=settings,
        )
        busy, cores = results.machine.load_average_before[0], results.machine.cores
        if busy > cores / 2:
            results.notes.append(
                f"the machine was busy before the run (load average {busy:.2f} on {cores} "
                "cores): absolute numbers are noisy, ratios within the run less so"
            )
        database_url = exits.enter_context(bench_database(exits, run_id))
        redis_url, prefix = exits.enter_context(bench_redis(exits, run_id))
        stores = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
        stack = Stack(exits, options.logs, settings.workers)
        say("migrating the bench database and issuing a key")
        key = provision({**os.environ, **stores})
        say(f"starting the servers; their logs go to {options.logs}")
        sim = stack.simulator("simulator", chunks=settings.chunks)
        servers = {
            "direct": sim,
            "passthrough": stack.passthrough(sim[1]),
            "gateway": stack.gateway("gateway", stores, sim[1]),
        }
        # The gateway exporting telemetry runs beside the others, not after them: its ratio to
        # the pass-through is only worth something when both ran in the same minutes.
        sink_url = stack.sink()[1] if options.telemetry else None
        exporting = (
            {"gateway+otel": stack.gateway("gateway-otel", stores, sim[1], sink_url=sink_url)}
            if sink_url
            else {}
        )
        gateways = ["gateway", *exporting]
        for stream, concurrencies, targets in (
            (
                False,
                settings.concurrencies,
                scenarios.as_targets(servers | exporting, key, gateways),
            ),
            (True, settings.stream_concurrencies, scenarios.as_targets(servers, key, gateways)),
        ):
            say(f"{'streamed' if stream else 'whole'} answers, concurrency {concurrencies}")
            # The pools and caches are warm after the first round; streams need a check only.
            scenarios.warm_up(generator, targets, 0.0 if stream else options.warmup_s, stream)
            results.runs += scenarios.matrix(
                generator,
                targets,
                concurrencies,
                duration_s=settings.duration_s,
                repeat=settings.repeat,
                stream=stream,
                redis_url=redis_url,
            )
        results.telemetry = telemetry(sink_url)
        for server, _ in (servers["gateway"], *exporting.values()):
            server.stop()
        if settings.idle_streams:
            say(f"idle streams: {settings.idle_streams} slow streams through a fresh gateway")
            slow = stack.simulator("slow-simulator", chunks=4, ttft_ms=(options.hold_s + 60) * 1000)
            gateway = stack.gateway(
                "gateway-idle", stores, slow[1], in_flight=2 * settings.idle_streams
            )
            (target,) = scenarios.as_targets({"gateway": gateway}, key, ["gateway"])
            port = urlsplit(slow[1]).port or 0
            results.idle_streams = scenarios.idle_streams(
                generator, target, port, settings.idle_streams, options.hold_s
            )
        say("stopping everything the bench started")
    results.added = added(results.runs)
    return results


def telemetry(sink_url: str | None) -> Telemetry:
    """What the OTLP sink took in from the gateway+otel runs."""
    if sink_url is None:
        return Telemetry("not measured", reason="--no-telemetry")
    time.sleep(2.0)  # one more export interval, so the last batch lands
    exports = _sink_exports(sink_url)
    if exports == 0:
        return Telemetry("measured", reason="the sink received no export", sink_requests=0)
    return Telemetry("measured", sink_requests=exports)
