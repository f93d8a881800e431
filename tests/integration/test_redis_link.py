"""The link the per-request scripts share: replies in order, whatever the callers do."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio
import trustme
import uvloop

from gateway.devservices import RedisServer, free_port
from gateway.store.redis import link_endpoint, pack_command
from gateway.store.redis_link import ErrorReply, Link

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """The link is an asyncio protocol, and the gateway serves on uvloop."""
    if request.param == "uvloop":
        return ("asyncio", {"loop_factory": uvloop.new_event_loop})
    return "asyncio"


TIMEOUT_S = 2.0


@asynccontextmanager
async def link_to(url: str) -> AsyncIterator[Link]:
    pool = redis.asyncio.ConnectionPool.from_url(url)
    link = Link(*link_endpoint(pool))
    try:
        yield link
    finally:
        link.close()
        await pool.aclose()


async def call(link: Link, *parts: str | int, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    return await link.call(pack_command(parts), deadline)


async def test_calls_made_at_once_share_one_connection_and_each_gets_its_own_reply(
    own_redis: RedisServer,
) -> None:
    replies: dict[int, Any] = {}

    async def echo(link: Link, n: int) -> None:
        replies[n] = await call(link, "ECHO", f"reply-{n}")

    async with (
        link_to(own_redis.url + "?client_name=gw-link") as link,
        redis.asyncio.Redis.from_url(own_redis.url) as admin,
    ):
        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(echo, link, n)
        assert replies == {n: f"reply-{n}".encode() for n in range(200)}
        named = [c for c in await admin.client_list() if c["name"] == "gw-link"]
        assert len(named) == 1


@asynccontextmanager
async def paused(url: str) -> AsyncIterator[tuple[Link, int]]:
    """A link with a connection made, and the id of that connection; Redis then answers
    nothing for 300 ms."""
    async with link_to(url) as link, redis.asyncio.Redis.from_url(url) as admin:
        first_id = await call(link, "CLIENT", "ID")
        await admin.client_pause(300)
        yield link, first_id


async def test_a_cancelled_call_leaves_its_reply_behind_not_to_the_next(
    own_redis: RedisServer,
) -> None:
    async with paused(own_redis.url) as (link, first_id):
        with anyio.move_on_after(0.1) as scope:
            await call(link, "ECHO", "left")
        assert scope.cancelled_caught
        # Paused, Redis holds both; the abandoned reply arrives first and must be dropped.
        assert await call(link, "ECHO", "mine") == b"mine"
        # A caller that gives up is not the connection's fault: it stays.
        assert await call(link, "CLIENT", "ID") == first_id


async def test_a_reply_later_than_its_deadline_closes_the_connection(
    own_redis: RedisServer,
) -> None:
    async with paused(own_redis.url) as (link, first_id):
        with pytest.raises(TimeoutError):
            await call(link, "ECHO", "late", timeout_s=0.1)
        assert await call(link, "CLIENT", "ID") != first_id


async def test_a_redis_restart_costs_the_calls_in_between_and_no_more(
    own_redis: RedisServer,
) -> None:
    async with link_to(own_redis.url) as link:
        assert await call(link, "SET", "k", "v") == b"OK"
        own_redis.stop()
        with pytest.raises(ConnectionError):
            await call(link, "GET", "k")
        own_redis.start()
        assert await call(link, "GET", "k") is None  # a new connection, to an empty server


async def test_every_new_connection_authenticates_and_selects_the_database(
    own_redis: RedisServer,
) -> None:
    async with redis.asyncio.Redis.from_url(own_redis.url) as admin:
        await admin.config_set("requirepass", "s3cret")
    url = own_redis.url.replace("redis://", "redis://:s3cret@").replace("/0", "/3")
    async with link_to(url) as link, redis.asyncio.Redis.from_url(url) as db3:
        assert await call(link, "SET", "where", "three") == b"OK"
        assert await db3.get("where") == b"three"
        first_id = await call(link, "CLIENT", "ID")
        await db3.client_kill_filter(_id=first_id)
        # Lost with the connection, when the news of its end has not arrived yet.
        with contextlib.suppress(ConnectionError):
            await call(link, "PING")
        # A new connection, authenticated and on database 3 again.
        assert await call(link, "GET", "where") == b"three"
        assert await call(link, "CLIENT", "ID") != first_id
    wrong = url.replace("s3cret", "wrong")
    async with link_to(wrong) as link:
        with pytest.raises(ErrorReply):
            await call(link, "GET", "where")


async def test_bytes_that_are_not_redis_replies_end_the_connection() -> None:
    async def garbage(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"this is not RESP\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, garbage)
        async with link_to(f"redis://127.0.0.1:{port}/0") as link:
            with pytest.raises(ConnectionError):
                await call(link, "PING")
        tg.cancel_scope.cancel()


@contextlib.contextmanager
def redis_serving(directory: Path, *options: str) -> Iterator[None]:
    """A redis-server of this test's own with the given listening options, until it answers."""
    program = shutil.which("redis-server")
    assert program is not None
    log = directory / "redis.log"
    command = [program, "--bind", "127.0.0.1", "--save", "", "--dir", str(directory), *options]
    with log.open("ab") as out:
        server = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 10
        while b"ready to accept connections" not in log.read_bytes().lower():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        yield
    finally:
        server.terminate()
        server.wait()


async def test_a_unix_socket_url_is_served_over_that_socket(tmp_path: Path) -> None:
    socket = tmp_path / "redis.sock"
    with redis_serving(tmp_path, "--port", "0", "--unixsocket", str(socket)):
        async with link_to(f"unix://{socket}?db=2") as link:
            assert await call(link, "SET", "over", "socket") == b"OK"
            assert b" db=2 " in await call(link, "CLIENT", "INFO")


async def test_a_rediss_url_is_served_over_tls_and_checks_the_certificate(
    tmp_path: Path,
) -> None:
    authority = trustme.CA()
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        tmp_path / "server.pem"
    )
    authority.cert_pem.write_to_path(tmp_path / "ca.pem")
    port = free_port()
    tls = ("--tls-cert-file", "server.pem", "--tls-key-file", "server.pem")
    options = ("--port", "0", "--tls-port", str(port), *tls, "--tls-auth-clients", "no")
    with redis_serving(tmp_path, *options, "--tls-ca-cert-file", str(tmp_path / "ca.pem")):
        url = f"rediss://127.0.0.1:{port}/0"
        async with link_to(f"{url}?ssl_ca_certs={tmp_path / 'ca.pem'}") as link:
            assert await call(link, "PING") == b"PONG"
        # Against the system's authorities, which never signed it, the certificate is refused.
        async with link_to(url) as link:
            with pytest.raises(ssl.SSLCertVerificationError):
                await call(link, "PING")
