"""Hostile bodies: shape_request answers InvalidRequest or a Routed, never anything else."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.chain.route import TABLE, Endpoint
from gateway.chain.shape import shape_request
from gateway.errors import InvalidRequest

ENDPOINTS = [e for e in TABLE.values() if e.method == "POST"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
FIELDS = st.sampled_from(["model", "stream", "options", "max_tokens", "n", "stream_options"])


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"a":' * 50_000,
        b'{"model":"\xff"}',
        b'{"model":"\xed\xa0\x80"}',
        b"\xef\xbb\xbf{}",
        b'{"model":1e999999}',
        b"",
        b"null",
    ],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_malformed_json_is_invalid_request(endpoint: Endpoint, body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        shape_request(endpoint, body, 100)


@pytest.mark.parametrize("key", ["MODEL", "Model", "mOdel", "STREAM", "ſtream", "Options", "N"])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.path)
def test_a_checked_field_in_another_case_is_refused(endpoint: Endpoint, key: str) -> None:
    # Go's encoding/json (Ollama) would read these as the field the gateway checked.
    body = msgspec.json.encode({"model": "allowed", key: "other"})
    with pytest.raises(InvalidRequest):
        shape_request(endpoint, body, 100)


@given(
    endpoint=st.sampled_from(ENDPOINTS),
    payload=st.dictionaries(FIELDS | st.text(max_size=8), JSON_VALUES, max_size=6),
)
def test_any_json_object_is_shaped_or_refused_as_invalid(
    endpoint: Endpoint, payload: dict[str, object]
) -> None:
    try:
        routed = shape_request(endpoint, msgspec.json.encode(payload), 100)
    except InvalidRequest:
        return
    assert routed.model == payload["model"]
    assert 0 <= routed.max_completion_tokens <= 100 * 8


@given(endpoint=st.sampled_from(ENDPOINTS), body=st.binary(max_size=200))
def test_any_bytes_are_shaped_or_refused_as_invalid(endpoint: Endpoint, body: bytes) -> None:
    with contextlib.suppress(InvalidRequest):
        shape_request(endpoint, body, 100)
