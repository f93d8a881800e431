"""Throwaway Postgres and Redis really start, serve, and leave nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis

from gateway.devservices import (
    DevServiceError,
    find_postgres_bin_dir,
    free_port,
    postgres_answers,
    postgres_server,
    redis_answers,
    redis_server,
    throwaway_postgres,
    throwaway_redis,
)


def port_is_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_throwaway_postgres_serves_queries_then_vanishes() -> None:
    with throwaway_postgres() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t VALUES (41)")
            row = conn.execute("SELECT n + 1, current_user FROM t").fetchone()
            shown = conn.execute("SHOW data_directory").fetchone()
        assert shown is not None
        data_dir = Path(shown[0])
        port = psycopg.conninfo.conninfo_to_dict(url)["port"]
        assert row == (42, "postgres")
        assert data_dir.is_dir()
    assert not port_is_open(int(str(port)))
    assert not postgres_answers(url)
    assert not data_dir.parent.exists()


def test_postgres_server_stops_and_restarts_on_the_same_url() -> None:
    with postgres_server() as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
        server.stop()
        assert not postgres_answers(server.url)
        server.stop()  # stopping twice is harmless
        server.start()
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)
        directory = server.directory
    assert not directory.exists()


def test_throwaway_redis_serves_commands_then_vanishes() -> None:
    with throwaway_redis() as url:
        client = redis.Redis.from_url(url)
        try:
            client.set("k", "v")
            value = client.get("k")
            directory = Path(str(client.config_get("dir")["dir"]))
        finally:
            client.close()
        assert value == b"v"
        assert directory.is_dir()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert not port_is_open(port)
    assert not redis_answers(url)
    assert not directory.exists()


def test_redis_server_stops_and_restarts_empty() -> None:
    with redis_server() as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.set("k", "v")
            server.stop()
            assert not redis_answers(server.url)
            server.start()
            assert client.get("k") is None
        finally:
            client.close()


def test_nothing_answers_on_a_closed_port() -> None:
    port = free_port()
    started = time.monotonic()
    assert not postgres_answers(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    assert not redis_answers(f"redis://127.0.0.1:{port}/0")
    assert time.monotonic() - started < 2


def make_postgres_install(root: Path, version: str) -> Path:
    bin_dir = root / version / "bin"
    bin_dir.mkdir(parents=True)
    for program in ("initdb", "pg_ctl"):
        (bin_dir / program).write_text("#!/bin/sh\n")
        (bin_dir / program).chmod(0o755)
    return bin_dir


def test_debian_layout_picks_the_highest_version(tmp_path: Path) -> None:
    for version in ("9.6", "16", "15"):
        make_postgres_install(tmp_path, version)
    assert find_postgres_bin_dir(search_path="", debian_lib=tmp_path) == tmp_path / "16" / "bin"


def test_path_wins_over_the_debian_layout(tmp_path: Path) -> None:
    on_path = make_postgres_install(tmp_path / "local", "14")
    make_postgres_install(tmp_path / "debian", "16")
    found = find_postgres_bin_dir(search_path=str(on_path), debian_lib=tmp_path / "debian")
    assert found == on_path


def test_missing_binaries_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DevServiceError, match="no Postgres server binaries"):
        find_postgres_bin_dir(search_path="", debian_lib=tmp_path)


@pytest.mark.parametrize(
    ("service", "answers"), [("postgres", postgres_answers), ("redis", redis_answers)]
)
def test_cli_prints_a_url_and_cleans_up_on_sigterm(
    service: str, answers: Callable[[str], bool]
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.devservices", service],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert answers(url)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert not answers(url)
