"""One model backend behind an httpx client; the only module that sees httpx's exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import httpx
from httpx_aiohttp import AiohttpTransport

from gateway.errors import BadGateway, GatewayTimeout

# Read and thrown away, never shown: enough to let the connection be reused.
_ERROR_BODY_LIMIT_BYTES = 64 * 1024


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
    """A named base URL with its credentials, timeouts and connection pool."""

    def __init__(self, name: str, client: httpx.AsyncClient) -> None:
        self.name = name
        self._client = client

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
        headers = {auth_header: auth_value} if auth_header and auth_value else {}
        limits = httpx.Limits(max_connections=max_connections)
        client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=AiohttpTransport(limits=limits, trust_env=False),
            trust_env=False,
            follow_redirects=False,
        )
        try:
            yield cls(name, client)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    @asynccontextmanager
    async def post(
        self, path: str, body: bytes, request_id: str
    ) -> AsyncIterator[UpstreamResponse]:
        """POST and hand over the response before its body is read; always closes it."""
        request = self._client.build_request(
            "POST",
            path,
            content=body,
            headers={"content-type": "application/json", "x-request-id": request_id},
        )
        with _mapped():
            response = await self._client.send(request, stream=True)
        try:
            yield UpstreamResponse(response)
        finally:
            # Closing an unfinished body drops the connection, which stops the generation.
            with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError):
                await response.aclose()

    async def ping(self, timeout_s: float) -> bool:
        try:
            with anyio.fail_after(timeout_s), _mapped():
                response = await self._client.get("/api/version")
        except (BadGateway, GatewayTimeout, TimeoutError):
            return False
        return response.status_code == 200
