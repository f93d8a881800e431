"""Request bodies checked and capped before they go upstream. Pure; no I/O.

The completion cap is enforced in the body itself, so a client cannot ask a model for more
tokens than admission reserved for it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.chain.route import Endpoint, Kind, Protocol
from gateway.chain.values import Routed
from gateway.errors import InvalidRequest

_MAX_MODEL_NAME_CHARS = 256
_MAX_CHOICES = 8
_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


def shape_request(endpoint: Endpoint, body: bytes, max_completion_tokens: int) -> Routed:
    payload = _json_object(body)
    model = payload.get("model")
    if not isinstance(model, str) or not 0 < len(model) <= _MAX_MODEL_NAME_CHARS:
        raise InvalidRequest('"model" must be a non-empty string')
    if endpoint.kind is not Kind.GENERATE:
        # Embeddings and model details produce no completion: nothing to cap, sent as given.
        return Routed(model, False, body, max_completion_tokens=0)
    stream = payload.get("stream", endpoint.stream_by_default)
    if stream is None and endpoint.protocol is Protocol.OPENAI:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest('"stream" must be true or false')
    if endpoint.protocol is Protocol.OLLAMA:
        return _shape_ollama(payload, model, stream, max_completion_tokens)
    return _shape_openai(payload, model, stream, max_completion_tokens)


# Ollama decodes with Go's encoding/json, which matches keys ignoring case (with Unicode
# folding: U+017F is "s"). A "MODEL" the gateway never read would pick the model upstream.
_CHECKED_FIELDS = frozenset(
    {"model", "stream", "options", "max_tokens", "max_completion_tokens", "n", "stream_options"}
)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = _decode_json(body)
    # Nesting past msgspec's depth and invalid UTF-8 escape DecodeError; both are the client's.
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for key in payload:
        if key not in _CHECKED_FIELDS and key.casefold() in _CHECKED_FIELDS:
            raise InvalidRequest("a field the gateway checks is not spelled in lower case")
    return payload


def _capped(value: object, cap: int, name: str) -> int:
    if value is not None and type(value) is not int:
        raise InvalidRequest(f'"{name}" must be an integer')
    # Ollama reads a negative num_predict as "no limit", which is exactly what the cap forbids.
    if value is None or value < 0 or value > cap:
        return cap
    return value


def _shape_ollama(payload: dict[str, Any], model: str, stream: bool, cap: int) -> Routed:
    options = payload.get("options")
    if options is None:
        options = payload["options"] = {}
    elif not isinstance(options, dict):
        raise InvalidRequest('"options" must be an object')
    limit = options["num_predict"] = _capped(options.get("num_predict"), cap, "options.num_predict")
    return Routed(model, stream, _encode_json(payload), max_completion_tokens=limit)


def _shape_openai(payload: dict[str, Any], model: str, stream: bool, cap: int) -> Routed:
    given = payload.get("max_completion_tokens", payload.get("max_tokens"))
    limit = _capped(given, cap, "max_tokens")
    # Both names, so every OpenAI-compatible server sees the cap whichever it reads.
    payload["max_tokens"] = limit
    if "max_completion_tokens" in payload:
        payload["max_completion_tokens"] = limit
    choices = payload.get("n", 1)
    if choices is None:
        choices = 1
    if type(choices) is not int or not 1 <= choices <= _MAX_CHOICES:
        raise InvalidRequest(f'"n" must be an integer from 1 to {_MAX_CHOICES}')
    strip_usage = False
    if stream:
        options = payload.get("stream_options")
        if options is None:
            options = payload["stream_options"] = {}
        elif not isinstance(options, dict):
            raise InvalidRequest('"stream_options" must be an object')
        # The gateway needs the counts to settle; a client that did not ask never sees them.
        strip_usage = options.get("include_usage") is not True
        options["include_usage"] = True
    return Routed(
        model,
        stream,
        _encode_json(payload),
        max_completion_tokens=limit * choices,
        strip_usage=strip_usage,
    )
