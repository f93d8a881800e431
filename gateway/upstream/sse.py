"""Token counts from an OpenAI-style SSE stream, and the usage event the client did not ask for
taken out again. Pure; no I/O. Everything else passes byte for byte."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.upstream.usage import Usage

EVENT_END = b"\n\n"


class _Counts(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    usage: _Counts | None = None
    choices: list[Any] = msgspec.field(default_factory=list)
    # Ollama's own whole answers (embeddings) count this way instead.
    prompt_eval_count: int | None = None
    eval_count: int | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class SseUsage:
    """Feeds on raw bytes, returns the bytes to forward: whole events only, so an event the
    gateway removes never leaves half of itself behind."""

    __slots__ = ("_pending", "_strip_usage", "frames", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self._pending = b""
        self._strip_usage = strip_usage
        self.usage: Usage | None = None
        self.frames = 0  # content events seen: one token each, for a stream that breaks

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(EVENT_END)
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[: end + 2], data[end + 2 :]
        if b'"usage"' not in complete:
            # The common case: token events only, forwarded as they came.
            self.frames += complete.count(EVENT_END)
            return complete
        kept = [event for event in complete.split(EVENT_END)[:-1] if self._keep(event)]
        return b"".join(event + EVENT_END for event in kept)

    def finish(self) -> bytes:
        """What is left when the stream ends (an unterminated last event, forwarded as is)."""
        rest, self._pending = self._pending, b""
        return rest

    def _keep(self, event: bytes) -> bool:
        if b'"usage"' not in event or not event.startswith(b"data: {"):
            self.frames += 1
            return True
        try:
            chunk = _decode_chunk(event[6:])
        except msgspec.DecodeError:
            self.frames += 1
            return True
        if chunk.usage is None:
            self.frames += 1
            return True
        self.usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        # The usage event has no choices; if a server puts usage on a content event, keep it.
        return bool(chunk.choices) or not self._strip_usage


class JsonUsage:
    """A whole (non-streamed) answer: forwarded untouched, its counts read at the end."""

    __slots__ = ("_parts", "frames", "usage")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.usage: Usage | None = None
        self.frames = 0

    def feed(self, chunk: bytes) -> bytes:
        self._parts.append(chunk)
        return chunk

    def finish(self) -> bytes:
        try:
            chunk = _decode_chunk(b"".join(self._parts))
        except msgspec.DecodeError:
            return b""
        if chunk.usage is not None:
            self.usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        elif chunk.prompt_eval_count is not None:
            self.usage = Usage(chunk.prompt_eval_count, chunk.eval_count or 0)
        return b""
