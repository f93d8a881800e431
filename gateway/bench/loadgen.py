"""The bundled load generator: a process of its own, so its CPU is counted apart from the servers'.

`python -m gateway.bench.loadgen` reads one JSON command on stdin (keys stay off the command line):
{"mode": "load", "spec": LoadSpec} drives a closed loop for the spec's duration and prints a
LoadResult; {"mode": "hold", "spec": LoadSpec, "count": N, "hold_s": S} opens N streams, prints
{"opened": n, "ok": n}, and closes them when a line arrives on stdin or S seconds pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import msgspec

from gateway.bench.model import LoadResult, LoadSpec, Percentiles
from gateway.bench.wire import Client, ConnectionLost, build_request

GENERATOR = "bundled (asyncio)"
CONNECT_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 60.0
# Opening thousands of connections at once overflows listen backlogs; a batch at a time.
HOLD_BATCH = 100


class Command(msgspec.Struct, frozen=True):
    mode: str
    spec: LoadSpec
    count: int = 0
    hold_s: float = 0.0


class HoldResult(msgspec.Struct, frozen=True):
    opened: int
    ok: int


def percentiles(samples: list[float]) -> Percentiles:
    """Nearest-rank percentiles of seconds, in milliseconds."""
    if not samples:
        return Percentiles(0.0, 0.0, 0.0, 0.0)
    ordered = sorted(samples)

    def rank(fraction: float) -> float:
        index = min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.5) - 1))
        return round(ordered[index] * 1000, 3)

    return Percentiles(rank(0.50), rank(0.90), rank(0.99), round(ordered[-1] * 1000, 3))


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.first_bytes: list[float] = []
        self.ok = self.non_2xx = self.errors = 0


async def _connect(host: str, port: int) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(Client, host, port), CONNECT_TIMEOUT_S
    )
    return client


async def _worker(spec: LoadSpec, deadline: float, tally: _Tally) -> None:
    host, port, raw = build_request(spec.url, spec.body.encode(), spec.headers)
    client: Client | None = None
    try:
        while time.perf_counter() < deadline:
            try:
                if client is None or client.closed:
                    client = await _connect(host, port)
                started = time.perf_counter()
                answer = await asyncio.wait_for(client.send(raw), ANSWER_TIMEOUT_S)
            except (ConnectionLost, OSError, TimeoutError):
                tally.errors += 1
                if client is not None:
                    client.close()
                client = None
                await asyncio.sleep(0.01)  # a refused connection must not spin
                continue
            if 200 <= answer.status < 300:
                tally.ok += 1
            else:
                tally.non_2xx += 1
            tally.latencies.append(answer.done_at - started)
            if spec.stream and answer.first_byte_at:
                tally.first_bytes.append(answer.first_byte_at - started)
    finally:
        if client is not None:
            client.close()


async def drive(spec: LoadSpec) -> LoadResult:
    """A closed loop of spec.concurrency connections, each sending as soon as it has an answer."""
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + spec.duration_s
    await asyncio.gather(*(_worker(spec, deadline, tally) for _ in range(spec.concurrency)))
    elapsed = time.perf_counter() - started
    return LoadResult(
        generator=GENERATOR,
        requests=len(tally.latencies),
        ok=tally.ok,
        non_2xx=tally.non_2xx,
        errors=tally.errors,
        elapsed_s=round(elapsed, 3),
        latency=percentiles(tally.latencies),
        ttfb=percentiles(tally.first_bytes) if spec.stream else None,
    )


async def _open_one(host: str, port: int, raw: bytes) -> tuple[Client | None, bool]:
    try:
        client = await _connect(host, port)
        client.send(raw)
        status = await asyncio.wait_for(client.headers_received(), ANSWER_TIMEOUT_S)
    except (ConnectionLost, OSError, TimeoutError):
        return None, False
    return client, 200 <= status < 300


async def hold(spec: LoadSpec, count: int, hold_s: float) -> None:
    """Open count streams (waiting for each one's headers), report, hold, close them all."""
    host, port, raw = build_request(spec.url, spec.body.encode(), spec.headers)
    clients: list[Client] = []
    ok = 0
    try:
        for start in range(0, count, HOLD_BATCH):
            batch = min(HOLD_BATCH, count - start)
            opened = await asyncio.gather(*(_open_one(host, port, raw) for _ in range(batch)))
            clients.extend(client for client, _ in opened if client is not None)
            ok += sum(1 for _, good in opened if good)
        result = HoldResult(opened=sum(1 for client in clients if not client.closed), ok=ok)
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), hold_s)
    finally:
        for client in clients:
            client.close()
        await asyncio.sleep(0.1)  # let the closes reach the wire before the loop ends


def _run(command: Command) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    if command.mode == "load":
        result = runner(drive(command.spec))
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    elif command.mode == "hold":
        runner(hold(command.spec, command.count, command.hold_s))
    else:
        raise SystemExit(f"unknown mode {command.mode!r}")


def main() -> None:
    command = msgspec.json.decode(sys.stdin.readline(), type=Command)
    _run(command)


if __name__ == "__main__":
    main()
