"""The endpoint table: an exact match or a refusal. Pure; no I/O.

Only paths written here reach a backend, and the upstream path comes from the table, never
from the client, so no spelling of a path can smuggle a request to an endpoint we did not list.
"""

from __future__ import annotations

import enum
import posixpath
from urllib.parse import unquote

import msgspec

from gateway.chain.values import Routed
from gateway.errors import Forbidden, InvalidRequest, MethodNotAllowed, NotFound


class Operation(enum.Enum):
    CHAT = "chat"
    GENERATE = "generate"


class Endpoint(msgspec.Struct, frozen=True):
    method: str
    path: str
    upstream_path: str
    operation: Operation
    stream_by_default: bool


TABLE: dict[str, Endpoint] = {
    endpoint.path: endpoint
    for endpoint in (
        Endpoint("POST", "/api/chat", "/api/chat", Operation.CHAT, stream_by_default=True),
        Endpoint(
            "POST", "/api/generate", "/api/generate", Operation.GENERATE, stream_by_default=True
        ),
    )
}

# Never forwarded whatever the configuration: these change what a model server holds.
MUTATING = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs")

_MAX_DECODE_ROUNDS = 4
_MAX_MODEL_NAME_CHARS = 256
_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


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


def shape_request(endpoint: Endpoint, body: bytes, max_num_predict: int) -> Routed:
    """Check an Ollama request body and cap how many tokens it may ask the model for."""
    try:
        payload = _decode_json(body)
    except msgspec.DecodeError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= _MAX_MODEL_NAME_CHARS:
        raise InvalidRequest('"model" must be a non-empty string')
    stream = payload.get("stream", endpoint.stream_by_default)
    if not isinstance(stream, bool):
        raise InvalidRequest('"stream" must be true or false')
    options = payload.get("options")
    if options is None:
        options = payload["options"] = {}
    elif not isinstance(options, dict):
        raise InvalidRequest('"options" must be an object')
    num_predict = options.get("num_predict")
    if num_predict is not None and type(num_predict) is not int:
        raise InvalidRequest('"options.num_predict" must be an integer')
    # Ollama reads a negative num_predict as "no limit", which is exactly what the cap forbids.
    if num_predict is None or num_predict < 0 or num_predict > max_num_predict:
        num_predict = options["num_predict"] = max_num_predict
    return Routed(model, stream, _encode_json(payload), max_completion_tokens=num_predict)
