"""One model backend behind an httpx client; the only module that sees httpx's exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import anyio
import httpx

from gateway.errors import BadGateway, GatewayTimeout
from gateway.upstream.transport import Transport, fixed_head, whole_head

# Read and thrown away, never shown: enough to let the connection be reused.
_ERROR_BODY_LIMIT_BYTES = 64 * 1024
_LISTING_LIMIT_BYTES = 8 * 1024 * 1024


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException:
        raise GatewayTimeout from None
    except (httpx.TransportError, httpx.StreamError):
        raise BadGateway from None


class UpstreamResponse:
    """A backend's answer whose body is still on the wire."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code

    async def chunks(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for chunk in self._response.aiter_raw():
                yield chunk

    async def discard(self) -> None:
        """Drain a little of an error body so the connection can be reused; ignore its content."""
        read = 0
        with _mapped():
            async for chunk in self._response.aiter_raw():
                read += len(chunk)
                if read > _ERROR_BODY_LIMIT_BYTES:
                    return


class Backend:
    """A named base URL with its credentials, timeouts and connection pool.

    Requests go straight to the transport: httpx's client layer would add cookie storage
    (shared across tenants), redirect and auth machinery we never want, and its CPU cost.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        transport: Transport,
        headers: list[tuple[bytes, bytes]],
        timeout_s: dict[str, float],
    ) -> None:
        self.name = name
        # Joined by hand: URL.join would drop a base URL's own path (a backend behind a prefix).
        self._base_url = base_url.rstrip("/")
        self._transport = transport
        self._headers = headers
        self._timeout_s = timeout_s
        # Each (method, path)'s request line, Host and headers (`fixed_head`): an `httpx.Request`
        # cost about 3% of a request's CPU (PERFORMANCE.md), joining URLs more than the rest.
        self._heads: dict[tuple[str, str], bytes] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        name: str,
        base_url: str,
        *,
        auth_header: str | None = None,
        auth_value: str | None = None,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
    ) -> AsyncIterator[Backend]:
        headers = [(b"content-type", b"application/json")]
        if auth_header and auth_value:
            headers.append((auth_header.lower().encode("ascii"), auth_value.encode("latin-1")))
        # Cookies are never stored and proxy variables never read: the transport knows neither.
        transport = Transport(httpx.URL(base_url), max_connections=max_connections)
        timeout_s = {
            "connect": connect_timeout_s,
            "read": read_timeout_s,
            "write": read_timeout_s,
            "pool": connect_timeout_s,
        }
        try:
            yield cls(name, base_url, transport, headers, timeout_s)
        finally:
            with anyio.CancelScope(shield=True):
                await transport.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes,
        request_id: str,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> httpx.Response:
        with _mapped():
            fixed = self._heads.get((method, path))
            if fixed is None:
                url = httpx.URL(f"{self._base_url}/{path.lstrip('/')}")
                fixed = self._heads[method, path] = fixed_head(method, url, self._headers)
            own = [(b"x-request-id", request_id.encode("ascii")), *extra]
            # A POST always says its length; a GET means no body and says none, as httpx did.
            head = whole_head(fixed, len(body) if method == "POST" else None, own)
            return await self._transport.exchange(head, body, self._timeout_s)

    @asynccontextmanager
    async def post(
        self, path: str, body: bytes, request_id: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> AsyncIterator[UpstreamResponse]:
        """POST and hand over the response before its body is read; always closes it.
        `headers` go along (the trace context); the backend's own auth header always does."""
        response = await self._send("POST", path, body, request_id, headers)
        try:
            yield UpstreamResponse(response)
        finally:
            # Closing an unfinished body drops the connection, which stops the generation. A
            # body read to its end closed itself: no cancel scope to pay for on every request.
            if not response.is_closed:
                with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError):
                    await response.aclose()

    async def get(self, path: str) -> tuple[int, bytes]:
        """A small GET answered whole (a listing, not a generation); capped in size."""
        response = await self._send("GET", path, b"", "discovery")
        try:
            body = bytearray()
            with _mapped():
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > _LISTING_LIMIT_BYTES:
                        raise BadGateway
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError):
                await response.aclose()
        return response.status_code, bytes(body)

    async def ping(self, timeout_s: float) -> bool:
        try:
            with anyio.fail_after(timeout_s):
                response = await self._send("GET", "/api/version", b"", "readiness")
                await response.aclose()
        except (BadGateway, GatewayTimeout, TimeoutError):
            return False
        return response.status_code == 200
