"""`/api/show` answers with what a tenant must not read taken out: the system prompt and the
template (and the modelfile, which repeats both). Pure; no I/O."""

from __future__ import annotations

import msgspec

from gateway.errors import BadGateway
from gateway.upstream.usage import Usage

HIDDEN = ("system", "template", "modelfile")
_LIMIT_BYTES = 8 * 1024 * 1024
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class StrippedShow:
    """Holds the whole answer back, then forwards it rewritten."""

    __slots__ = ("_parts", "_size", "frames", "usage")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.usage: Usage | None = None
        self.frames = 0

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size > _LIMIT_BYTES:
            raise BadGateway
        self._parts.append(chunk)
        return b""

    def finish(self) -> bytes:
        try:
            answer = _decode(b"".join(self._parts))
        except msgspec.DecodeError:
            raise BadGateway from None
        if not isinstance(answer, dict):
            raise BadGateway
        for field in HIDDEN:
            answer.pop(field, None)
        return _encode(answer)
