"""`gateway audit tail` and `gateway audit export` against real Postgres, rows written in SQL."""

from __future__ import annotations

import csv
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import msgspec
import psycopg
import pytest

from gateway.devservices import PostgresServer
from gateway.store import pg_audit
from gateway.store.pg import Database
from gateway.store.pg_audit import AuditFilter
from tests.integration.cli_support import Tenant, gateway, key_id, make_tenant, ok
from tests.secret_watch import WATCH

NOW = datetime.now(UTC).replace(microsecond=0)
INSERT = """
INSERT INTO gateway.audit_log (ts, request_id, tenant_id, key_id, client_ip, method, route, model,
    backend, status, error_code, prompt_tokens, completion_tokens, ttfb_ms, duration_ms, streamed)
VALUES (%(ts)s, %(request_id)s, %(tenant_id)s, %(key_id)s, %(client_ip)s, %(method)s, %(route)s,
    %(model)s, %(backend)s, %(status)s, %(error_code)s, %(prompt_tokens)s, %(completion_tokens)s,
    %(ttfb_ms)s, %(duration_ms)s, %(streamed)s)
"""


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url}


@pytest.fixture
def acme(database_url: str) -> Tenant:
    return make_tenant(database_url, "acme", "ci", "web")


def row(
    request_id: str, ts: datetime, tenant: Tenant | None, key: int = 0, **overrides: Any
) -> dict[str, Any]:
    return {
        "ts": ts,
        "request_id": request_id,
        "tenant_id": tenant.id if tenant else None,
        "key_id": key_id(tenant.keys[key]) if tenant else None,
        "client_ip": "203.0.113.7",
        "method": "POST",
        "route": "/api/chat",
        "model": "llama3.2:1b",
        "backend": "default",
        "status": 200,
        "error_code": None,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "ttfb_ms": 15.5,
        "duration_ms": 120.25,
        "streamed": True,
        **overrides,
    }


def write(database_url: str, *rows: dict[str, Any]) -> None:
    with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.executemany(INSERT, rows)


def ids(lines: list[dict[str, Any]]) -> list[str]:
    return [line["request_id"] for line in lines]


