"""The simulator's ASGI plumbing: one request/response exchange and its error shapes.

Kept apart from `gateway.http` on purpose: the simulator stands in for a foreign server and
must not share the gateway's request handling.
"""

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import msgspec

from gateway.upstream.sim_wire import OllamaError, OpenAIError, OpenAIErrorDetail

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

JSON = b"application/json; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"

_encoder = msgspec.json.Encoder()
# Ollama's OpenAI layer names error types by status; the rest is "api_error".
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
}


class SimError(Exception):
    """An error answer, raised before the response starts."""

    def __init__(self, status: int, message: str, headers: Headers = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class Exchange:
    """One HTTP request and the means to answer it, in Ollama's or OpenAI's error shape."""

    __slots__ = ("_receive", "_send", "headers", "method", "openai", "path")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: Headers = scope["headers"]
        self.openai = self.path.startswith("/v1/")
        self._receive = receive
        self._send = send

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read_body(self, max_bytes: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            part: bytes = message.get("body", b"")
            size += len(part)
            if size > max_bytes:
                raise SimError(413, "request body too large")
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)

    async def wait_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def respond(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: Headers = ()
    ) -> None:
        await self._start_sized(status, len(body), content_type, headers)
        payload = b"" if self.method == "HEAD" else body
        await self._send({"type": "http.response.body", "body": payload, "more_body": False})

    async def respond_cut(self, body: bytes) -> None:
        """A 200 that promises all of `body` and sends the first half: the caller then crashes."""
        await self._start_sized(200, len(body), JSON, ())
        half = body[: len(body) // 2]
        await self._send({"type": "http.response.body", "body": half, "more_body": True})

    async def _start_sized(
        self, status: int, length: int, content_type: bytes, headers: Headers
    ) -> None:
        start_headers = [
            (b"content-type", content_type),
            (b"content-length", str(length).encode()),
            *headers,
        ]
        await self._send(
            {"type": "http.response.start", "status": status, "headers": start_headers}
        )

    async def error(self, status: int, message: str, headers: Headers = ()) -> None:
        if self.openai:
            kind = _OPENAI_ERROR_TYPES.get(status, "api_error")
            body = _encoder.encode(OpenAIError(OpenAIErrorDetail(message=message, type=kind)))
        else:
            body = _encoder.encode(OllamaError(error=message))
        await self.respond(status, body, headers=headers)

    async def start_stream(self, media_type: bytes) -> None:
        headers = [(b"content-type", media_type), (b"cache-control", b"no-cache")]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def frame(self, data: bytes) -> None:
        """Sends one frame as its own body message, so the client sees it as it is produced."""
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
