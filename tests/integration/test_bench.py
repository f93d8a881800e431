"""The bench's parts on real sockets: generators, pass-through, sink, held streams, stopping."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.bench.measure import Generator
from gateway.bench.model import LoadSpec
from gateway.bench.passthrough import PassThrough
from gateway.bench.procs import Server, cpu_seconds, descendants, free_ports, rss_bytes
from gateway.bench.scenarios import body
from gateway.upstream.sim import SimConfig, Simulator


def chat(url: str, *, stream: bool, concurrency: int = 2, duration_s: float = 0.5) -> LoadSpec:
    return LoadSpec(url + "/api/chat", body(stream=stream), {}, concurrency, duration_s, stream)


def gone(pids: list[int], timeout_s: float = 15.0) -> bool:
    """Whether every pid has exited (zombies count as gone) within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_bundled_generator_counts_every_answer_it_got(
    serve_app: Callable[[Any], str], tmp_path: Path
) -> None:
    sim = Simulator(SimConfig(chunks=16))
    result, own_cpu = Generator(None, tmp_path).load(chat(serve_app(sim), stream=True))
    assert result.requests > 0
    assert result.ok == result.requests
    assert result.non_2xx == result.errors == 0
    # Nothing was in flight when it stopped: the simulator finished exactly what it counted.
    assert sim.stats.streams_finished == result.requests
    assert result.ttfb is not None
    assert result.ttfb.p50 <= result.latency.p50
    assert own_cpu > 0


def test_refusals_and_refused_connections_are_not_counted_as_answers(
    start_simulator: Callable[..., Any], tmp_path: Path
) -> None:
    generator = Generator(None, tmp_path)
    with start_simulator(fail_status=429) as url:
        refused, _ = generator.load(chat(url, stream=False))
    assert refused.requests > 0
    assert refused.ok == 0
    assert refused.non_2xx == refused.requests
    (port,) = free_ports(1)
    nobody, _ = generator.load(chat(f"http://127.0.0.1:{port}", stream=False, duration_s=0.3))
    assert nobody.requests == nobody.ok == 0
    assert nobody.errors > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_counts_refusals_apart(start_simulator: Callable[..., Any], tmp_path: Path) -> None:
    generator = Generator(shutil.which("wrk"), tmp_path)
    with start_simulator(fail_status=503) as url:
        refused, _ = generator.load(chat(url, stream=False, duration_s=1))
    assert refused.generator == "wrk"
    assert refused.requests > 0
    assert refused.non_2xx == refused.requests
    assert not list(tmp_path.iterdir())  # the script with the key in it is gone


def post(url: str, payload: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=payload.encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_pass_through_forwards_whole_and_streamed_answers(
    serve_app: Callable[[Any], str], start_simulator: Callable[..., Any]
) -> None:
    sim = Simulator(SimConfig(chunks=5))
    floor = serve_app(PassThrough(serve_app(sim)))
    status, streamed = post(floor + "/api/chat", body(stream=True))
    lines = [json.loads(line) for line in streamed.splitlines()]
    assert status == 200
    assert len(lines) == 6
    assert lines[-1]["done"] is True
    status, whole = post(floor + "/api/chat", body(stream=False))
    assert status == 200
    assert json.loads(whole)["eval_count"] == 5
    assert sim.stats.requests == 2
    with start_simulator(fail_status=503) as failing:
        status, _ = post(serve_app(PassThrough(failing)) + "/api/chat", body(stream=False))
    assert status == 503


def test_the_otlp_sink_takes_exports_and_counts_them(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "gateway.bench.sink", "--port", str(port)]
    sink = Server("otlp-sink", argv, {}, tmp_path / "sink.log")
    try:
        sink.wait_ready(url + "/stats", 30)
        assert post(url + "/v1/traces", "spans")[0] == 200
        assert post(url + "/v1/metrics", "points")[0] == 200
        assert post(url + "/v1/nothing", "x")[0] == 404
        # One connection for many exports, as a collector keeps it: a new one each would be
        # billed to the gateway under test.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        statuses, sockets = [], []
        for _ in range(2):
            connection.request("POST", "/v1/traces", body=b"spans")
            answer = connection.getresponse()
            answer.read()
            statuses.append(answer.status)
            sockets.append(connection.sock)
        connection.close()
        with urllib.request.urlopen(url + "/stats", timeout=5) as answer:
            stats = json.loads(answer.read())
    finally:
        sink.stop()
    assert statuses == [200, 200]
    assert sockets[0] is not None
    assert sockets[0] is sockets[1]
    assert stats["counts"] == {"/v1/traces": 3, "/v1/metrics": 1}


def test_held_streams_are_open_upstream_and_cancelled_when_released(
    serve_app: Callable[[Any], str], tmp_path: Path
) -> None:
    sim = Simulator(SimConfig(ttft_ms=60_000))
    url = serve_app(sim)
    with Generator(None, tmp_path).hold(chat(url, stream=True), 150, hold_s=30) as opened:
        assert (opened.opened, opened.ok) == (150, 150)
        # The simulator counts a stream just after its headers went out.
        assert eventually(lambda: sim.stats.streams_open == 150)
    assert eventually(lambda: sim.stats.streams_cancelled == 150)
    assert sim.stats.streams_open == 0


def test_stopping_a_server_stops_its_workers(simulator_url: str, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    argv = [
        *(sys.executable, "-m", "gateway.bench.passthrough", "--port", str(port)),
        *("--upstream", simulator_url, "--workers", "2"),
    ]
    server = Server("passthrough", argv, {"PATH": "/usr/bin:/bin"}, tmp_path / "pt.log")
    try:
        server.wait_ready(f"http://127.0.0.1:{port}/api/version", 30)
        tree = descendants(server.pid)
        assert len(tree) >= 3  # hypercorn's master and its two workers
        assert cpu_seconds(server.pid) > 0
        assert rss_bytes(server.pid) > rss_bytes(tree[-1]) > 0
    finally:
        server.stop()
    assert gone(tree)
