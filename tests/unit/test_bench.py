"""The bench's arithmetic and parsing: percentiles, wrk's line, split answers, the targets."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.bench.loadgen import percentiles
from gateway.bench.model import (
    Added,
    IdleStreams,
    LoadResult,
    Machine,
    Percentiles,
    Results,
    Run,
    Settings,
)
from gateway.bench.report import BEGIN, END, markdown, targets, update_docs
from gateway.bench.run import added
from gateway.bench.scenarios import median_run
from gateway.bench.wire import Answer, Client
from gateway.bench.wrk import find_wrk, parse_output

CHUNKED = (
    b"HTTP/1.1 200 \r\ncontent-type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
)
PLAIN = b"HTTP/1.1 503 \r\nContent-Length: 11\r\nconnection: close\r\n\r\nunavailable"


class _Wire:
    """The transport end the client writes requests to; the test plays the server."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        pass


def answer_of(response: bytes, cuts: list[int]) -> tuple[Answer, bool]:
    """The answer once every byte is in; it must not be complete one byte earlier."""

    async def exchange() -> tuple[Answer, bool]:
        client = Client()
        client.connection_made(_Wire())  # type: ignore[arg-type] # only write and close are used
        waiter = client.send(b"POST / HTTP/1.1\r\n\r\n")
        points = [0, *sorted(min(cut, len(response) - 1) for cut in cuts), len(response) - 1]
        for start, end in itertools.pairwise(points):
            if start < end:
                client.data_received(response[start:end])
        assert not waiter.done()
        client.data_received(response[-1:])
        assert waiter.done()
        return await waiter, client.closed

    return asyncio.run(exchange())


@given(st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=10))
def test_a_chunked_answer_ends_at_its_last_chunk_however_it_is_split(cuts: list[int]) -> None:
    answer, closed = answer_of(CHUNKED, cuts)
    assert answer.status == 200
    assert 0 < answer.first_byte_at <= answer.done_at
    assert not closed


@given(st.lists(st.integers(min_value=0, max_value=len(PLAIN)), max_size=6))
def test_a_sized_answer_that_closes_the_connection_is_still_an_answer(cuts: list[int]) -> None:
    answer, closed = answer_of(PLAIN, cuts)
    assert answer.status == 503
    assert closed  # the next request takes a new connection instead of failing


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    samples = [n / 1000 for n in range(1, 101)]  # 1 … 100 ms
    assert percentiles(samples) == Percentiles(p50=50.0, p90=90.0, p99=99.0, max=100.0)
    assert percentiles([0.004]) == Percentiles(4.0, 4.0, 4.0, 4.0)
    assert percentiles([]) == Percentiles(0.0, 0.0, 0.0, 0.0)


def test_wrk_done_line_becomes_a_result_with_refusals_apart() -> None:
    out = "Running 2s test @ http://x\nBENCH-RESULT 1000 2000000 1 2 0 7 1 850 1200 4100 9000\n"
    result = parse_output(out)
    assert (result.requests, result.ok, result.non_2xx, result.errors) == (1000, 993, 7, 4)
    assert result.elapsed_s == 2.0
    assert result.latency == Percentiles(0.85, 1.2, 4.1, 9.0)
    with pytest.raises(ValueError, match="no result line"):
        parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_without_wrk_and_not_allowed_to_install_it_the_bench_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_wrk(install=False) == (None, "wrk is not installed")


def load(p50: float, p99: float, ttfb: float | None = None) -> LoadResult:
    first = Percentiles(ttfb, ttfb, ttfb, ttfb) if ttfb is not None else None
    return LoadResult("wrk", 100, 100, 0, 0, 1.0, Percentiles(p50, p50, p99, p99), first)


def run(target: str, c: int, cpu: float, rps: float, p50: float, p99: float, **kw: object) -> Run:
    stream = bool(kw.get("stream", False))
    ttfb = kw.get("ttfb")
    assert ttfb is None or isinstance(ttfb, float)
    return Run(target, "/api/chat", c, stream, rps, cpu, 0.05, load(p50, p99, ttfb))