def tail(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = ok(env, "audit", "tail", "--json", *args)
    return [msgspec.json.decode(line) for line in out.splitlines()]


def test_tail_prints_the_last_rows_oldest_first_as_a_table(
    env: dict[str, str], database_url: str, acme: Tenant
) -> None:
    write(
        database_url, *(row(f"r{i:02}", NOW - timedelta(minutes=30 - i), acme) for i in range(30))
    )
    gone = str(uuid.uuid4())  # a deleted tenant's rows stay, under its id
    write(database_url, row("gone", NOW, None, tenant_id=gone, key_id="deadbeef0000", status=503))
    lines = ok(env, "audit", "tail", "--lines", "3").splitlines()
    assert lines[0].split()[:4] == ["time", "status", "tenant", "key"]
    assert [line.split()[-1] for line in lines[1:]] == ["r28", "r29", "gone"]
    newest = NOW - timedelta(minutes=1)
    assert lines[2].split() == [
        *newest.strftime("%Y-%m-%d %H:%M:%S.000Z").split(),
        "200",
        "acme",
        acme.keys[0],
        "POST",
        "/api/chat",
        "llama3.2:1b",
        "default",
        "12/34",
        "16",
        "120",
        "-",
        "r29",
    ]
    assert lines[3].split()[2:4] == ["503", gone]
    assert "gw_deadbeef0000" in lines[3]
    assert ids(tail(env)) == [f"r{i:02}" for i in range(11, 30)] + ["gone"]


def test_tail_json_shape(env: dict[str, str], database_url: str, acme: Tenant) -> None:
    write(database_url, row("one", NOW, acme, 1, status=429, error_code="rate_limited"))
    assert tail(env) == [
        {
            "ts": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "request_id": "one",
            "tenant": "acme",
            "tenant_id": acme.id,
            "key": acme.keys[1],
            "client_ip": "203.0.113.7",
            "method": "POST",
            "route": "/api/chat",
            "model": "llama3.2:1b",
            "backend": "default",
            "status": 429,
            "error_code": "rate_limited",
            "prompt_tokens": 12,
            "completion_tokens": 34,
            "ttfb_ms": 15.5,
            "duration_ms": 120.25,
            "streamed": True,
        }
    ]


def test_tail_filters_by_tenant_key_and_status(
    env: dict[str, str], database_url: str, acme: Tenant
) -> None:
    lab = make_tenant(database_url, "lab", "bot")
    at = iter(NOW - timedelta(seconds=60 - s) for s in range(60))
    write(
        database_url,
        row("a-ok", next(at), acme, 0),
        row("a-429", next(at), acme, 1, status=429),
        row("a-404", next(at), acme, 0, status=404),
        row("l-502", next(at), lab, 0, status=502),
        row("l-ok", next(at), lab, 0),
        row("anon-401", next(at), None, status=401),
    )
    assert ids(tail(env, "--tenant", "acme")) == ["a-ok", "a-429", "a-404"]
    assert ids(tail(env, "--tenant", lab.id)) == ["l-502", "l-ok"]
    assert ids(tail(env, "--key", acme.keys[0])) == ["a-ok", "a-404"]
    assert ids(tail(env, "--key", key_id(acme.keys[1]))) == ["a-429"]
    assert ids(tail(env, "--status", "429")) == ["a-429"]
    assert ids(tail(env, "--status", "4xx")) == ["a-429", "a-404", "anon-401"]
    assert ids(tail(env, "--status", "5XX")) == ["l-502"]
    assert ids(tail(env, "--tenant", "acme", "--status", "4xx", "-n", "1")) == ["a-404"]
    assert tail(env, "--lines", "0") == []
    assert tail(env, "--tenant", str(uuid.uuid4())) == []
    missing = gateway(env, "audit", "tail", "--tenant", "nobody")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: no tenant named 'nobody'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tail", "--status", "4x"], "invalid --status '4x': use a status code such as 429"),
        (["tail", "--status", "600"], "invalid --status '600'"),
        (["tail", "--lines", "-1"], "invalid --lines -1: use 0 to 10000"),
        (["export", "--since", "1h", "--format", "xml"], 'Invalid value "xml" for --format'),
        (["export", "--since", "yesterday", "--format", "csv"], "invalid --since 'yesterday'"),
        (["export", "--since", "0h", "--format", "csv"], "invalid --since '0h'"),
        (["export", "--since", "1h", "--until", "2h", "--format", "csv"], "--until must be later"),
        (["export", "--since", "1h", "--status", "abc", "--format", "csv"], "invalid --status"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = gateway(env, "audit", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def spread(database_url: str, acme: Tenant) -> None:
    """Rows 3 days, 2 hours and 10 minutes old, written out of time order, and one of lab's."""
    lab = make_tenant(database_url, "lab", "bot")
    write(
        database_url,
        row("recent", NOW - timedelta(minutes=10), acme, streamed=None, client_ip=None),
        row("old", NOW - timedelta(days=3), acme, error_code='upstream, "quoted"'),
        row("hours", NOW - timedelta(hours=2), acme, 1, ttfb_ms=None, prompt_tokens=None),
        row("lab", NOW - timedelta(hours=1), lab),
    )


def test_export_jsonl_by_relative_and_absolute_times(
    env: dict[str, str], database_url: str, acme: Tenant
) -> None:
    spread(database_url, acme)

    def export(*args: str) -> list[str]:
        result = gateway(env, "audit", "export", "--format", "jsonl", *args)
        assert result.returncode == 0, result.stderr
        lines = [msgspec.json.decode(line) for line in result.stdout.splitlines()]
        assert result.stderr == f"exported {len(lines)} rows\n"
        return ids(lines)

    assert export("--since", "7d") == ["old", "hours", "lab", "recent"]
    assert export("--since", "90m") == ["lab", "recent"]
    assert export("--since", "1d", "--tenant", "acme") == ["hours", "recent"]
    three_days = (NOW - timedelta(days=3)).date()
    assert export("--since", three_days.isoformat(), "--until", "1d") == ["old"]
    naive = (NOW - timedelta(hours=1, seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")  # UTC
    assert export("--since", naive) == ["lab", "recent"]
    zoned = (NOW - timedelta(hours=2)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert export("--since", zoned, "--until", "30m") == ["hours", "lab"]
    assert export("--since", "1d", "--key", acme.keys[1]) == ["hours"]
    assert export("--since", "5m") == []


def test_export_csv_to_a_file_parses_back(
    env: dict[str, str], database_url: str, acme: Tenant, tmp_path: Path
) -> None:
    spread(database_url, acme)
    out = tmp_path / "audit.csv"
    out.write_text("stale contents\n")
    result = gateway(
        env, "audit", "export", "--since", "7d", "--format", "csv", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"exported 4 rows to {out}\n"
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["request_id"] for r in rows] == ["old", "hours", "lab", "recent"]
    assert rows[0] == {
        "ts": (NOW - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request_id": "old",
        "tenant": "acme",
        "tenant_id": acme.id,
        "key": acme.keys[0],
        "client_ip": "203.0.113.7",
        "method": "POST",
        "route": "/api/chat",
        "model": "llama3.2:1b",
        "backend": "default",
        "status": "200",
        "error_code": 'upstream, "quoted"',
        "prompt_tokens": "12",
        "completion_tokens": "34",
        "ttfb_ms": "15.5",
        "duration_ms": "120.25",
        "streamed": "true",
    }
    assert (rows[1]["ttfb_ms"], rows[1]["prompt_tokens"], rows[1]["key"]) == ("", "", acme.keys[1])
    assert (rows[3]["streamed"], rows[3]["client_ip"]) == ("", "")
    # The same rows on stdout.
    stdout = ok(env, "audit", "export", "--since", "7d", "--format", "csv")
    assert list(csv.DictReader(io.StringIO(stdout, newline=""))) == rows


@pytest.mark.parametrize("target", ["missing-dir/audit.csv", "."])
def test_an_unwritable_output_is_a_clear_error(
    env: dict[str, str], database_url: str, acme: Tenant, tmp_path: Path, target: str
) -> None:
    write(database_url, row("one", NOW, acme))
    out = tmp_path / target
    result = gateway(
        env, "audit", "export", "--since", "1d", "--format", "csv", "--output", str(out)
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot write {out}: ")
    assert "or leave out --output to write to stdout" in result.stderr
    assert not (tmp_path / "missing-dir").exists()


@pytest.mark.anyio
async def test_export_streams_from_a_server_side_cursor(database_url: str, acme: Tenant) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO gateway.audit_log (ts, request_id, tenant_id, method, route, status) "
            "SELECT %s - n * interval '1 ms', 'bulk-' || n, %s, 'POST', '/api/chat', 200 "
            "FROM generate_series(1, 2500) AS n",
            (NOW, acme.id),
        )
    sizes: list[int] = []
    async with Database.open(database_url, pool_size=1, timeout_s=5) as database:
        batches = pg_audit.audit_export(
            database,
            AuditFilter(key_prefix="gw"),
            NOW - timedelta(hours=1),
            None,
            batch=1000,
            fetch_timeout_s=5,
        )
        async for rows in batches:
            if not sizes:
                # While the export is under way, Postgres holds the rest behind a cursor.
                with psycopg.connect(database_url) as conn:
                    running = conn.execute(
                        "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND state = 'idle in transaction'"
                    ).fetchall()
                assert [q for (q,) in running if q.startswith("FETCH") and "audit_export" in q]
            sizes.append(len(rows))
            assert rows == sorted(rows, key=lambda r: r.ts)
    assert sizes == [1000, 1000, 500]


class Follower:
    """`gateway audit tail --follow --json` in the background, its lines read as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        clean = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "audit", "tail", "--follow", "--json", *args],
            env={**clean, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.errors: queue.Queue[str] = queue.Queue()
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.lines)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.errors)),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, into: queue.Queue[str]) -> None:
        assert stream is not None
        for line in stream:
            WATCH.see("audit tail --follow", line)
            into.put(line)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self.readers:
            reader.join(timeout=15)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def until(self, request_id: str, within_s: float = 15.0) -> list[str]:
        """What it printed so far, once `request_id` is among it (failing after `within_s`)."""
        deadline = time.monotonic() + within_s
        while request_id not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{request_id} not printed; got {self.seen}"
            try:
                self.seen.append(msgspec.json.decode(self.lines.get(timeout=left))["request_id"])
            except queue.Empty:
                continue
        return self.seen

    def says(self, text: str, within_s: float = 15.0) -> None:
        """Wait until stderr has a line holding `text` (failing after `within_s`)."""
        deadline = time.monotonic() + within_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"stderr never said {text!r}"
            try:
                if text in self.errors.get(timeout=left):
                    return
            except queue.Empty:
                continue

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; its exit code and the rest of its stderr, once all it printed has been read."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=15)
        for reader in self.readers:
            reader.join(timeout=15)
        return code, "".join(self.errors.queue)


def test_follow_prints_new_and_late_rows_once(
    env: dict[str, str], database_url: str, acme: Tenant
) -> None:
    lab = make_tenant(database_url, "lab", "bot")
    start = datetime.now(UTC)
    write(
        database_url,
        *(row(f"before-{i}", start - timedelta(seconds=3 - i), acme) for i in range(3)),
    )
    with Follower(env, "--lines", "2", "--tenant", "acme") as follow:
        assert follow.until("before-2") == ["before-1", "before-2"]
        write(database_url, row("new", datetime.now(UTC), acme))
        follow.until("new")
        # Committed now, but stamped before "new": rows arrive in batches, not in time order.
        write(database_url, row("other", datetime.now(UTC), lab), row("late", start, acme))
        follow.until("late")
        write(database_url, row("last", datetime.now(UTC), acme))
        assert follow.until("last") == ["before-1", "before-2", "new", "late", "last"]
        code, stderr = follow.interrupt()
    assert code in (0, 130)
    assert "Traceback" not in stderr
    # Nothing printed twice (before-0 included, which was there before), and nothing of lab's.
    assert follow.lines.empty()


def test_follow_rides_out_a_postgres_outage(own_postgres: PostgresServer) -> None:
    env = {"DATABASE_URL": own_postgres.url, "DATABASE_TIMEOUT_S": "1"}
    acme = make_tenant(own_postgres.url, "acme", "ci")
    write(own_postgres.url, row("before", datetime.now(UTC), acme))
    with Follower(env) as follow:
        follow.until("before")
        own_postgres.stop()
        follow.says("warning: lost Postgres; retrying every second")
        own_postgres.start()
        write(own_postgres.url, row("after", datetime.now(UTC), acme))
        follow.says("Postgres is back")
        assert follow.until("after") == ["before", "after"]
        code, stderr = follow.interrupt()
    assert code in (0, 130)
    assert "Traceback" not in stderr
