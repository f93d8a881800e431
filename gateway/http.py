"""ASGI primitives: the request view, a capped body read, a response sender that knows its state."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.clientip import TrustedProxies, decide_client_ip
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    Surface,
    error_body,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
_WELL_FORMED_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class Request:
    """What the chain needs to know about one HTTP request; built once from the ASGI scope."""

    __slots__ = (
        "body_pending",
        "client_host",
        "client_ip",
        "headers",
        "method",
        "path",
        "raw_path",
        "request_id",
        "surface",
    )

    def __init__(self, scope: Scope, request_id_header: bytes, *, proxies: TrustedProxies) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
        self.headers: Headers = scope["headers"]
        client = scope.get("client")
        self.client_host: str | None = client[0] if client else None
        # The one address audit, telemetry and the auth-failure throttle all use.
        self.client_ip = decide_client_ip(
            self.client_host, self.header_values(b"x-forwarded-for"), proxies
        )
        self.surface = Surface.of(self.path)
        incoming = self.header(request_id_header)
        self.request_id: str = (
            incoming.decode("ascii")
            if incoming is not None and _WELL_FORMED_ID.match(incoming)
            # 32 hex digits like uuid4().hex, at a fifth of its CPU.
            else os.urandom(16).hex()
        )
        # An HTTP/1 body not read to its end yet (HTTP/2 frames each request apart).
        self.body_pending: bool = scope.get("http_version") != "2" and _declares_body(self.headers)

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (`name` in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


def _declares_body(headers: Headers) -> bool:
    for name, value in headers:
        if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            return True
    return False


async def read_body(
    request: Request, receive: Receive, max_bytes: int, *, timeout_s: float
) -> bytes:
    """The whole request body, refused with 413 as soon as it is known to exceed `max_bytes`.

    The whole body must arrive within `timeout_s` (408 otherwise): hypercorn's own deadlines end
    with the headers, and a client trickling its body would hold a connection and a task forever.
    """
    try:
        # asyncio's deadline, a third of anyio's CPU: the server runs this on asyncio, and on
        # every request.
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, receive, max_bytes)
    except TimeoutError:
        raise RequestTimeout from None


async def _read_body(request: Request, receive: Receive, max_bytes: int) -> bytes:
    declared = request.header_values(b"content-length")
    if len(declared) > 1:
        raise InvalidRequest("more than one Content-Length header")
    if declared:
        if not declared[0].isdigit():
            raise InvalidRequest("Content-Length is not a number")
        if int(declared[0]) > max_bytes:
            raise PayloadTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            request.body_pending = False
            return b"".join(chunks)


class ClientDisconnected(Exception):
    """The client went away; there is nobody left to answer."""


class Responder:
    """Sends one response; remembers whether the status line went out so errors pick their form."""

    __slots__ = ("_request", "_send", "ended", "request_id_header", "started", "status")

    def __init__(self, send: Send, request_id_header: bytes, request: Request) -> None:
        self._send = send
        self.request_id_header = request_id_header
        self._request = request
        self.started = False
        self.ended = False
        self.status = 0

    async def start(self, status: int, headers: Headers) -> None:
        headers.append((self.request_id_header, self._request.request_id.encode("ascii")))
        if self._request.body_pending:
            # Answered before its body was read (a refusal): the server drops the connection
            # after this answer, so the client must know not to send another on it.
            headers.append((b"connection", b"close"))
        # Every answer is JSON, NDJSON or SSE: no browser may sniff it into something runnable.
        headers.append((b"x-content-type-options", b"nosniff"))
        # Answers are per key (quotas, models, completions): no shared or private cache keeps one.
        if not any(name == b"cache-control" for name, _ in headers):
            headers.append((b"cache-control", b"no-store"))
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        self.ended = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    async def whole(self, status: int, body: bytes, content_type: bytes = JSON) -> None:
        """A complete response with a known length."""
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await self.start(status, headers)
        await self.end(body)

    async def error(self, error: GatewayError, surface: Surface) -> None:
        body = error_body(error, surface)
        headers = [
            (b"content-type", JSON),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
            *error.headers,
        ]
        await self.start(error.status, headers)
        await self.end(body)
