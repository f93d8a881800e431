"""Throwaway Postgres and Redis servers, started from local binaries, for tests and the demo.

`python -m gateway.devservices postgres|redis` starts one, prints its URL, and keeps it until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import psycopg
import redis

DEBIAN_POSTGRES_LIB = Path("/usr/lib/postgresql")
POSTGRES_SUPERUSER = "postgres"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
# Speed over durability: these clusters hold test data that dies with the run.
POSTGRES_SETTINGS = (
    "listen_addresses = '127.0.0.1'",
    "fsync = off",
    "synchronous_commit = off",
    "full_page_writes = off",
)


class DevServiceError(RuntimeError):
    """A throwaway server could not be found, started or stopped."""


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def postgres_answers(conninfo: str, timeout_s: float = 2) -> bool:
    """Whether a Postgres server at conninfo accepts a connection and a query."""
    try:
        with psycopg.connect(
            conninfo, connect_timeout=max(1, math.ceil(timeout_s)), autocommit=True
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def redis_answers(url: str, timeout_s: float = 2) -> bool:
    """Whether a Redis server at url answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _version_key(directory: Path) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in directory.name.split("."))


def find_postgres_bin_dir(
    search_path: str | None = None, debian_lib: Path = DEBIAN_POSTGRES_LIB
) -> Path:
    """The directory holding initdb and pg_ctl: from PATH, else Debian's highest version."""
    initdb = shutil.which("initdb", path=search_path)
    if initdb is not None:
        # Resolve symlinks so initdb and pg_ctl come from the same installation.
        bin_dir = Path(initdb).resolve().parent
        if (bin_dir / "pg_ctl").exists():
            return bin_dir
    versions = [p for p in debian_lib.glob("*") if (p / "bin" / "initdb").exists()]
    if versions:
        return max(versions, key=_version_key) / "bin"
    raise DevServiceError(
        f"no Postgres server binaries (initdb, pg_ctl) on PATH or in {debian_lib}/<version>/bin; "
        "install the postgresql server package or point GATEWAY_TEST_DATABASE_URL at a server"
    )


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PostgresServer:
    """A private Postgres cluster in its own directory; start() and stop() may repeat."""

    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_file = directory / "postgres.log"
        self.port = 0
        self._bin_dir = bin_dir
        # Postgres refuses to run as root, so root runs it as the postgres user.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise DevServiceError("running as root needs runuser to start Postgres")
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise DevServiceError(
                    "running as root needs a 'postgres' user to run Postgres as"
                ) from None
            os.chown(directory, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://{POSTGRES_SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as_user, str(self._bin_dir / program), *args]
        done = subprocess.run(  # noqa: S603 - fixed programs, arguments we built
            command, cwd=self.directory, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise DevServiceError(
                f"{program} failed ({done.returncode}): {done.stderr.strip()}\n"
                f"{_log_tail(self.log_file)}"
            )

    def initialize(self) -> None:
        self._run(
            "initdb",
            *("-D", str(self.data_dir), "-U", POSTGRES_SUPERUSER, "-A", "trust"),
            *("-E", "UTF8", "--locale=C", "--no-sync"),
        )
        settings = [*POSTGRES_SETTINGS, f"unix_socket_directories = '{self.directory}'"]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")

    def start(self) -> None:
        """Start the server and wait until it accepts queries; the first start picks the port."""
        attempts = 1 if self.port else START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self.port or attempt > 1:
                self.port = free_port()
            try:
                self._run(
                    "pg_ctl",
                    *("-D", str(self.data_dir), "-l", str(self.log_file)),
                    *("-o", f"-p {self.port}", "-w", "-t", str(int(START_TIMEOUT_S)), "start"),
                )
            except DevServiceError:
                # Most likely another process took the port between probe and bind.
                if attempt == attempts:
                    raise
                continue
            if postgres_answers(self.url):
                return
            raise DevServiceError(f"Postgres started but does not answer at {self.url}")

    def stop(self) -> None:
        """Fast shutdown; a no-op when it is not running."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self._run(
                "pg_ctl",
                *("-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S))),
                "stop",
            )
        except DevServiceError:
            # Never leave a server running on a directory about to be deleted.
            postmaster_pid = int(pid_file.read_text().split()[0])
            os.kill(postmaster_pid, signal.SIGQUIT)
            raise


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started PostgresServer, stopped and deleted on exit (even when start-up fails)."""
    bin_dir = find_postgres_bin_dir()
    directory = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    try:
        server = PostgresServer(directory, bin_dir)
        try:
            server.initialize()
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """The URL of a fresh Postgres (superuser and database `postgres`) living for the block."""
    with postgres_server() as server:
        yield server.url


class RedisServer:
    """A private, non-persistent redis-server child process; start() and stop() may repeat."""

    def __init__(self, directory: Path) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise DevServiceError(
                "no redis-server on PATH; install redis or set GATEWAY_TEST_REDIS_URL"
            )
        self.directory = directory
        self.log_file = directory / "redis.log"
        self.port = 0
        self._program = program
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [
            self._program,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
        ]
        with self.log_file.open("ab") as log:
            # A session of its own: a Ctrl-C at the terminal reaches us, and we stop it in order.
            return subprocess.Popen(  # noqa: S603 - fixed program, arguments we built
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def start(self) -> None:
        """Start the server and wait until it answers PING; the first start picks the port."""
        attempts = 1 if self.port else START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            if not self.port or attempt > 1:
                self.port = free_port()
            self._process = self._spawn()
            deadline = time.monotonic() + START_TIMEOUT_S
            while self._process.poll() is None and time.monotonic() < deadline:
                if redis_answers(self.url, timeout_s=0.5):
                    return
                time.sleep(0.02)
            self.stop()
        raise DevServiceError(f"redis-server did not start:\n{_log_tail(self.log_file)}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its connections and answers nothing."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); a no-op when it is not running."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started RedisServer, stopped and deleted on exit."""
    directory = Path(tempfile.mkdtemp(prefix="gw-redis-"))
    try:
        server = RedisServer(directory)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def throwaway_redis() -> Iterator[str]:
    """The URL of a fresh Redis (database 0, no persistence) that lives for the block."""
    with redis_server() as server:
        yield server.url


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    # A second signal must not interrupt the clean-up the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.devservices",
        description="Start a throwaway server, print its URL, keep it until SIGTERM or SIGINT.",
    )
    parser.add_argument("service", choices=["postgres", "redis"])
    service = parser.parse_args(argv).service
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    try:
        with throwaway_postgres() if service == "postgres" else throwaway_redis() as url:
            print(url, flush=True)
            while True:
                signal.pause()
    except DevServiceError as error:
        print(f"devservices: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
