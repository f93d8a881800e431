"""OpenAI request bodies: the completion cap in both field names, usage asked for on streams."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.chain.route import TABLE
from gateway.chain.shape import shape_request
from gateway.errors import InvalidRequest

CHAT = TABLE["/v1/chat/completions"]


def shaped(body: dict[str, Any], cap: int = 100) -> tuple[dict[str, Any], Any]:
    routed = shape_request(CHAT, msgspec.json.encode(body), cap)
    return msgspec.json.decode(routed.body), routed


@pytest.mark.parametrize(
    ("given", "sent"),
    [({}, 100), ({"max_tokens": 5}, 5), ({"max_tokens": 500}, 100), ({"max_tokens": None}, 100)],
)
def test_max_tokens_is_capped(given: dict[str, Any], sent: int) -> None:
    body, routed = shaped({"model": "m", **given})
    assert body["max_tokens"] == sent
    assert routed.max_completion_tokens == sent
    assert routed.stream is False
    assert "stream_options" not in body


def test_the_newer_field_is_capped_too_and_n_multiplies_the_reservation() -> None:
    body, routed = shaped({"model": "m", "max_completion_tokens": 1000, "n": 3})
    assert body["max_completion_tokens"] == body["max_tokens"] == 100
    assert routed.max_completion_tokens == 300


def test_a_stream_asks_for_usage_and_remembers_whether_the_client_did() -> None:
    body, routed = shaped({"model": "m", "stream": True})
    assert body["stream_options"] == {"include_usage": True}
    assert routed.strip_usage is True
    body, routed = shaped({"model": "m", "stream": True, "stream_options": {"include_usage": True}})
    assert routed.strip_usage is False
    body, routed = shaped({"model": "m", "stream": None})
    assert routed.stream is False


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "max_tokens": "5"},
        {"model": "m", "n": 0},
        {"model": "m", "n": 9},
        {"model": "m", "n": "2"},
        {"model": "m", "stream": True, "stream_options": []},
        {"model": "m", "stream": "yes"},
    ],
)
def test_bad_openai_bodies_are_invalid(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        shape_request(CHAT, msgspec.json.encode(body), 100)


def test_n_null_means_one() -> None:
    assert shaped({"model": "m", "n": None})[1].max_completion_tokens == 100
