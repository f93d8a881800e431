"""`python -m gateway.bench` as an operator runs it: every target measured, nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import psycopg

from gateway.bench.model import Results
from gateway.bench.procs import descendants
from gateway.bench.report import BEGIN, END
from gateway.bench.scenarios import PATHS
from tests.secret_watch import WATCH

# Any whole key: prefix, 12-character id, 32-character secret.
WHOLE_KEY = re.compile(r"[a-z][a-z0-9]{0,15}_[A-Za-z0-9]{44}")
RUN_TIMEOUT_S = 240.0


class Watched:
    """The bench as a child process: its output, and every process it ever had below it."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.bench", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # A process group of its own, which a terminal's Ctrl-C reaches as a whole.
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.seen: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            WATCH.see("scripts/bench output", line)
            self.lines.append(line)

    def _sample(self) -> None:
        while self.process.poll() is None:
            self.seen.update(descendants(self.process.pid))
            time.sleep(0.05)

    def wait_for(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.1)
        return False

    def finish(self, timeout_s: float) -> int:
        code = self.process.wait(timeout_s)
        time.sleep(0.2)  # the reader thread takes the last lines
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def leftovers(self) -> list[int]:
        """Processes the bench started that are still running (zombies count as gone)."""
        alive = []
        for pid in self.seen - {self.process.pid}:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
        return alive


def bench_databases(pg_url: str) -> set[str]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'gateway_bench_%'"
        ).fetchall()
    return {row[0] for row in rows}


def bench_env(pg_url: str, redis_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": pg_url, "REDIS_URL": redis_url}


def test_a_short_run_measures_every_target_and_cleans_up(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    before = bench_databases(pg_url)
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(f"# Performance\n\n{BEGIN}\nnothing yet\n{END}\n")
    out = tmp_path / "out"
    bench = Watched(
        bench_env(pg_url, redis_url),
        *("--duration", "0.5", "--concurrency", "1", "--stream-concurrency", "1"),
        *("--idle-streams", "30", "--generator", "bundled", "--out", str(out)),
        *("--update-docs", str(doc), "--no-telemetry"),
    )
    assert bench.finish(RUN_TIMEOUT_S) == 0, bench.output
    results = msgspec.json.decode((out / "bench-results.json").read_bytes(), type=Results)
    measured = {(run.target, run.path, run.stream) for run in results.runs}
    assert measured == {
        (target, path, stream)
        for target in ("direct", "passthrough", "gateway")
        for path in PATHS
        for stream in (False, True)
    }
    for run in results.runs:
        assert run.load.requests > 0, run
        assert run.load.ok == run.load.requests, run
        assert run.cpu_ms_per_req > 0, run
    assert {(a.target, a.path, a.stream) for a in results.added} == {
        m for m in measured if m[0] != "direct"
    }
    assert results.idle_streams is not None
    assert results.idle_streams.opened == 30
    assert results.idle_streams.upstream_connections >= 30
    assert results.telemetry.status == "not measured"  # the short run skips it (--no-telemetry)
    assert results.machine.cores == os.cpu_count()
    assert (out / "bench-latency.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    table = (out / "bench-results.md").read_text()
    assert table in doc.read_text()
    assert "nothing yet" not in doc.read_text()
    for text in (bench.output, table, (out / "bench-results.json").read_text()):
        assert not WHOLE_KEY.search(text)
    for log in (out / "logs").iterdir():
        assert not WHOLE_KEY.search(log.read_text(errors="replace")), log.name
    assert len(bench.seen) > 5  # the servers and generators were watched
    assert bench.leftovers() == []
    assert bench_databases(pg_url) == before


def test_ctrl_c_stops_everything_the_run_started(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    before = bench_databases(pg_url)
    bench = Watched(
        bench_env(pg_url, redis_url),
        *("--duration", "5", "--generator", "bundled", "--out", str(tmp_path)),
    )
    try:
        assert bench.wait_for("whole answers", RUN_TIMEOUT_S), bench.output
        time.sleep(1.0)  # into the first load
        assert bench_databases(pg_url) - before  # its database exists while it runs
        os.killpg(bench.process.pid, signal.SIGINT)
        assert bench.finish(60) == 130, bench.output
    finally:
        if bench.process.poll() is None:
            bench.process.kill()
    assert "interrupted" in bench.output
    assert bench.leftovers() == []
    assert bench_databases(pg_url) == before
    assert not (tmp_path / "bench-results.json").exists()
