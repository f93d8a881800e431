"""wrk as the load generator: found on PATH (or installed from Debian's package), driven by Lua.

wrk cannot time a stream's first byte, so streamed loads always use the bundled generator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gateway.bench.model import LoadResult, LoadSpec, Percentiles
from gateway.bench.procs import say

GENERATOR = "wrk"
INSTALL_TIMEOUT_S = 180.0
_MARK = "BENCH-RESULT"
# The body and headers go in Lua long strings; errors.status counts answers of 400 and above.
_SCRIPT = """wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{mark} %d %d %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def find_wrk(*, install: bool) -> tuple[str | None, str]:
    """(path to wrk or None, why not): installs Debian's package when allowed, as root, with apt."""
    found = shutil.which("wrk")
    if found is not None:
        return found, ""
    if not install:
        return None, "wrk is not installed"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "wrk is not installed (installing it needs root and apt-get)"
    say("wrk is not installed; trying `apt-get install wrk`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_wrk = ["apt-get", "install", "-y", "-q", "wrk"]
    # Stale package lists make the first install fail; then update them and try once more.
    for step in (install_wrk, ["apt-get", "update", "-q"], install_wrk):
        try:
            subprocess.run(  # noqa: S603 - fixed arguments, apt-get found on PATH
                step, env=env, capture_output=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(step)}` timed out"
        found = shutil.which("wrk")
        if found is not None:
            return found, ""
    return None, "apt-get could not install wrk"


def wrk_version(wrk: str) -> str:
    done = subprocess.run(  # noqa: S603 - the wrk found on PATH
        [wrk, "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (done.stdout or done.stderr).strip().splitlines()
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright …": the second word is the version.
    words = first[0].split() if first else []
    return words[1] if len(words) > 1 else "unknown"


def write_script(spec: LoadSpec, directory: Path) -> Path:
    """The Lua script for spec, readable by its owner only: it holds the API key."""
    headers = "\n".join(
        f'wrk.headers["{name}"] = [==[{value}]==]'
        for name, value in {"Content-Type": "application/json", **spec.headers}.items()
    )
    script = directory / "load.lua"
    script.touch(mode=0o600)
    script.write_text(_SCRIPT.format(body=spec.body, headers=headers, mark=_MARK))
    return script


def wrk_argv(wrk: str, spec: LoadSpec, script: Path) -> list[str]:
    seconds = max(1, round(spec.duration_s))
    return [
        *(wrk, "-t1", f"-c{spec.concurrency}", f"-d{seconds}s", "--timeout", "30s"),
        *("-s", str(script), spec.url),
    ]


def parse_output(stdout: str) -> LoadResult:
    """The LoadResult from the script's done() line; ValueError when wrk printed none."""
    for line in stdout.splitlines():
        if line.startswith(_MARK):
            values = [int(field) for field in line.split()[1:]]
            requests, duration_us, connect, read, write, status, timeout = values[:7]
            p50, p90, p99, top = (value / 1000 for value in values[7:])
            return LoadResult(
                generator=GENERATOR,
                requests=requests,
                ok=requests - status,
                non_2xx=status,
                errors=connect + read + write + timeout,
                elapsed_s=round(duration_us / 1e6, 3),
                latency=Percentiles(p50, p90, p99, top),
            )
    raise ValueError(f"wrk printed no result line: {stdout[-500:]!r}")
