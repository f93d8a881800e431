"""Suite-wide fixtures: real Postgres and Redis (throwaway when none answers), and test servers.

Servers: GATEWAY_TEST_DATABASE_URL / GATEWAY_TEST_REDIS_URL if set (the value `throwaway` asks
for a throwaway server), else the local default if it answers, else a throwaway server.
Each run gets a random id, so its databases (`gwtest_<runid>_<n>`) and Redis key prefixes
(`gwtest:<runid>:<n>`) never collide with another run's on a shared server.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from gateway.devservices import (
    PostgresServer,
    RedisServer,
    postgres_answers,
    postgres_server,
    redis_answers,
    redis_server,
    throwaway_postgres,
    throwaway_redis,
)
from gateway.serving import use_gateway_connections
from tests.servers import serve_in_thread

# Records every key and token made, scans every log and output for them at the end of the run.
pytest_plugins = ("tests.secret_watch",)

# Every gateway worker serves its connections this way; the suite's servers do the same.
use_gateway_connections()

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
# Asks for a throwaway server even when a local one answers (fsync off: much faster DDL).
THROWAWAY = "throwaway"


def with_database(conninfo: str, dbname: str) -> str:
    """The same server address with another database name (URL in, URL out)."""
    parts = urlsplit(conninfo)
    if parts.scheme in ("postgres", "postgresql"):
        return urlunsplit(parts._replace(path="/" + dbname))
    return make_conninfo(conninfo, dbname=dbname)


@dataclass
class RunNames:
    """Names unique to this run: databases and Redis prefixes carry the run id and a counter."""

    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    _counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def template_database(self) -> str:
        return f"gwtest_{self.run_id}_tpl"

    def database(self) -> str:
        return f"gwtest_{self.run_id}_{next(self._counter)}"

    def redis_prefix(self) -> str:
        return f"gwtest:{self.run_id}:{next(self._counter)}"


@pytest.fixture(scope="session")
def run_names() -> RunNames:
    return RunNames()


@pytest.fixture(scope="session")
def run_id(run_names: RunNames) -> str:
    """Random hex id of this test run."""
    return run_names.run_id


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A Postgres server URL (database `postgres`, superuser): env, local, or throwaway."""
    from_env = os.environ.get("GATEWAY_TEST_DATABASE_URL")
    if from_env and from_env != THROWAWAY:
        if not postgres_answers(from_env):
            pytest.fail("GATEWAY_TEST_DATABASE_URL is set but no Postgres answers there")
        yield from_env
    elif not from_env and postgres_answers(LOCAL_POSTGRES_URL):
        yield LOCAL_POSTGRES_URL
    else:
        with throwaway_postgres() as url:
            yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server URL: env, local, or throwaway."""
    from_env = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if from_env and from_env != THROWAWAY:
        if not redis_answers(from_env):
            pytest.fail("GATEWAY_TEST_REDIS_URL is set but no Redis answers there")
        yield from_env
    elif not from_env and redis_answers(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
    else:
        with throwaway_redis() as url:
            yield url


def _admin(conninfo: str, statement: sql.Composed) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(statement)


def _drop_database(conninfo: str, name: str) -> None:
    _admin(
        conninfo,
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
    )


@pytest.fixture
def empty_database_url(pg_url: str, run_names: RunNames) -> Iterator[str]:
    """URL of a brand-new empty database, dropped after the test."""
    name = run_names.database()
    _admin(pg_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(pg_url, name)
    finally:
        _drop_database(pg_url, name)


@pytest.fixture(scope="session")
def template_database(pg_url: str, run_names: RunNames) -> Iterator[str]:
    """Name of this run's database with all migrations applied, the template for the others."""
    from gateway.migrate import apply_migrations

    name = run_names.template_database
    _admin(pg_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        apply_migrations(with_database(pg_url, name))
        yield name
    finally:
        _drop_database(pg_url, name)


@pytest.fixture
def database_url(pg_url: str, run_names: RunNames, template_database: str) -> Iterator[str]:
    """URL of a fresh database with all migrations applied, dropped after the test."""
    name = run_names.database()
    _admin(
        pg_url,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_database)
        ),
    )
    try:
        yield with_database(pg_url, name)
    finally:
        _drop_database(pg_url, name)


@pytest.fixture
def redis_prefix(redis_url: str, run_names: RunNames) -> Iterator[str]:
    """A key prefix unique to the test; every key under it is deleted afterwards."""
    prefix = run_names.redis_prefix()
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server of the test's own: `.url`, `.stop()`, `.start()` (same port, empty again)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A Postgres server of the test's own, migrations applied to its `postgres` database.

    `.url`, `.stop()`, `.start()` (same port and data).
    """
    from gateway.migrate import apply_migrations

    with postgres_server() as server:
        apply_migrations(server.url)
        yield server


@pytest.fixture
def simulator_url() -> Iterator[str]:
    """Base URL of a simulated Ollama backend with the default configuration."""
    from gateway.upstream.sim import SimConfig, Simulator

    with serve_in_thread(Simulator(SimConfig())) as url:
        yield url


@pytest.fixture
def start_simulator() -> Callable[..., AbstractContextManager[str]]:
    """Factory: `with start_simulator(chunks=3) as url:` serves a simulator so configured."""
    from gateway.upstream.sim import SimConfig, Simulator
    from tests.secret_watch import WATCH

    def start(**config: Any) -> AbstractContextManager[str]:
        WATCH.record_token(config.get("required_token"))
        return serve_in_thread(Simulator(SimConfig(**config)))

    return start


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], str]]:
    """Factory: `url = serve_app(asgi_app)` serves the app on a real socket until the test ends."""
    with ExitStack() as servers:

        def serve(app: Any) -> str:
            return servers.enter_context(serve_in_thread(app))

        yield serve
