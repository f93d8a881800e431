"""The generated text of an answer, read back from the bytes that were relayed. Pure; no I/O.

Only the prompt log needs it, after the answer ended, so the relay itself never parses content.
"""

from __future__ import annotations

import msgspec

# What is kept of one answer for the prompt log; the rest of a longer answer is not captured.
TRANSCRIPT_MAX_BYTES = 1 << 20


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Message | None = None
    message: _Message | None = None
    text: str | None = None


class _Frame(msgspec.Struct):
    """Every answer shape at once: Ollama chat and generate, OpenAI chat and completions."""

    message: _Message | None = None
    response: str | None = None
    choices: list[_Choice] = []


_decode = msgspec.json.Decoder(_Frame).decode


def _text_of(frame: _Frame) -> str:
    parts = []
    if frame.message is not None and frame.message.content:
        parts.append(frame.message.content)
    if frame.response:
        parts.append(frame.response)
    for choice in frame.choices[:1]:
        parts.extend(
            message.content
            for message in (choice.delta, choice.message)
            if message is not None and message.content
        )
        if choice.text:
            parts.append(choice.text)
    return "".join(parts)


def answer_text(relayed: bytes | bytearray) -> str:
    """The text a model generated, from a whole JSON answer, NDJSON frames or SSE events.

    Frames that are not JSON (a truncated last frame, `[DONE]`) are skipped, not fatal.
    """
    try:
        return _text_of(_decode(relayed))
    except msgspec.DecodeError:
        pass
    parts = []
    for line in relayed.splitlines():
        payload = line.removeprefix(b"data:").strip()
        if not payload.startswith(b"{"):
            continue
        try:
            parts.append(_text_of(_decode(payload)))
        except msgspec.DecodeError:
            continue
    return "".join(parts)
