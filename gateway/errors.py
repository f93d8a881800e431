"""The closed catalogue of errors a client can see, and the one place they become responses.

Messages are ours alone: nothing from a backend, a store or a caller's secret ever reaches a body.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import msgspec


class Surface(enum.Enum):
    """Which API family a request belongs to; it decides the error body's shape."""

    OLLAMA = "ollama"
    OPENAI = "openai"

    @classmethod
    def of(cls, path: str) -> Surface:
        return cls.OPENAI if path == "/v1" or path.startswith("/v1/") else cls.OLLAMA


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses fix status, type and code."""

    status: ClassVar[int] = 500
    kind: ClassVar[str] = "server_error"  # the OpenAI `type` field
    code: ClassVar[str] = "internal_error"
    message: ClassVar[str] = "the gateway failed to handle the request"

    def __init__(
        self, detail: str | None = None, *, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        # `detail` is always gateway-written text (never upstream or user-controlled bytes).
        super().__init__(detail or self.message)
        self.detail = detail or self.message
        self.headers = headers


class InvalidRequest(GatewayError):
    status, kind, code = 400, "invalid_request_error", "invalid_request"
    message = "the request is not valid"


class Unauthorized(GatewayError):
    status, kind, code = 401, "invalid_request_error", "invalid_api_key"
    message = "invalid or missing API key"


class Forbidden(GatewayError):
    status, kind, code = 403, "permission_error", "forbidden"
    message = "this endpoint is not available through the gateway"


class NotFound(GatewayError):
    status, kind, code = 404, "invalid_request_error", "not_found"
    message = "no such endpoint"


class ModelNotFound(GatewayError):
    status, kind, code = 404, "invalid_request_error", "model_not_found"
    message = "the model does not exist or is not available to this key"


class MethodNotAllowed(GatewayError):
    status, kind, code = 405, "invalid_request_error", "method_not_allowed"
    message = "method not allowed on this endpoint"


class PayloadTooLarge(GatewayError):
    status, kind, code = 413, "invalid_request_error", "payload_too_large"
    message = "the request body is larger than the gateway accepts"


class HeadersTooLarge(GatewayError):
    status, kind, code = 431, "invalid_request_error", "headers_too_large"
    message = "the request headers are larger than the gateway accepts"


class RequestTimeout(GatewayError):
    """The client did not send its whole body in time; the connection closes after the answer."""

    status, kind, code = 408, "invalid_request_error", "request_timeout"
    message = "the request body did not arrive in time"


class RateLimited(GatewayError):
    """A rate or concurrency limit of the caller's own key or tenant; the detail names which."""

    status, kind, code = 429, "rate_limit_error", "rate_limit_exceeded"
    message = "rate limit reached"


class AuthRateLimited(GatewayError):
    """Too many failed authentications from the client's address: refused before any key check."""

    status, kind, code = 429, "rate_limit_error", "auth_rate_limited"
    message = "too many failed authentication attempts from this address; retry later"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(headers=((b"retry-after", str(retry_after_s).encode("ascii")),))


class BudgetExhausted(GatewayError):
    status, kind, code = 429, "insufficient_quota", "budget_exhausted"
    message = "the token budget is exhausted"


class BadGateway(GatewayError):
    status, kind, code = 502, "server_error", "backend_error"
    message = "the model backend failed to answer"


class ServiceUnavailable(GatewayError):
    status, kind, code = 503, "server_error", "unavailable"
    message = "the gateway cannot serve requests right now"


class GatewayTimeout(GatewayError):
    status, kind, code = 504, "server_error", "backend_timeout"
    message = "the model backend did not answer in time"


class _OpenAIError(msgspec.Struct):
    message: str
    type: str
    code: str
    param: None = None


class _OpenAIBody(msgspec.Struct):
    error: _OpenAIError


class _OllamaBody(msgspec.Struct):
    error: str


_encode = msgspec.json.Encoder().encode


def error_body(error: GatewayError, surface: Surface) -> bytes:
    """The JSON body in the caller's API shape, so SDKs raise their own exception classes."""
    if surface is Surface.OPENAI:
        return _encode(_OpenAIBody(_OpenAIError(error.detail, error.kind, error.code)))
    return _encode(_OllamaBody(error.detail))


def stream_error_frame(error: GatewayError, surface: Surface, *, after: bytes = b"") -> bytes:
    """The last frame of a stream that broke after its first byte: never a silent truncation.

    `after` is the end of what was sent before; a frame cut mid-line is ended first, so the
    error is a line (an event) of its own that the client can parse.
    """
    if surface is Surface.OPENAI:
        ending = (
            b""
            if not after or after.endswith(b"\n\n")
            else b"\n"
            if after.endswith(b"\n")
            else b"\n\n"
        )
        return ending + b"data: " + error_body(error, surface) + b"\n\n"
    ending = b"" if not after or after.endswith(b"\n") else b"\n"
    return ending + error_body(error, surface) + b"\n"
