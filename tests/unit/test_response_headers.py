"""Every response the gateway writes carries nosniff and no-store; hypercorn gets the limits."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.clientip import TrustedProxies
from gateway.config import load_settings
from gateway.errors import RateLimited, Surface
from gateway.http import Message, Request, Responder
from gateway.server import gateway_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _request() -> Request:
    scope = {"method": "GET", "path": "/v1/models", "headers": []}
    return Request(scope, b"x-request-id", proxies=TrustedProxies(()))


class _Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def headers(self) -> list[tuple[bytes, bytes]]:
        start: Any = self.messages[0]
        return list(start["headers"])


async def test_whole_answers_errors_and_streams_carry_nosniff_and_no_store() -> None:
    for answer in ("whole", "error", "stream"):
        sent = _Sent()
        responder = Responder(sent, b"x-request-id", _request())
        if answer == "whole":
            await responder.whole(200, b"{}")
        elif answer == "error":
            await responder.error(RateLimited(headers=((b"retry-after", b"3"),)), Surface.OPENAI)
        else:
            await responder.start(200, [(b"content-type", b"application/x-ndjson")])
            await responder.end()
        headers = sent.headers()
        assert (b"x-content-type-options", b"nosniff") in headers, answer
        # Exactly one Cache-Control, even where the caller already set one.
        assert [v for k, v in headers if k == b"cache-control"] == [b"no-store"], answer


async def test_a_cache_control_already_set_is_kept() -> None:
    sent = _Sent()
    responder = Responder(sent, b"x-request-id", _request())
    await responder.start(200, [(b"cache-control", b"private, max-age=0")])
    assert [v for k, v in sent.headers() if k == b"cache-control"] == [b"private, max-age=0"]


def test_hypercorn_gets_the_client_limits_and_no_server_banner() -> None:
    settings = load_settings(
        {"CLIENT_HEADER_TIMEOUT_S": "7", "MAX_HEADER_BYTES": "8192", "SHUTDOWN_GRACE_S": "9"},
        require_stores=False,
    )
    config = gateway_config(settings, host="::1", port=8081)
    assert config.bind == ["[::1]:8081"]
    assert config.keep_alive_timeout == 7
    assert config.h11_max_incomplete_size == 8192
    assert config.h2_max_header_list_size == 8192
    assert config.read_timeout is None
    assert config.graceful_timeout == 9
    assert config.include_server_header is False
    assert not any(name == b"server" for name, _ in config.response_headers("h11"))


def test_the_client_limits_have_safe_defaults() -> None:
    settings = load_settings({}, require_stores=False)
    assert settings.client_header_timeout_s == 10
    assert settings.client_body_timeout_s == 30
    assert settings.max_header_bytes == 16_384
    assert settings.max_concurrent_requests == 512
