"""One measured load: the generator as a child process, the server's CPU read around it.

CPU per request is the server process tree's own CPU time over the requests it answered;
the generator's is read from this process's reaped children, the generator alone.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from gateway.bench import wrk as wrk_driver
from gateway.bench.loadgen import GENERATOR as BUNDLED
from gateway.bench.loadgen import Command, HoldResult
from gateway.bench.model import LoadResult, LoadSpec, Run
from gateway.bench.procs import BenchError, Server
from gateway.bench.stores import redis_cpu_seconds

# A generator gets its duration plus this much before it is killed.
GRACE_S = 60.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Generator:
    """wrk for whole answers when there is one, the bundled generator otherwise and for streams."""

    def __init__(self, wrk: str | None, scratch: Path) -> None:
        self.wrk = wrk
        self._scratch = scratch
        self.name = wrk_driver.GENERATOR if wrk else BUNDLED

    def load(self, spec: LoadSpec) -> tuple[LoadResult, float]:
        """The result and the generator's own CPU seconds."""
        before = _children_cpu()
        if self.wrk is not None and not spec.stream:
            script = wrk_driver.write_script(spec, self._scratch)
            try:
                stdout = self._run(wrk_driver.wrk_argv(self.wrk, spec, script), "", spec)
            finally:
                script.unlink(missing_ok=True)
            result = wrk_driver.parse_output(stdout)
        else:
            command = msgspec.json.encode(Command(mode="load", spec=spec)).decode() + "\n"
            stdout = self._run([sys.executable, "-m", "gateway.bench.loadgen"], command, spec)
            result = msgspec.json.decode(stdout.strip().splitlines()[-1], type=LoadResult)
        return result, _children_cpu() - before

    @staticmethod
    def _run(argv: list[str], stdin: str, spec: LoadSpec) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - our interpreter or the wrk found on PATH
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=spec.duration_s + GRACE_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"the load generator did not finish within {GRACE_S:.0f} s") from None
        if done.returncode != 0:
            raise BenchError(f"the load generator failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    @contextmanager
    def hold(self, spec: LoadSpec, count: int, hold_s: float) -> Iterator[HoldResult]:
        """count streams open until the block ends (at most hold_s), then closed."""
        command = Command(mode="hold", spec=spec, count=count, hold_s=hold_s)
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.bench.loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdin.write(msgspec.json.encode(command).decode() + "\n")
            process.stdin.flush()
            line = process.stdout.readline()
            if not line:
                raise BenchError("the stream holder exited before it opened its streams")
            yield msgspec.json.decode(line, type=HoldResult)
        finally:
            try:
                process.stdin.write("close\n")
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


def measure(
    generator: Generator,
    target: str,
    server: Server,
    spec: LoadSpec,
    path: str,
    redis_url: str | None = None,
) -> Run:
    """Drive spec against one server and relate its CPU (and Redis's) to the answers it gave."""
    redis_before = redis_cpu_seconds(redis_url) if redis_url else None
    cpu_before = server.cpu_seconds()
    load, generator_cpu = generator.load(spec)
    cpu = server.cpu_seconds() - cpu_before
    redis_after = redis_cpu_seconds(redis_url) if redis_url else None
    answered = max(1, load.requests)
    redis_ms = None
    if redis_before is not None and redis_after is not None:
        redis_ms = round((redis_after - redis_before) * 1000 / answered, 4)
    return Run(
        target=target,
        path=path,
        concurrency=spec.concurrency,
        stream=spec.stream,
        rps=round(load.requests / load.elapsed_s, 1) if load.elapsed_s else 0.0,
        cpu_ms_per_req=round(cpu * 1000 / answered, 4),
        generator_cpu_ms_per_req=round(generator_cpu * 1000 / answered, 4),
        load=load,
        redis_cpu_ms_per_req=redis_ms,
    )
