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


class Kind(enum.Enum):
    GENERATE = "generate"  # tokens out: capped, reserved, counted
    EMBED = "embed"  # vectors out: prompt tokens only
    SHOW = "show"  # model details, rewritten before the client sees them
    TAGS = "tags"  # answered by the gateway from discovery
    MODELS = "models"
    VERSION = "version"
    ME = "me"  # the caller's own quota, answered by the gateway


LOCAL = frozenset({Kind.TAGS, Kind.MODELS, Kind.VERSION, Kind.ME})


class Endpoint(msgspec.Struct, frozen=True):
    method: str
    path: str
    kind: Kind
    protocol: Protocol
    stream_by_default: bool = False

    @property
    def upstream_path(self) -> str:
        # The same path upstream: backends speak the very API the gateway exposes.
        return self.path


_OLLAMA, _OPENAI = Protocol.OLLAMA, Protocol.OPENAI
TABLE: dict[str, Endpoint] = {
    endpoint.path: endpoint
    for endpoint in (
        Endpoint("POST", "/api/chat", Kind.GENERATE, _OLLAMA, stream_by_default=True),
        Endpoint("POST", "/api/generate", Kind.GENERATE, _OLLAMA, stream_by_default=True),
        Endpoint("POST", "/api/embed", Kind.EMBED, _OLLAMA),
        Endpoint("POST", "/api/embeddings", Kind.EMBED, _OLLAMA),
        Endpoint("POST", "/api/show", Kind.SHOW, _OLLAMA),
        Endpoint("GET", "/api/tags", Kind.TAGS, _OLLAMA),
        Endpoint("GET", "/api/version", Kind.VERSION, _OLLAMA),
        Endpoint("POST", "/v1/chat/completions", Kind.GENERATE, _OPENAI),
        Endpoint("POST", "/v1/completions", Kind.GENERATE, _OPENAI),
        Endpoint("POST", "/v1/embeddings", Kind.EMBED, _OPENAI),
        Endpoint("GET", "/v1/models", Kind.MODELS, _OPENAI),
        Endpoint("GET", "/v1/me", Kind.ME, _OPENAI),
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
