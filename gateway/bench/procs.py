"""Processes the bench starts: launch in a session of their own, wait, stop; their CPU and RSS.

CPU and memory come from /proc (Linux), summed over a server and its worker processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE = Path("/proc")
STOP_TIMEOUT_S = 10.0


_STARTED = time.monotonic()


def say(message: str, *, error: bool = False) -> None:
    """One line of progress, with the seconds since the bench started."""
    print(
        f"bench [{time.monotonic() - _STARTED:6.1f} s] {message}",
        file=sys.stderr if error else sys.stdout,
        flush=True,
    )


class BenchError(RuntimeError):
    """The bench cannot go on; the message says what to fix."""


def descendants(pid: int) -> list[int]:
    """pid and every process below it (hypercorn's workers, their helpers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in (_PAGE / str(current) / "task").glob("*/children"):
            try:
                queue.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue  # the thread or process ended while we looked
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of pid's whole process tree, all threads."""
    total = 0
    for member in descendants(pid):
        try:
            stat = (_PAGE / str(member) / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may hold spaces, start at state (field 3).
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS_PER_S


def rss_bytes(pid: int) -> int:
    """Resident memory of pid's whole process tree."""
    total = 0
    for member in descendants(pid):
        try:
            status = (_PAGE / str(member) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports nothing listens on right now (all held open while picking)."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class Server:
    """One child process (a server and its workers), in a process group of its own."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            # A session of its own: Ctrl-C reaches only the bench, which stops servers in order.
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join("  " + line for line in text)

    def wait_ready(self, url: str, timeout_s: float) -> None:
        """Until url answers 200; BenchError with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback http
                    if answer.status == 200:
                        return
                    last = f"HTTP {answer.status}"
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
            except OSError as error:
                last = type(error).__name__
            time.sleep(0.1)
        raise BenchError(
            f"{self.name} not ready after {timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL it if it lingers; never raises."""
        if self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it")
        # Workers whose master died first would otherwise linger in the group.
        _signal_group(self.pid, signal.SIGKILL)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            say(f"{self.name} (pid {self.pid}) would not die", error=True)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
