"""OpenAI streams: counts read, the usage event the client did not ask for removed, the rest kept
byte for byte, however the bytes are split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.sse import JsonUsage, SseUsage
from gateway.upstream.usage import Usage

TOKENS = [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"tok%d "},"finish_reason":null}]}\n\n' % i
    for i in range(3)
]
FINISH = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":""},"finish_reason":"stop"}]}\n\n'
)
USAGE = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14}}\n\n'
)
DONE = b"data: [DONE]\n\n"
STREAM = b"".join([*TOKENS, FINISH, USAGE, DONE])


def relay(chunks: list[bytes], *, strip: bool) -> tuple[bytes, SseUsage]:
    reader = SseUsage(strip_usage=strip)
    out = b"".join(reader.feed(chunk) for chunk in chunks) + reader.finish()
    return out, reader


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=10), st.booleans())
def test_any_split_gives_the_same_bytes_and_counts(cuts: list[int], strip: bool) -> None:
    out, reader = relay(split(STREAM, cuts), strip=strip)
    assert reader.usage == Usage(11, 3)
    assert out == (STREAM.replace(USAGE, b"") if strip else STREAM)
    assert out.endswith(DONE)


def test_a_usage_field_on_content_events_is_never_stripped() -> None:
    null_usage = TOKENS[0].replace(b'"choices"', b'"usage":null,"choices"')
    out, reader = relay([null_usage, FINISH, USAGE, DONE], strip=True)
    assert out == null_usage + FINISH + DONE
    assert reader.usage == Usage(11, 3)
    assert reader.frames == 3  # two content events and [DONE]


def test_a_broken_stream_counts_its_content_events() -> None:
    out, reader = relay([*TOKENS, b'data: {"id":"c","cho'], strip=True)
    assert reader.usage is None
    assert reader.frames == 3
    assert out.endswith(b'data: {"id":"c","cho')


@pytest.mark.parametrize("garbled", [b'data: {"usage": oops}\n\n', b': comment "usage"\n\n'])
def test_events_that_do_not_parse_pass_through(garbled: bytes) -> None:
    out, reader = relay([garbled, DONE], strip=True)
    assert out == garbled + DONE
    assert reader.usage is None


def test_a_whole_answer_passes_untouched_and_yields_its_usage() -> None:
    body = b'{"id":"c","choices":[{"index":0}],"usage":{"prompt_tokens":5,"completion_tokens":7}}'
    reader = JsonUsage()
    assert reader.feed(body[:10]) + reader.feed(body[10:]) == body
    assert reader.finish() == b""
    assert reader.usage == Usage(5, 7)
    broken = JsonUsage()
    broken.feed(body[:10])
    broken.finish()
    assert broken.usage is None
    no_usage = JsonUsage()
    no_usage.feed(b'{"choices":[]}')
    no_usage.finish()
    assert no_usage.usage is None
