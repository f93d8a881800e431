"""The endpoint table: an exact match or a refusal. Pure; no I/O.

Only paths written here reach a backend, and the upstream path comes from the table, never
from the client, so no spelling of a path can smuggle a request to an endpoint we did not list.
"""

from __future__ import annotations

import enum
import posixpath
from urllib.parse import unquote

import msgspec

from gateway.errors import Forbidden, MethodNotAllowed, NotFound


class Protocol(enum.Enum):
    """The wire format of an endpoint: Ollama's NDJSON, or OpenAI's JSON and SSE."""

    OLLAMA = "ollama"
    OPENAI = "openai"


class Endpoint(msgspec.Struct, frozen=True):
    method: str
    path: str
    upstream_path: str
    protocol: Protocol
    stream_by_default: bool


TABLE: dict[str, Endpoint] = {
    endpoint.path: endpoint
    for endpoint in (
        Endpoint("POST", "/api/chat", "/api/chat", Protocol.OLLAMA, stream_by_default=True),
        Endpoint("POST", "/api/generate", "/api/generate", Protocol.OLLAMA, True),
        Endpoint("POST", "/v1/chat/completions", "/v1/chat/completions", Protocol.OPENAI, False),
        Endpoint("POST", "/v1/completions", "/v1/completions", Protocol.OPENAI, False),
    )
}

# Never forwarded whatever the configuration: these change what a model server holds.
MUTATING = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs")

_MAX_DECODE_ROUNDS = 4


def canonical_path(raw_path: bytes) -> str:
    """The path as a lenient server might read it: decoded, folded, dot segments resolved.

    Used only to decide *how* to refuse, so erring towards "looks like /api" is safe.
    """
    text = raw_path.decode("latin-1")
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(text, encoding="latin-1")
        if decoded == text:
            break
        text = decoded
    text = text.replace("\\", "/").replace("\x00", "").lower()
    text = posixpath.normpath("/" + text.lstrip("/"))
    return "/" + text.lstrip("/")


def resolve(method: str, raw_path: bytes) -> Endpoint:
    """The endpoint for an exact path, else the one refusal that fits (403, 404 or 405)."""
    endpoint = TABLE.get(raw_path.decode("latin-1"))
    if endpoint is not None:
        if method != endpoint.method:
            raise MethodNotAllowed(headers=((b"allow", endpoint.method.encode("ascii")),))
        return endpoint
    canonical = canonical_path(raw_path)
    if canonical == "/api" or canonical.startswith("/api/"):
        raise Forbidden
    raise NotFound
