"""The error frame that ends a broken stream is always a line (an event) of its own."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import BadGateway, Surface, stream_error_frame


@given(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), st.sampled_from(["", "\n"]))
def test_an_ndjson_error_frame_is_its_own_line_however_the_stream_was_cut(
    sent: bytes, ending: str
) -> None:
    stream = b'{"done":false}\n' + sent + ending.encode()
    frame = stream_error_frame(BadGateway(), Surface.OLLAMA, after=stream[-2:])
    last = (stream + frame).split(b"\n")[-2]
    assert msgspec.json.decode(last) == {"error": BadGateway.message}


@given(st.sampled_from([b"", b'data: {"x":1}', b'data: {"x":1}\n', b'data: {"x":1}\n\n']))
def test_an_sse_error_event_is_its_own_event_however_the_stream_was_cut(sent: bytes) -> None:
    stream = sent + stream_error_frame(BadGateway(), Surface.OPENAI, after=sent[-2:])
    event = stream.split(b"\n\n")[-2]
    assert event.startswith(b"data: ")
    assert msgspec.json.decode(event[6:])["error"]["code"] == BadGateway.code
