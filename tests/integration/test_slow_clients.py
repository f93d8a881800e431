"""Slow and greedy clients over real sockets: cut off at their deadline, never delaying others."""

from __future__ import annotations

import time

import anyio
import httpx
import msgspec
import pytest
from anyio.abc import SocketStream

from gateway.config import load_settings
from tests.integration.served import (
    body_of,
    headers_of,
    read_response,
    read_until_closed,
    serve_gateway,
    status_of,
)
from tests.integration.test_walking_skeleton import create_key

pytestmark = pytest.mark.anyio

HEADER_TIMEOUT_S = 2
TRICKLE_BYTES = 20  # at one a second: far past the header deadline if nobody cuts it off
SLOWLORIS_COUNT = 10


async def _slowloris(port: int, cut_off: list[int]) -> None:
    """Trickle a request head one byte a second; note how many bytes went out before the cut."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"a" * TRICKLE_BYTES
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        closed = anyio.Event()

        async def watch() -> None:
            await read_until_closed(stream)
            closed.set()

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            for sent, byte in enumerate(head[:TRICKLE_BYTES]):
                if closed.is_set():
                    cut_off.append(sent)
                    break
                try:
                    await stream.send(bytes([byte]))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    cut_off.append(sent)
                    break
                await anyio.sleep(1)
            group.cancel_scope.cancel()


async def test_slowloris_clients_are_cut_off_at_the_header_deadline_while_others_are_served(
    env: dict[str, str],
) -> None:
    key = create_key(env)
    settings = load_settings({**env, "CLIENT_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)})
    cut_off: list[int] = []
    statuses: list[int] = []
    with serve_gateway(settings) as port, anyio.fail_after(TRICKLE_BYTES + 10):
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
            anyio.create_task_group() as group,
        ):
            for _ in range(SLOWLORIS_COUNT):
                group.start_soon(_slowloris, port, cut_off)
            # Others are answered all along, on new connections and on kept-alive ones.
            for _ in range(10):
                answer = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                statuses.append(answer.status_code)
                await anyio.sleep(0.3)
    assert statuses == [200] * 10
    assert len(cut_off) == SLOWLORIS_COUNT
    # Cut off while still sending, at the configured deadline (hypercorn's own default is 5 s).
    assert all(sent <= HEADER_TIMEOUT_S + 2 for sent in cut_off)


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(
    env: dict[str, str],
) -> None:
    settings = load_settings({**env, "CLIENT_HEADER_TIMEOUT_S": "1"})
    with serve_gateway(settings) as port, anyio.fail_after(20):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            answer = await read_response(stream)
            started_s = time.monotonic()
            rest = await read_until_closed(stream)
    assert status_of(answer) == 200
    assert rest == b""
    # Kept open at first (HTTP/1.1 keep-alive), closed once idle for the timeout.
    assert time.monotonic() - started_s >= 0.5


async def _post_head(stream: SocketStream, key: str, length: int) -> None:
    await stream.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n"
    )


async def test_a_refusal_sent_before_the_body_arrived_says_the_connection_closes(
    env: dict[str, str],
) -> None:
    """The server drops such a connection after the answer; a client that was not told would
    send its next request into a closing socket (and see it fail unanswered)."""
    key = create_key(env)
    with serve_gateway(load_settings(env)) as port, anyio.fail_after(30):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await _post_head(stream, "gw_" + "Z" * 12 + key[15:], 1000)  # refused at auth
            refused = await read_until_closed(stream)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            listing = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer "
            answers = []
            for _ in range(2):  # no body to read: the connection carries on
                await stream.send(listing + key.encode() + b"\r\n\r\n")
                answers.append(await read_response(stream))
    assert status_of(refused) == 401
    assert headers_of(refused)[b"connection"] == b"close"
    assert [status_of(answer) for answer in answers] == [200, 200]
    assert all(b"connection" not in headers_of(answer) for answer in answers)


async def test_a_body_trickled_past_its_deadline_gets_408_and_the_connection_closes(
    env: dict[str, str],
) -> None:
    key = create_key(env)
    settings = load_settings({**env, "CLIENT_BODY_TIMEOUT_S": "1"})
    with serve_gateway(settings) as port, anyio.fail_after(30):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await _post_head(stream, key, 1000)
            answer = b""
            with anyio.move_on_after(15):
                async with anyio.create_task_group() as group:

                    async def trickle() -> None:
                        for _ in range(100):
                            try:
                                await stream.send(b" ")
                            except (anyio.BrokenResourceError, OSError):
                                return
                            await anyio.sleep(0.2)

                    group.start_soon(trickle)
                    answer = await read_until_closed(stream)
                    group.cancel_scope.cancel()
    assert status_of(answer) == 408
    assert msgspec.json.decode(body_of(answer))["error"]["code"] == "request_timeout"
    assert headers_of(answer)[b"x-content-type-options"] == b"nosniff"


async def test_headers_past_the_cap_are_refused_and_normal_ones_are_not(
    env: dict[str, str],
) -> None:
    settings = load_settings({**env, "MAX_HEADER_BYTES": "4096"})
    head = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n"
    with serve_gateway(settings) as port, anyio.fail_after(20):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            # Whole in one read: the gateway itself refuses it, from the catalogue.
            await stream.send(head + b"X-Big: " + b"a" * 8192 + b"\r\n\r\n")
            whole = await read_response(stream)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            # Still arriving past the cap: hypercorn stops buffering it and closes.
            await stream.send(head + b"X-Big: " + b"a" * 8192)
            arriving = await read_until_closed(stream)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head + b"X-Fine: " + b"a" * 2048 + b"\r\n\r\n")
            fine = await read_response(stream)
    assert status_of(whole) == 431
    assert msgspec.json.decode(body_of(whole))["error"]["code"] == "headers_too_large"
    assert status_of(arriving) == 431
    # Past the cap it never reached auth; within it, auth is what answers.
    assert status_of(fine) == 401


async def test_requests_past_the_worker_cap_get_503_at_once_and_the_slots_come_back(
    env: dict[str, str],
) -> None:
    key = create_key(env)
    settings = load_settings({**env, "GATEWAY_MAX_CONCURRENT_REQUESTS": "2"})
    auth = {"Authorization": f"Bearer {key}"}
    with serve_gateway(settings) as port, anyio.fail_after(30):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            holders = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
            for holder in holders:
                # Authenticated, then waiting for a body that never comes: each holds a slot.
                await _post_head(holder, key, 100)
            refused = await client.get("/v1/models", headers=auth)
            while refused.status_code != 503:
                await anyio.sleep(0.05)
                refused = await client.get("/v1/models", headers=auth)
            health = await client.get("/healthz")
            for holder in holders:
                await holder.aclose()
            served = await client.get("/v1/models", headers=auth)
            while served.status_code == 503:
                await anyio.sleep(0.05)
                served = await client.get("/v1/models", headers=auth)
    assert refused.json()["error"]["code"] == "unavailable"
    assert refused.headers["retry-after"] == "1"
    assert health.status_code == 200
    assert served.status_code == 200
