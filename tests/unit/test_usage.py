"""Token counts read from NDJSON streams however the bytes are split."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.usage import NdjsonUsage, Usage

LINES = [
    b'{"model":"m","message":{"role":"assistant","content":"tok0 "},"done":false}',
    b'{"model":"m","message":{"role":"assistant","content":"eval_count "},"done":false}',
    b'{"model":"m","done":true,"done_reason":"stop","prompt_eval_count":12,"eval_count":8}',
]
STREAM = b"\n".join(LINES) + b"\n"


def read(chunks: list[bytes]) -> Usage | None:
    usage = NdjsonUsage()
    for chunk in chunks:
        assert usage.feed(chunk) == chunk
    assert usage.finish() == b""
    return usage.usage


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_stream_gives_the_same_counts(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert read(chunks) == Usage(prompt_tokens=12, completion_tokens=8)


def test_a_whole_body_without_newline_counts() -> None:
    assert read([LINES[2][:20], LINES[2][20:]]) == Usage(12, 8)


def test_no_final_frame_means_no_usage() -> None:
    assert read([LINES[0] + b"\n", LINES[0][:10]]) is None


def test_a_token_that_mentions_eval_count_is_not_mistaken_for_counts() -> None:
    assert read([LINES[1] + b"\n"]) is None


def test_a_model_load_frame_ends_the_answer_with_no_tokens() -> None:
    load = b'{"model":"m","message":{"content":""},"done_reason":"load","done":true}'
    assert read([load]) == Usage(0, 0)
