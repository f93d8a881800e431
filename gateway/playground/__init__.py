"""The playground: a static page, served by the gateway itself, for trying the API with a key.

Its files are read once at start-up into memory; only the names listed here are ever served.
"""

from __future__ import annotations

from importlib import resources

import msgspec

from gateway.errors import MethodNotAllowed, NotFound, Surface
from gateway.http import Headers, Request, Responder
from gateway.playground.about import Card, endpoint_cards

PREFIX = "/playground"
# No inline script or style, nothing from another origin: the page can only talk to us.
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP),
    # (nosniff comes with every answer, from Responder.start)
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
_STATIC = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "style.css": b"text/css; charset=utf-8",
}
_METHODS = frozenset({"GET", "HEAD"})
_encode = msgspec.json.Encoder().encode


class Asset(msgspec.Struct, frozen=True):
    body: bytes
    content_type: bytes


class PageConfig(msgspec.Struct, frozen=True):
    """What app.js reads from `endpoints.json`: the table's endpoints and the id header."""

    request_id_header: str
    endpoints: list[Card]


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def load_assets(request_id_header: str) -> dict[str, Asset]:
    """Every servable path and its bytes; built once, so a request never touches the disk."""
    assets = {
        f"{PREFIX}/{name}": Asset(_static(name), content_type)
        for name, content_type in _STATIC.items()
    }
    assets[f"{PREFIX}/endpoints.json"] = Asset(
        _encode(PageConfig(request_id_header, endpoint_cards())), b"application/json"
    )
    index = assets.pop(f"{PREFIX}/index.html")
    assets[PREFIX] = assets[f"{PREFIX}/"] = index
    return assets


def owns(path: str) -> bool:
    """Whether a (decoded) path belongs to the playground, served or refused by it."""
    return path == PREFIX or path.startswith(PREFIX + "/")


class Playground:
    """Answers every path under /playground: a known file, or a 404 or 405; no auth needed."""

    def __init__(self, request_id_header: str) -> None:
        self._assets = load_assets(request_id_header)

    async def serve(self, request: Request, responder: Responder) -> None:
        # Matched on the raw path byte for byte: no decoding, so no spelling reaches a file.
        asset = self._assets.get(request.raw_path.decode("latin-1"))
        if asset is None:
            await responder.error(NotFound(headers=SECURITY_HEADERS), Surface.OLLAMA)
            return
        if request.method not in _METHODS:
            allow = ((b"allow", b"GET, HEAD"), *SECURITY_HEADERS)
            await responder.error(MethodNotAllowed(headers=allow), Surface.OLLAMA)
            return
        headers: Headers = [
            (b"content-type", asset.content_type),
            (b"content-length", str(len(asset.body)).encode("ascii")),
            # Revalidated every time, so a new release's page is never mixed with an old script.
            (b"cache-control", b"no-cache"),
            *SECURITY_HEADERS,
        ]
        await responder.start(200, headers)
        await responder.end(b"" if request.method == "HEAD" else asset.body)
