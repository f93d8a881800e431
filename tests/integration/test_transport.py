"""The backends' httpx transport over real sockets: keep-alive, framing, the pool's bound,
timeouts, broken and hostile answers, backpressure and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import trustme

from gateway.errors import BadGateway
from gateway.upstream import backend as upstream
from gateway.upstream.connection import MAX_HEAD_BYTES, READ_HIGH_WATER_BYTES
from gateway.upstream.transport import Pool, Transport

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUT_S = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
TRACE = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")


class Backend:
    """A scripted HTTP server: `handler` runs once per request read on any connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []  # each one's head and body, as read
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while request := await read_request(reader):
                self.requests.append(request)
                await self.handler(reader, writer)
                if writer.is_closing():
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return head + await reader.readexactly(length)


@asynccontextmanager
async def serving(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Backend, str]]:
    backend = Backend(handler)
    server = await asyncio.start_server(backend.serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield backend, f"{'https' if tls else 'http'}://localhost:{port}"
    finally:
        server.close()
        await stop(backend.tasks)


async def stop(tasks: set[asyncio.Task[None]]) -> None:
    """Handlers still waiting are cancelled, so none outlives its test's event loop."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def answer(payload: bytes) -> Handler:
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    return handle


async def post(transport: Transport, url: str, **timeouts: float) -> httpx.Response:
    request = httpx.Request(
        "POST",
        url + "/api/chat",
        content=b'{"model":"m"}',
        extensions={"timeout": {**TIMEOUT_S, **timeouts}},
    )
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


async def posts_apart(url: str) -> tuple[httpx.Response, httpx.Response]:
    """Two requests on a one-connection transport, 0.2 s apart: the backend acts in between."""
    transport = Transport(httpx.URL(url), max_connections=1)
    try:
        first = await post(transport, url)
        await asyncio.sleep(0.2)
        return first, await post(transport, url)
    finally:
        await transport.aclose()


async def test_answers_come_back_whole_over_one_kept_alive_connection() -> None:
    chunked = (
        b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
    )
    replies = iter([OK, chunked, OK])

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(next(replies))
        await writer.drain()

    async with serving(handle) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=4)
        bodies = [(await post(transport, url)).content for _ in range(2)]
        listing = httpx.Request("GET", url + "/api/tags", extensions={"timeout": TIMEOUT_S})
        response = await transport.handle_async_request(listing)
        bodies.append(await response.aread())
        await response.aclose()
        await transport.aclose()
    assert bodies == [b"{}", b'{"a":1}', b"{}"]
    assert backend.connections == 1


async def test_a_connection_the_backend_closed_while_idle_is_not_reused() -> None:
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.close()  # an idle timeout on the backend's side

    async with serving(handle) as (backend, url):
        first, second = await posts_apart(url)
    assert first.status_code == second.status_code == 200
    assert backend.connections == 2


async def test_bytes_nobody_asked_for_retire_the_connection() -> None:
    async def after(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(OK)  # a second answer to a question never asked, while idle

    async def along(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(OK + b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nextra!")
        await writer.drain()

    for handler in (after, along):
        async with serving(handler) as (backend, url):
            first, second = await posts_apart(url)
        assert first.content == second.content == b"{}"
        assert backend.connections == 2


async def test_an_answer_without_a_body_by_its_status_is_complete() -> None:
    async with serving(answer(b"HTTP/1.1 204 No Content\r\n\r\n")) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        statuses = [(await post(transport, url, read=1.0)).status_code for _ in range(2)]
        await transport.aclose()
    assert statuses == [204, 204]
    assert backend.connections == 1


async def test_a_backend_breaking_off_its_answer_is_a_read_error() -> None:
    async def breaks(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await writer.drain()
        writer.transport.abort()

    async with serving(breaks) as (_, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        with pytest.raises(httpx.ReadError):
            await post(transport, url)
        await transport.aclose()


async def test_a_backend_that_reads_nothing_is_a_write_timeout() -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def deaf(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type] # always inside a task
        try:
            await asyncio.sleep(5)
        finally:
            writer.close()

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    transport = Transport(httpx.URL(url), max_connections=1)
    request = httpx.Request(
        "POST",
        url + "/api/chat",
        content=b"x" * (64 * 1024 * 1024),
        extensions={"timeout": {**TIMEOUT_S, "write": 0.2}},
    )
    try:
        with pytest.raises(httpx.WriteTimeout):
            await transport.handle_async_request(request)
    finally:
        await transport.aclose()
        server.close()
        await stop(tasks)


async def test_a_body_without_length_ends_when_the_backend_closes() -> None:
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart one, part two")
        await writer.drain()
        writer.close()

    async with serving(handle) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        first = await post(transport, url)
        second = await post(transport, url)
        await transport.aclose()
    assert first.content == second.content == b"part one, part two"
    assert backend.connections == 2


async def test_a_kept_alive_connection_the_backend_dropped_is_replaced_once() -> None:
    served = 0

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        served += 1
        if served == 2:  # the backend gave up on this socket just as the request came
            writer.transport.abort()
            return
        writer.write(OK)
        await writer.drain()

    async with serving(handle) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        statuses = [(await post(transport, url)).status_code for _ in range(2)]
        await transport.aclose()
    assert statuses == [200, 200]
    assert backend.connections == 2


async def test_a_backend_that_hangs_up_unanswered_on_a_new_connection_is_an_error() -> None:
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async with serving(handle) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        with pytest.raises(httpx.RemoteProtocolError):
            await post(transport, url)
        await transport.aclose()
    assert backend.connections == 1  # not retried: the socket was new


async def test_silence_before_the_answer_or_in_its_middle_is_a_read_timeout() -> None:
    async def silent(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def stalls(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await writer.drain()
        await asyncio.sleep(5)

    for handler in (silent, stalls):
        async with serving(handler) as (_, url):
            transport = Transport(httpx.URL(url), max_connections=1)
            with pytest.raises(httpx.ReadTimeout):
                await post(transport, url, read=0.2)
            await transport.aclose()


async def test_a_refused_connection_is_a_connect_error_naming_its_cause() -> None:
    async with serving(answer(OK)) as (_, url):
        pass  # closed: nothing listens on the port any more
    transport = Transport(httpx.URL(url), max_connections=1)
    with pytest.raises(httpx.ConnectError) as caught:
        await post(transport, url)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_a_backend_that_never_accepts_is_a_connect_timeout_and_frees_the_slot() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    # Linux drops the SYNs of a listener whose backlog is full: connecting hangs.
    queued = [socket.socket() for _ in range(4)]
    for sock in queued:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
    url = f"http://127.0.0.1:{port}"
    transport = Transport(httpx.URL(url), max_connections=1)
    try:
        for _ in range(2):  # the second is no PoolTimeout: the failed attempt gave its room back
            with pytest.raises(httpx.ConnectTimeout):
                await post(transport, url, connect=0.2, pool=0.2)
    finally:
        await transport.aclose()
        for sock in (*queued, listener):
            sock.close()


async def test_the_pool_bound_makes_a_request_wait_for_a_connection() -> None:
    release = asyncio.Event()

    async def held(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
        await writer.drain()
        await release.wait()
        writer.write(b"cd")
        await writer.drain()

    async with serving(held) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        first = asyncio.ensure_future(post(transport, url))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await post(transport, url, pool=0.2)
        second = asyncio.ensure_future(post(transport, url))
        await asyncio.sleep(0.1)
        release.set()
        assert (await first).content == b"abcd"
        assert (await second).content == b"abcd"
        await transport.aclose()
    assert backend.connections == 1


async def test_a_request_cancelled_as_its_turn_came_passes_the_turn_on() -> None:
    async with serving(answer(OK)) as (_, url):
        port = httpx.URL(url).port
        assert port is not None
        pool = Pool("127.0.0.1", port, None, max_connections=1)
        held = await pool.acquire(fresh=False, pool_timeout_s=2, connect_timeout_s=2)
        turns = [
            asyncio.ensure_future(pool.acquire(fresh=False, pool_timeout_s=2, connect_timeout_s=2))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        pool.release(held)  # wakes the first in line...
        turns[0].cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await turns[0]
        connection = await asyncio.wait_for(turns[1], 0.5)
        pool.release(connection)
        pool.close()


async def test_closing_an_unfinished_body_drops_the_connection() -> None:
    gone = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # returns at EOF: the gateway hung up
        gone.set()

    async with serving(endless) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        request = httpx.Request("POST", url + "/api/chat", content=b"{}")
        response = await transport.handle_async_request(request)
        async for chunk in response.aiter_raw():
            assert chunk == b"hello"
            break
        await response.aclose()
        await asyncio.wait_for(gone.wait(), 2)
        await transport.aclose()
    assert backend.connections == 1


async def test_broken_and_oversized_answers_are_protocol_errors() -> None:
    huge = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * MAX_HEAD_BYTES + b"\r\ncontent-length: 0\r\n\r\n"
    for payload in (b"SPDY/9 what is this\r\n\r\n", huge):
        async with serving(answer(payload)) as (_, url):
            transport = Transport(httpx.URL(url), max_connections=1)
            with pytest.raises(httpx.RemoteProtocolError):
                await post(transport, url)
            await transport.aclose()


async def test_an_interim_answer_is_skipped_for_the_real_one() -> None:
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the gateway reads the interim answer on its own
        writer.write(OK)
        await writer.drain()

    async with serving(handle) as (_, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        response = await post(transport, url)
        await transport.aclose()
    assert (response.status_code, response.content) == (200, b"{}")


async def test_a_header_that_could_split_the_request_is_never_sent() -> None:
    async with serving(answer(OK)) as (backend, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        request = httpx.Request(
            "POST", url + "/api/chat", headers={"x-request-id": "a\r\nx-admin: yes"}, content=b"{}"
        )
        with pytest.raises(httpx.LocalProtocolError):
            await transport.handle_async_request(request)
        await transport.aclose()
    assert backend.connections == 0


async def test_a_backend_s_post_carries_its_prefix_its_auth_and_the_request_s_own_headers() -> None:
    async with (
        serving(answer(OK)) as (backend, url),
        upstream.Backend.open(
            "gpu1", url + "/prefix/", auth_header="X-Api-Key", auth_value="s3cret",
            connect_timeout_s=2.0, read_timeout_s=2.0, max_connections=1,
        ) as gpu1,
    ):  # fmt: skip
        for request_id in ("first", "second"):  # the second from the head kept for the path
            async with gpu1.post("/api/chat", b'{"model":"m"}', request_id, [TRACE]) as answered:
                assert answered.status == 200
                assert b"".join([chunk async for chunk in answered.chunks()]) == b"{}"
    first, second = backend.requests
    head, _, body = second.partition(b"\r\n\r\n")
    line, *headers = head.split(b"\r\n")
    assert line == b"POST /prefix/api/chat HTTP/1.1"
    assert sorted(headers) == sorted(
        [
            b"host: " + url.removeprefix("http://").encode(),
            b"content-type: application/json",
            b"x-api-key: s3cret",
            b"content-length: 13",
            b"x-request-id: second",
            b"traceparent: " + TRACE[1],
        ]
    )
    assert body == b'{"model":"m"}'
    assert first.replace(b"x-request-id: first", b"x-request-id: second") == second


async def test_a_backend_s_post_with_a_header_that_could_split_it_is_never_sent() -> None:
    async with (
        serving(answer(OK)) as (backend, url),
        upstream.Backend.open(
            "gpu1", url, auth_header="X-Api-Key", auth_value="a\r\nx-admin: yes",
            connect_timeout_s=2.0, read_timeout_s=2.0, max_connections=1,
        ) as gpu1,
    ):  # fmt: skip
        with pytest.raises(BadGateway):
            async with gpu1.post("/api/chat", b"{}", "first"):
                pass  # pragma: no cover - refused before it is sent
    assert backend.connections == 0


async def test_a_reader_that_falls_behind_stops_the_backend_at_the_socket() -> None:
    """A client slower than its backend must not make the gateway buffer the whole answer."""
    total_bytes = 64 * READ_HIGH_WATER_BYTES
    writers: list[asyncio.StreamWriter] = []

    async def firehose(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total_bytes)
        writer.write(b"x" * total_bytes)
        await writer.drain()

    async with serving(firehose) as (_, url):
        transport = Transport(httpx.URL(url), max_connections=1)
        request = httpx.Request("POST", url + "/api/chat", content=b"{}")
        response = await transport.handle_async_request(request)
        await asyncio.sleep(0.3)  # reading nothing
        # Most of the answer still waits on the backend's side of the socket.
        assert writers[0].transport.get_write_buffer_size() > total_bytes // 2
        received = sum([len(chunk) async for chunk in response.aiter_raw()])
        await response.aclose()
        await transport.aclose()
    assert received == total_bytes


async def test_tls_backends_are_verified_against_the_trusted_authorities() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async with serving(answer(OK), tls=server_context) as (_, url):
        trusted = Transport(httpx.URL(url), max_connections=1, ssl_context=client_context)
        assert (await post(trusted, url)).content == b"{}"
        await trusted.aclose()
        # The system's authorities have never heard of this one.
        untrusted = Transport(httpx.URL(url), max_connections=1)
        with pytest.raises(httpx.ConnectError) as caught:
            await post(untrusted, url)
        await untrusted.aclose()
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
