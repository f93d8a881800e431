"""The floor of our own stack: hypercorn + httpx forwarding every request, with no checks at all.

It keeps httpx's DEFAULT transport on purpose: the bench's fixed reference point, whatever
transport the gateway uses. `python -m gateway.bench.passthrough --port P --upstream URL`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx

from gateway.server import hypercorn_config

UPSTREAM_ENV = "BENCH_PASSTHROUGH_UPSTREAM"
_KEPT_HEADERS = frozenset({b"content-type", b"accept"})


class PassThrough:
    """Forwards method, path, query and body upstream; streams the answer back as it comes."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self._client is not None, "lifespan did not start"
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k in _KEPT_HEADERS]
        url = scope["path"] + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        request = self._client.build_request(scope["method"], url, content=bytes(body))
        request.headers.update({k.decode(): v.decode() for k, v in headers})
        response = await self._client.send(request, stream=True)
        try:
            kept = [(b"content-type", response.headers.get("content-type", "").encode())]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": kept}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = httpx.AsyncClient(base_url=self._upstream, timeout=60.0)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> PassThrough:
    """For hypercorn's workers, which import the app by path: the upstream comes from the env."""
    return PassThrough(os.environ[UPSTREAM_ENV])


def main() -> None:
    from hypercorn.run import run

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ[UPSTREAM_ENV] = args.upstream
    config = hypercorn_config("127.0.0.1", args.port)
    config.workers = args.workers
    # The gateway's own worker class, so the floor differs from it only in the app.
    config.worker_class = "uvloop"
    config.application_path = "gateway.bench.passthrough:create_app()"
    run(config)


if __name__ == "__main__":
    main()
