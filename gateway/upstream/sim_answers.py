"""What the simulator answers: deterministic token plans, their frames per protocol, embeddings."""

import hashlib
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import anyio
import msgspec

from gateway.upstream.sim_wire import (
    AssistantMessage,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    MessageChoice,
    OllamaDoneLine,
    OllamaLine,
    OpenAIAnswer,
    TextChoice,
    Usage,
)

NDJSON = b"application/x-ndjson"
SSE = b"text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"
EMBEDDING_DIMS = 8
LOAD_NS = 1_000_000  # the model is always "already loaded": a small, fixed load time
_NS_PER_S = 1_000_000_000

_encoder = msgspec.json.Encoder()


def token_text(index: int) -> str:
    """The simulator's `index`-th completion token; deterministic so tests can assert text."""
    return f"tok{index} "


def prompt_token_estimate(chars: int) -> int:
    """A deterministic prompt token count: about four characters a token, at least one."""
    return max(1, (chars + 3) // 4)


def message_chars(messages: Iterable[ChatMessage]) -> int:
    total = 0
    for message in messages:
        if isinstance(message.content, str):
            total += len(message.content)
        elif message.content is not None:
            total += sum(len(part.text) for part in message.content)
    return total


class Plan(msgspec.Struct, frozen=True):
    """The answer to produce: its tokens, why it stops, and how long the prompt was."""

    tokens: tuple[str, ...]
    done_reason: str
    prompt_eval_count: int

    @property
    def eval_count(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def plan_answer(chunks: int, limit: int | None, prompt_chars: int) -> Plan:
    """`chunks` tokens, cut to `limit` (num_predict / max_tokens) when that is positive."""
    count = chunks if limit is None or limit <= 0 else min(chunks, limit)
    return Plan(
        tokens=tuple(token_text(index) for index in range(count)),
        done_reason="length" if count < chunks else "stop",
        prompt_eval_count=prompt_token_estimate(prompt_chars),
    )


class Timings(msgspec.Struct, frozen=True):
    total_ns: int
    load_ns: int
    prompt_eval_ns: int
    eval_ns: int


class Clock:
    """Measures one answer: prompt evaluation until the first token, evaluation after it."""

    def __init__(self) -> None:
        self._started_s = anyio.current_time()
        self._first_token_s: float | None = None

    def first_token(self) -> None:
        self._first_token_s = anyio.current_time()

    def timings(self) -> Timings:
        now_s = anyio.current_time()
        first_s = now_s if self._first_token_s is None else self._first_token_s
        prompt_eval_ns = max(1, int((first_s - self._started_s) * _NS_PER_S))
        eval_ns = max(1, int((now_s - first_s) * _NS_PER_S))
        return Timings(
            total_ns=LOAD_NS + prompt_eval_ns + eval_ns,
            load_ns=LOAD_NS,
            prompt_eval_ns=prompt_eval_ns,
            eval_ns=eval_ns,
        )


def created_at() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Framer(Protocol):
    """Turns a plan into one protocol's bytes: streamed frames, or one whole body."""

    @property
    def media_type(self) -> bytes: ...

    def token(self, text: str) -> bytes: ...

    def finish(self, plan: Plan, timings: Timings) -> list[bytes]: ...

    def whole(self, plan: Plan, timings: Timings) -> bytes: ...


class OllamaFramer:
    """/api/chat (`message`) and /api/generate (`response`) answers, streamed as NDJSON."""

    media_type = NDJSON

    def __init__(self, model: str, *, chat: bool) -> None:
        self._model = model
        self._chat = chat

    def _content(self, text: str) -> tuple[AssistantMessage | None, str | None]:
        if self._chat:
            return AssistantMessage(role="assistant", content=text), None
        return None, text

    def token(self, text: str) -> bytes:
        message, response = self._content(text)
        line = OllamaLine(
            model=self._model,
            created_at=created_at(),
            message=message,
            response=response,
            done=False,
        )
        return _encoder.encode(line) + b"\n"

    def load(self) -> bytes:
        """Ollama's answer to a request with nothing to complete: it only loads the model."""
        message, response = self._content("")
        line = OllamaLine(
            model=self._model,
            created_at=created_at(),
            message=message,
            response=response,
            done=True,
            done_reason="load",
        )
        return _encoder.encode(line)

    def _done(self, text: str, plan: Plan, timings: Timings) -> bytes:
        message, response = self._content(text)
        line = OllamaDoneLine(
            model=self._model,
            created_at=created_at(),
            message=message,
            response=response,
            done=True,
            done_reason=plan.done_reason,
            total_duration=timings.total_ns,
            load_duration=timings.load_ns,
            prompt_eval_count=plan.prompt_eval_count,
            prompt_eval_duration=timings.prompt_eval_ns,
            eval_count=plan.eval_count,
            eval_duration=timings.eval_ns,
        )
        return _encoder.encode(line)

    def finish(self, plan: Plan, timings: Timings) -> list[bytes]:
        return [self._done("", plan, timings) + b"\n"]

    def whole(self, plan: Plan, timings: Timings) -> bytes:
        return self._done(plan.text, plan, timings)


def _sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def _usage(plan: Plan) -> Usage:
    return Usage(
        prompt_tokens=plan.prompt_eval_count,
        completion_tokens=plan.eval_count,
        total_tokens=plan.prompt_eval_count + plan.eval_count,
    )


class _OpenAIFramer:
    """Ollama's OpenAI-compatible answers, streamed as SSE the way Ollama streams them:
    one chunk per token, an empty chunk with `finish_reason`, the usage chunk when asked."""

    media_type = SSE
    _chunk_object: str
    _whole_object: str

    def __init__(self, model: str, answer_id: str, created_s: int, include_usage: bool) -> None:
        self._model = model
        self._id = answer_id
        self._created_s = created_s
        self._include_usage = include_usage

    def _choice(self, text: str, finish_reason: str | None, *, whole: bool) -> Choice:
        raise NotImplementedError

    def _body(self, obj: str, choices: Sequence[Choice], usage: Usage | None = None) -> bytes:
        answer = OpenAIAnswer(
            id=self._id,
            object=obj,
            created=self._created_s,
            model=self._model,
            system_fingerprint="fp_ollama",
            choices=choices,
            usage=usage,
        )
        return _encoder.encode(answer)

    def token(self, text: str) -> bytes:
        return _sse(self._body(self._chunk_object, [self._choice(text, None, whole=False)]))

    def finish(self, plan: Plan, timings: Timings) -> list[bytes]:
        last = self._choice("", plan.done_reason, whole=False)
        frames = [_sse(self._body(self._chunk_object, [last]))]
        if self._include_usage:
            frames.append(_sse(self._body(self._chunk_object, [], _usage(plan))))
        frames.append(SSE_DONE)
        return frames

    def whole(self, plan: Plan, timings: Timings) -> bytes:
        choice = self._choice(plan.text, plan.done_reason, whole=True)
        return self._body(self._whole_object, [choice], _usage(plan))


class OpenAIChatFramer(_OpenAIFramer):
    _chunk_object = "chat.completion.chunk"
    _whole_object = "chat.completion"

    def _choice(self, text: str, finish_reason: str | None, *, whole: bool) -> Choice:
        if whole:
            message = AssistantMessage(role="assistant", content=text)
            return MessageChoice(index=0, message=message, finish_reason=finish_reason or "stop")
        delta = Delta(role="assistant", content=text)
        return ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)


class OpenAICompletionFramer(_OpenAIFramer):
    _chunk_object = "text_completion"
    _whole_object = "text_completion"

    def _choice(self, text: str, finish_reason: str | None, *, whole: bool) -> Choice:
        return TextChoice(text=text, index=0, finish_reason=finish_reason)


def embedding(model: str, text: str) -> list[float]:
    """A deterministic, unit-length vector of EMBEDDING_DIMS floats for `text`."""
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBEDDING_DIMS]]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [round(value / norm, 6) for value in raw]