def results(gateway_cpu_at_32: float) -> Results:
    runs = [
        run("direct", 1, 0.2, 4000, 0.3, 1.0),
        run("passthrough", 1, 1.0, 900, 1.2, 3.0),
        run("gateway", 1, 1.2, 800, 1.1, 3.0),
        run("gateway+otel", 1, 1.4, 700, 1.3, 3.5),
        run("direct", 8, 0.2, 4800, 1.0, 2.0),
        run("passthrough", 8, 1.1, 900, 8.0, 20.0),
        run("gateway", 8, 1.2, 850, 7.0, 8.0),
        run("direct", 32, 0.2, 4900, 5.0, 9.0),
        run("passthrough", 32, 1.6, 600, 50.0, 90.0),
        run("gateway", 32, gateway_cpu_at_32, 800, 40.0, 60.0),
        run("direct", 1, 0.3, 3000, 0.5, 1.0, stream=True, ttfb=0.25),
        run("gateway", 1, 1.4, 700, 1.6, 4.0, stream=True, ttfb=0.75),
    ]
    machine = Machine("cpu", 2, 24.0, "Linux", "3.11", (0.1, 0.1, 0.1), "wrk", "4.1")
    settings = Settings(False, 8.0, 1, 1, (1, 8, 32), (1,), 16, 2000)
    out = Results("2026-01-01T00:00:00+00:00", machine, settings, runs)
    out.idle_streams = IdleStreams(2000, 2000, 100_000_000, 260_000_000, 80_000.0, 2000)
    out.added = added(runs)
    out.targets = targets(out)
    return out


def test_added_latency_is_the_target_minus_direct_at_the_same_level() -> None:
    rows = {(a.target, a.concurrency, a.stream): a for a in results(1.3).added}
    assert rows["gateway", 1, False] == Added("gateway", "/api/chat", 1, False, 0.8, 0.8, 2.0)
    assert rows["gateway", 1, True].ttfb_p50 == 0.5
    assert ("direct", 1, False) not in rows


def test_targets_are_ratios_within_the_run_and_say_which_are_met() -> None:
    met = {t.name.split(": ", 1)[-1]: (t.value, t.met) for t in results(1.3).targets}
    assert met["CPU/request, gateway ÷ pass-through, c=1"] == (1.2, True)
    assert met["CPU/request, gateway+otel ÷ pass-through, c=1"] == (1.4, False)
    assert met["CPU/request growth, gateway c=32 ÷ c=1"] == (1.083, True)
    assert met["added p50 at c=1 (ms)"] == (0.8, True)
    assert met["added p99 at c=8 (ms)"] == (6.0, False)
    assert met["req/s, gateway ÷ pass-through, c=32"] == (1.333, True)
    assert met["req/s, gateway ÷ LiteLLM's 107 (issue 8), c=32"] == (7.477, False)
    assert met["streamed added TTFB p50 at c=1 (ms)"] == (0.5, True)
    assert met["gateway RSS per open idle stream (kB)"] == (80.0, True)
    grown = {t.name.split(": ", 1)[-1]: t.met for t in results(1.5).targets}
    assert grown["CPU/request growth, gateway c=32 ÷ c=1"] is False


def test_the_repeats_of_a_load_give_their_medians_and_their_counts_summed() -> None:
    runs = [
        run("gateway", 8, cpu, rps, p50, 9.0) for cpu, rps, p50 in ((1, 9, 3), (3, 7, 1), (2, 8, 2))
    ]
    merged = median_run(runs)
    assert (merged.cpu_ms_per_req, merged.rps, merged.load.latency.p50) == (2, 8, 2)
    assert merged.load.requests == 300


def test_the_markdown_names_the_machine_and_every_run(tmp_path: Path) -> None:
    table = markdown(results(1.3))
    assert "cpu, 2 cores" in table
    assert table.count("| /api/chat | ") == 12  # one row per run, gateway+otel included
    assert "80.0 kB per stream" in table
    # The simulator alone at c=8 against issue 8's host, so a reader can tell host from code.
    assert "answered 4,800 on /api/chat (req/s, c=8), 0.98× the 4,900" in table
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(f"# Performance\n\nmethod\n\n{BEGIN}\nold numbers\n{END}\n\nhow to rerun\n")
    update_docs(doc, table)
    text = doc.read_text()
    assert "old numbers" not in text
    assert text.startswith("# Performance\n\nmethod\n\n")
    assert text.endswith(f"{END}\n\nhow to rerun\n")
    assert table in text
    doc.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- bench-results:begin -->"):
        update_docs(doc, table)


def test_a_run_without_the_simulator_at_c8_names_no_host_speed() -> None:
    out = results(1.3)
    out.runs = [r for r in out.runs if r.concurrency != 8]
    assert "Host speed" not in markdown(out)


def test_results_survive_their_json() -> None:
    original = results(1.3)
    again = msgspec.json.decode(msgspec.json.encode(original), type=Results)
    assert again == original
