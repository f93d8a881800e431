"""Postgres and Redis for one bench run: a database and a key prefix of its own, removed after.

Uses DATABASE_URL / REDIS_URL when they answer, else the local defaults, else throwaway servers
from gateway.devservices; says clearly when none of these works.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import redis
from psycopg import sql

from gateway.bench.procs import BenchError, say
from gateway.devservices import (
    DevServiceError,
    postgres_answers,
    redis_answers,
    throwaway_postgres,
    throwaway_redis,
)

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
TENANT = "bench"
CLI_TIMEOUT_S = 60.0


class IssuedKey(msgspec.Struct, frozen=True):
    key: str


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _pick(
    stack: ExitStack,
    name: str,
    env_name: str,
    local: str,
    answers: Callable[[str], bool],
    throwaway: Callable[[], AbstractContextManager[str]],
) -> str:
    given = os.environ.get(env_name)
    for candidate in ([given] if given else []) + [local]:
        if answers(candidate):
            say(f"{name} at {redact(candidate)}")
            return candidate
        say(f"no {name} answers at {redact(candidate)}")
    say(f"starting a throwaway {name} from local binaries")
    try:
        url = stack.enter_context(throwaway())
    except DevServiceError as exc:
        raise BenchError(
            f"no {name} to run on: set {env_name} to a running server, or install the server "
            f"binaries for a throwaway one ({exc})"
        ) from None
    return url


@contextmanager
def bench_database(stack: ExitStack, run_id: str) -> Iterator[str]:
    """The URL of a new database `gateway_bench_<run_id>`, dropped on exit."""
    server = _pick(
        stack, "Postgres", "DATABASE_URL", LOCAL_POSTGRES_URL, postgres_answers, throwaway_postgres
    )
    name = f"gateway_bench_{run_id}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(server, name)
    finally:
        try:
            with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        except psycopg.Error as exc:
            say(f"could not drop database {name}: {type(exc).__name__}", error=True)


@contextmanager
def bench_redis(stack: ExitStack, run_id: str) -> Iterator[tuple[str, str]]:
    """(Redis URL, a key prefix of this run's own); every key under the prefix deleted on exit."""
    url = _pick(stack, "Redis", "REDIS_URL", LOCAL_REDIS_URL, redis_answers, throwaway_redis)
    prefix = f"gwbench:{run_id}"
    try:
        yield url, prefix
    finally:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            batch = list(client.scan_iter(match=prefix + "*", count=1000))
            for start in range(0, len(batch), 1000):
                client.unlink(*batch[start : start + 1000])
        except (redis.RedisError, OSError) as exc:
            say(f"could not delete keys {prefix}*: {type(exc).__name__}", error=True)
        finally:
            client.close()


def redis_cpu_seconds(url: str) -> float | None:
    """The Redis server's own CPU time so far (INFO cpu), or None when it cannot say."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (redis.RedisError, OSError, KeyError):
        return None
    finally:
        client.close()


def _cli(env: Mapping[str, str], *args: str) -> str:
    done = subprocess.run(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "gateway", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        # The CLI's own errors never hold secrets; the command line holds none either.
        raise BenchError(f"`gateway {' '.join(args)}` failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def provision(env: Mapping[str, str]) -> str:
    """Migrate, create a tenant allowed every model, and return a new key for it."""
    _cli(env, "migrate")
    _cli(env, "tenants", "create", TENANT, "--allow-all-models")
    issued = _cli(env, "keys", "create", "--tenant", TENANT, "--name", "bench", "--json")
    return msgspec.json.decode(issued, type=IssuedKey).key
