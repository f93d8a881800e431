"""The request head the backends' transport writes: it parses back to exactly what was asked,
and a header that could split the request is never written."""

from __future__ import annotations

import httptools
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.transport import fixed_head, request_head, whole_head

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
# Visible ASCII and spaces inside; httpx strips the ends of a value.
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)
PATH = st.lists(TOKEN, max_size=4).map(lambda parts: "/" + "/".join(parts))


class _Parsed:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


@given(
    method=st.sampled_from(["GET", "POST"]),
    path=PATH,
    headers=st.lists(st.tuples(TOKEN.map(lambda t: "x-" + t), VALUE), max_size=6),
    body=st.binary(max_size=64),
)
def test_arequest_head_parses_back_to_what_was_asked(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    request = httpx.Request(method, "http://backend:11434" + path, headers=headers, content=body)
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    parser.feed_data(request_head(request) + body)
    assert parsed.complete
    assert parser.get_method() == method.encode()
    assert parsed.url == request.url.raw_path
    assert parsed.body == body
    assert parsed.headers == request.headers.raw


@given(
    before=VALUE,
    breaker=st.sampled_from(["\r", "\n", "\r\n", "\0"]),
    after=VALUE,
)
def test_a_header_that_could_split_the_request_is_refused(
    before: str, breaker: str, after: str
) -> None:
    request = httpx.Request(
        "POST", "http://backend:11434/api/chat", headers={"x-request-id": before + breaker + after}
    )
    with pytest.raises(httpx.LocalProtocolError):
        request_head(request)


HEADER = st.tuples(TOKEN.map(lambda t: b"x-" + t.encode()), VALUE.map(str.encode))


@given(
    path=PATH,
    fixed=st.lists(HEADER, max_size=4),
    own=st.lists(HEADER, max_size=4),
    body=st.binary(max_size=64),
)
def test_a_head_built_from_a_fixed_part_parses_back_to_what_was_asked(
    path: str, fixed: list[tuple[bytes, bytes]], own: list[tuple[bytes, bytes]], body: bytes
) -> None:
    url = httpx.URL("http://backend:11434" + path)
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    parser.feed_data(whole_head(fixed_head("POST", url, fixed), len(body), own) + body)
    assert parsed.complete
    assert parser.get_method() == b"POST"
    assert parsed.url == url.raw_path
    assert parsed.body == body
    length = (b"content-length", str(len(body)).encode())
    assert parsed.headers == [(b"host", b"backend:11434"), *fixed, length, *own]


@given(
    before=VALUE,
    breaker=st.sampled_from(["\r", "\n", "\r\n", "\0"]),
    after=VALUE,
    fixed=st.booleans(),
)
def test_a_header_that_could_split_a_head_built_from_a_fixed_part_is_refused(
    before: str, breaker: str, after: str, fixed: bool
) -> None:
    header = (b"x-api-key", (before + breaker + after).encode())
    url = httpx.URL("http://backend:11434/api/chat")
    fixed_part, own = ([header], []) if fixed else ([], [header])
    with pytest.raises(httpx.LocalProtocolError):
        whole_head(fixed_head("POST", url, fixed_part), 0, own)
