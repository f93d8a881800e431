"""The endpoint table: exact matches pass, every other spelling of an /api path gets one 403."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.chain.route import MUTATING, TABLE, canonical_path, resolve
from gateway.chain.shape import shape_request
from gateway.errors import Forbidden, InvalidRequest, MethodNotAllowed, NotFound

CHAT = TABLE["/api/chat"]


def test_listed_endpoints_resolve_exactly() -> None:
    assert resolve("POST", b"/api/chat") is CHAT
    assert resolve("POST", b"/api/generate").upstream_path == "/api/generate"


def test_no_mutating_endpoint_is_ever_listed() -> None:
    for path in TABLE:
        assert not any(path == m or path.startswith(m + "/") for m in MUTATING)


def test_wrong_method_is_405_with_allow() -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        resolve("GET", b"/api/chat")
    assert caught.value.headers == ((b"allow", b"POST"),)


@pytest.mark.parametrize(
    "raw",
    [
        b"/api/pull",
        b"/api/push",
        b"/api/create",
        b"/api/copy",
        b"/api/delete",
        b"/api/blobs/sha256:abc",
        b"/API/PULL",
        b"/api/pull/",
        b"//api//pull",
        b"/api/./pull",
        b"/api/x/../pull",
        b"/%61pi/pull",
        b"/api%2Fpull",
        b"/api%252Fpull",
        b"/api/pu%00ll",
        b"/api\\pull",
        b"/api/chat/",
        b"/API/chat",
        b"/api/unknown",
        b"/api",
    ],
)
def test_every_variant_of_an_unlisted_api_path_is_forbidden(raw: bytes) -> None:
    with pytest.raises(Forbidden):
        resolve("POST", raw)


@pytest.mark.parametrize("raw", [b"/", b"/favicon.ico", b"/v1/nothing", b"/apix"])
def test_other_paths_are_not_found(raw: bytes) -> None:
    with pytest.raises(NotFound):
        resolve("GET", raw)


segments = st.lists(st.sampled_from(["api", "API", ".", "..", "", "pull", "chat", "%2F", "x"]))


@given(segments)
def test_a_path_resolves_only_when_it_is_listed_verbatim(parts: list[str]) -> None:
    raw = ("/" + "/".join(parts)).encode()
    try:
        endpoint = resolve("POST", raw)
    except (Forbidden, NotFound):
        return
    assert raw.decode() in TABLE
    assert endpoint.path == raw.decode()


@given(st.binary(max_size=64))
def test_canonical_path_is_total_and_absolute(raw: bytes) -> None:
    assert canonical_path(raw).startswith("/")


def _options(body: bytes) -> dict[str, object]:
    decoded = msgspec.json.decode(body)
    assert isinstance(decoded, dict)
    options = decoded["options"]
    assert isinstance(options, dict)
    return options


@pytest.mark.parametrize(
    ("asked", "sent"), [(None, 100), (-1, 100), (-2, 100), (5, 5), (100, 100), (10_000, 100)]
)
def test_num_predict_is_capped(asked: int | None, sent: int) -> None:
    options = {} if asked is None else {"num_predict": asked}
    body = msgspec.json.encode({"model": "m", "options": options, "messages": []})
    routed = shape_request(CHAT, body, max_completion_tokens=100)
    assert _options(routed.body)["num_predict"] == sent
    assert routed.model == "m"
    assert routed.stream is True


def test_stream_flag_and_other_fields_pass_through() -> None:
    body = b'{"model":"m","stream":false,"options":null,"keep_alive":"5m","format":"json"}'
    routed = shape_request(CHAT, body, max_completion_tokens=7)
    decoded = msgspec.json.decode(routed.body)
    assert routed.stream is False
    assert decoded["keep_alive"] == "5m"
    assert decoded["format"] == "json"
    assert decoded["options"] == {"num_predict": 7}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"messages": []}',
        b'{"model": ""}',
        b'{"model": 3}',
        b'{"model": "m", "stream": "yes"}',
        b'{"model": "m", "options": []}',
        b'{"model": "m", "options": {"num_predict": "9"}}',
        b'{"model": "m", "options": {"num_predict": true}}',
        b'{"model": "' + b"m" * 300 + b'"}',
    ],
)
def test_bad_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        shape_request(CHAT, body, max_completion_tokens=7)
