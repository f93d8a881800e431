"""How a backend's answer goes out: a stream frame by frame, a whole answer in one piece.

A whole (non-streamed) answer is held until it is complete, up to `WHOLE_ANSWER_MAX_BYTES`, and
then sent with its length: one write instead of a chunked body and its terminator, and a backend
that breaks off mid-answer becomes a clean error status instead of a 200 with half a body.
"""

from __future__ import annotations

from gateway.chain.values import Outcome
from gateway.errors import GatewayError, Surface, stream_error_frame
from gateway.http import Headers, Responder
from gateway.upstream.transcript import TRANSCRIPT_MAX_BYTES

# Past this a whole answer (a large embedding batch, say) is streamed on rather than held.
WHOLE_ANSWER_MAX_BYTES = 256 * 1024


class Answer:
    """One answer's way out to the client; `headers` go with its status line."""

    __slots__ = ("_headers", "_held", "_held_bytes", "_last", "_outcome", "_responder", "_surface")

    def __init__(
        self,
        responder: Responder,
        outcome: Outcome,
        headers: Headers,
        surface: Surface,
        *,
        whole: bool,
    ) -> None:
        self._responder = responder
        self._outcome = outcome
        self._headers = headers
        self._surface = surface
        # Held parts of a whole answer; None once the answer streams.
        self._held: list[bytes] | None = [] if whole else None
        self._held_bytes = 0
        # The last part sent, so that an error frame starts on a line of its own.
        self._last = b""

    async def open(self) -> None:
        """A stream's status line goes out at once: the client knows it was accepted."""
        if self._held is None:
            await self._responder.start(200, self._headers)

    async def send(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes <= WHOLE_ANSWER_MAX_BYTES:
                return
            data, self._held = b"".join(self._held), None
            await self._responder.start(200, self._headers)
        self._record(data)
        await self._responder.chunk(data)
        self._last = data

    async def finish(self) -> None:
        if self._held is None:
            await self._responder.end()
            return
        body = b"".join(self._held)
        self._record(body)
        self._headers.append((b"content-length", str(len(body)).encode("ascii")))
        await self._responder.start(200, self._headers)
        await self._responder.end(body)

    def _record(self, data: bytes) -> None:
        # The transcript holds what the client was sent: never a held answer that failed.
        transcript = self._outcome.transcript
        if transcript is not None:
            transcript.extend(data[: TRANSCRIPT_MAX_BYTES - len(transcript)])

    async def fail(self, error: GatewayError) -> None:
        """The backend broke off. Before the status line the client gets a plain error status;
        after it, the only honest signal left is a final error frame."""
        if not self._responder.started:
            raise error
        await self._responder.end(stream_error_frame(error, self._surface, after=self._last))
