"""The gateway's connections: idle ones closed when a worker stops, an answer's writes joined."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import anyio
import pytest
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from gateway.devservices import free_port
from gateway.serving import Connection
from tests.integration.served import read_response, read_until_closed, status_of
from tests.integration.test_audit_outage import wait_healthy
from tests.secret_watch import WATCH

# Far longer than the test may take: the connection must not be closed by its idle deadline.
IDLE_TIMEOUT_S = 120
STOP_WITHIN_S = 15


@pytest.mark.anyio
async def test_sigterm_closes_an_idle_kept_alive_connection_without_waiting_out_its_deadline(
    env: dict[str, str],
) -> None:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before any request is made
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={
            **os.environ,
            **env,
            "CLIENT_HEADER_TIMEOUT_S": str(IDLE_TIMEOUT_S),
            "SHUTDOWN_GRACE_S": str(IDLE_TIMEOUT_S),
        },
        stdout=WATCH.output_file("gateway serve"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            answer = await read_response(stream)
            # Kept alive and idle: a second request on it is answered too.
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            again = await read_response(stream)
            stopped_at_s = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(STOP_WITHIN_S):
                rest = await read_until_closed(stream)
        assert process.wait(timeout=STOP_WITHIN_S) == 0
        took_s = time.monotonic() - stopped_at_s
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (status_of(answer), status_of(again), rest) == (200, 200, b"")
    assert took_s < STOP_WITHIN_S


async def _answer(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Five bytes; on /later the body comes a while after the head, as a stream's might."""
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    if scope["path"] == "/later":
        await asyncio.sleep(0.2)
    await send({"type": "http.response.body", "body": b"hello", "more_body": False})


async def _writes_of_one_answer(path: str) -> list[bytes]:
    """What the server's transport was asked to write, one item a call, for one GET of path."""
    loop = asyncio.get_running_loop()
    writes: list[bytes] = []
    served: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        write = writer.transport.write

        def recorded(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        writer.transport.write = recorded  # type: ignore[method-assign] # a spy: it still writes
        connection = Connection(
            ASGIWrapper(_answer), loop, Config(), WorkerContext(None), {}, reader, writer
        )
        served.append(asyncio.current_task())  # type: ignore[arg-type] # run by the server, in a task
        await connection

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.wait_for(asyncio.gather(*served), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"\r\n\r\nhello")
    return [write for write in writes if write]


def test_an_answers_head_and_body_leave_in_one_write() -> None:
    (write,) = asyncio.run(_writes_of_one_answer("/now"))
    assert write.startswith(b"HTTP/1.1 200")
    assert write.endswith(b"\r\n\r\nhello")


def test_a_head_whose_body_comes_later_leaves_by_itself_first() -> None:
    head, body = asyncio.run(_writes_of_one_answer("/later"))
    assert head.startswith(b"HTTP/1.1 200")
    assert head.endswith(b"\r\n\r\n")
    assert body == b"hello"
