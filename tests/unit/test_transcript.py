"""Reading the generated text back out of relayed answers, for the prompt log."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream.transcript import answer_text

_encode = msgspec.json.encode
pieces = st.lists(st.text(max_size=20), max_size=12)


@given(pieces)
def test_ollama_chat_frames_join_into_the_answer(parts: list[str]) -> None:
    frames = [
        _encode({"message": {"role": "assistant", "content": p}, "done": False}) for p in parts
    ]
    frames.append(_encode({"message": {"content": ""}, "done": True, "eval_count": len(parts)}))
    assert answer_text(b"\n".join(frames) + b"\n") == "".join(parts)


@given(pieces)
def test_openai_sse_deltas_join_into_the_answer(parts: list[str]) -> None:
    events = [_encode({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in parts]
    relayed = b"".join(b"data: " + event + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    assert answer_text(relayed) == "".join(parts)


def test_whole_answers_of_each_shape() -> None:
    assert answer_text(_encode({"response": "hi there", "done": True})) == "hi there"
    chat = {"choices": [{"message": {"role": "assistant", "content": "fine"}}]}
    assert answer_text(_encode(chat)) == "fine"
    assert answer_text(_encode({"choices": [{"text": "once upon"}]})) == "once upon"


def test_a_cut_stream_keeps_what_arrived() -> None:
    relayed = _encode({"response": "one "}) + b"\n" + _encode({"response": "two"}) + b'\n{"resp'
    assert answer_text(relayed) == "one two"
    assert answer_text(b"") == ""
    assert answer_text(b"not json at all") == ""
