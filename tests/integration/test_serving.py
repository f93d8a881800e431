"""A real `gateway serve` process ends its idle kept-alive connections when it is told to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import anyio
import pytest

from gateway.devservices import free_port
from tests.integration.served import read_response, read_until_closed, status_of
from tests.integration.test_audit_outage import wait_healthy
from tests.secret_watch import WATCH

pytestmark = pytest.mark.anyio

# Far longer than the test may take: the connection must not be closed by its idle deadline.
IDLE_TIMEOUT_S = 120
STOP_WITHIN_S = 15


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
