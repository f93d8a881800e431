"""Token counts read from a backend's answer as it streams past. Pure; no I/O."""

from __future__ import annotations

import msgspec


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int


class _FinalFrame(msgspec.Struct):
    done: bool = False
    prompt_eval_count: int = 0
    eval_count: int = 0


_decode_frame = msgspec.json.Decoder(_FinalFrame).decode


class NdjsonUsage:
    """Watches an Ollama NDJSON stream (or a whole JSON body) for the frame that carries counts.

    Only lines that mention `eval_count` are decoded, so a long stream costs one substring
    search per line; the bytes themselves are forwarded untouched by the caller.
    """

    __slots__ = ("_pending", "frames", "usage")

    def __init__(self) -> None:
        # Pieces of a line not yet ended; joined once, when its newline arrives.
        self._pending: list[bytes] = []
        self.usage: Usage | None = None
        # Streamed Ollama answers carry one token a line: the count a broken stream is charged.
        self.frames = 0

    def feed(self, chunk: bytes) -> bytes:
        """Returns what to forward: always the chunk itself, untouched."""
        if b"\n" not in chunk:
            self._pending.append(chunk)
            return chunk
        data = b"".join((*self._pending, chunk)) if self._pending else chunk
        *lines, tail = data.split(b"\n")
        self._pending = [tail] if tail else []
        self.frames += len(lines)
        for line in lines:
            self._inspect(line)
        return chunk

    def finish(self) -> bytes:
        """Call once the stream ended: a body without a trailing newline is a line too."""
        if self._pending:
            self._inspect(b"".join(self._pending))
            self._pending = []
        return b""

    def _inspect(self, line: bytes) -> None:
        # The last frame has the counts, or (a model load: `"done_reason":"load"`) none at all.
        if b"eval_count" not in line and b"done_reason" not in line:
            return
        try:
            frame = _decode_frame(line)
        except msgspec.DecodeError:
            return
        if frame.done:
            self.usage = Usage(frame.prompt_eval_count, frame.eval_count)
