"""The Ollama simulator: a raw ASGI app speaking Ollama's native and OpenAI-compatible API.

Tests, the demo and the benchmark use it as the backend; operators load-test without a GPU.
"""

import hmac
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from gateway.upstream.sim_answers import (
    EMBEDDING_DIMS,
    Clock,
    OllamaFramer,
    OpenAIChatFramer,
    OpenAICompletionFramer,
    embedding,
    message_chars,
    plan_answer,
    prompt_token_estimate,
)
from gateway.upstream.sim_catalogue import Catalogue
from gateway.upstream.sim_config import FAIL_MESSAGE, SimConfig, SimRequest, SimStats
from gateway.upstream.sim_http import TEXT, ClientGone, Exchange, Receive, Scope, Send, SimError
from gateway.upstream.sim_stream import Delivery, SimulatedCrash, pause_ms
from gateway.upstream.sim_wire import (
    ChatRequest,
    EmbeddingUsage,
    EmbedRequest,
    GenerateRequest,
    LegacyEmbedding,
    LegacyEmbeddingsRequest,
    OllamaEmbed,
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbedding,
    OpenAIEmbeddingList,
    OpenAIEmbeddingRequest,
    Options,
    ShowRequest,
    Version,
)

MAX_BODY_BYTES = 32 * 1024 * 1024

__all__ = ["FAIL_MESSAGE", "SimConfig", "SimStats", "SimulatedCrash", "Simulator"]

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decode_show = msgspec.json.Decoder(ShowRequest)
_decode_chat = msgspec.json.Decoder(ChatRequest)
_decode_generate = msgspec.json.Decoder(GenerateRequest)
_decode_embed = msgspec.json.Decoder(EmbedRequest)
_decode_legacy_embeddings = msgspec.json.Decoder(LegacyEmbeddingsRequest)
_decode_openai_chat = msgspec.json.Decoder(OpenAIChatRequest)
_decode_openai_completion = msgspec.json.Decoder(OpenAICompletionRequest)
_decode_openai_embedding = msgspec.json.Decoder(OpenAIEmbeddingRequest)


Handler = Callable[[Exchange, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Route:
    methods: frozenset[str]
    handler: Handler
    model_endpoint: bool  # answers fail_status when that is configured


class Simulator:
    """An Ollama v0.6-compatible server as an ASGI 3 callable: `Simulator(SimConfig(...))`."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.stats = SimStats()
        self._answer_ids = itertools.count(1)
        self.reconfigure(config if config is not None else SimConfig())
        get, post = frozenset({"GET", "HEAD"}), frozenset({"POST"})
        self._routes: dict[str, _Route] = {
            "/": _Route(get, self._root, model_endpoint=False),
            "/api/version": _Route(get, self._version, model_endpoint=False),
            "/api/tags": _Route(get, self._tags, model_endpoint=False),
            "/api/show": _Route(post, self._show, model_endpoint=True),
            "/api/chat": _Route(post, self._chat, model_endpoint=True),
            "/api/generate": _Route(post, self._generate, model_endpoint=True),
            "/api/embed": _Route(post, self._embed, model_endpoint=True),
            "/api/embeddings": _Route(post, self._legacy_embeddings, model_endpoint=True),
            "/v1/chat/completions": _Route(post, self._openai_chat, model_endpoint=True),
            "/v1/completions": _Route(post, self._openai_completion, model_endpoint=True),
            "/v1/embeddings": _Route(post, self._openai_embeddings, model_endpoint=True),
            "/v1/models": _Route(get, self._openai_models, model_endpoint=False),
        }
        self._openai_model_route = _Route(get, self._openai_model, model_endpoint=False)

    def reconfigure(self, config: SimConfig) -> None:
        """Behave as `config` says from the next request on (a backend that failed, recovered)."""
        self.config = config
        self._delivery = Delivery(config, self.stats)
        self._catalogue = Catalogue(config.models, int(time.time()), EMBEDDING_DIMS)
        self._version_body = _encoder.encode(Version(version=config.version))
        token = config.required_token
        self._token = None if token is None else token.encode()
        self._auth_header = config.auth_header.lower().encode()
        self._auth_scheme = config.auth_scheme.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"the simulator serves HTTP only, not {scope['type']!r}")
        exchange = Exchange(scope, receive, send)
        self.stats.requests += 1
        try:
            await self._dispatch(exchange)
        except SimError as error:
            await exchange.error(error.status, error.message, error.headers)
        except ClientGone:
            return

    async def _dispatch(self, exchange: Exchange) -> None:
        if not self._authorized(exchange):
            raise SimError(401, "unauthorized")
        route = self._routes.get(exchange.path)
        if route is None and exchange.path.startswith("/v1/models/"):
            route = self._openai_model_route
        if route is None:
            raise SimError(404, "404 page not found")
        if exchange.method not in route.methods:
            allow = ", ".join(sorted(route.methods)).encode()
            raise SimError(405, "405 method not allowed", [(b"allow", allow)])
        if route.model_endpoint:
            request_id = (exchange.header(b"x-request-id") or b"").decode("latin-1")
            parent = exchange.header(b"traceparent")
            self.stats.log.append(
                SimRequest(
                    request_id,
                    exchange.path,
                    time.monotonic(),
                    parent.decode("latin-1") if parent is not None else None,
                )
            )
        if route.model_endpoint and self.config.fail_status is not None:
            raise SimError(self.config.fail_status, FAIL_MESSAGE)
        body = await exchange.read_body(MAX_BODY_BYTES)
        await route.handler(exchange, body)

    def _authorized(self, exchange: Exchange) -> bool:
        if self._token is None:
            return True
        value = exchange.header(self._auth_header) or b""
        if not self._auth_scheme:
            return hmac.compare_digest(value.strip(), self._token)
        scheme, _, credentials = value.partition(b" ")
        return scheme.lower() == self._auth_scheme and hmac.compare_digest(
            credentials.strip(), self._token
        )

    def _require_model(self, model: str) -> None:
        if not model:
            raise SimError(400, "model is required")
        if not self._catalogue.knows(model):
            raise SimError(404, f'model "{model}" not found, try pulling it first')

    # --- catalogue ---------------------------------------------------------------------------

    async def _root(self, exchange: Exchange, body: bytes) -> None:
        await exchange.respond(200, b"Ollama is running", TEXT)

    async def _version(self, exchange: Exchange, body: bytes) -> None:
        await exchange.respond(200, self._version_body)

    async def _tags(self, exchange: Exchange, body: bytes) -> None:
        await exchange.respond(200, self._catalogue.tags_body)

    async def _show(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_show, body)
        model = request.model or request.name
        if not model:
            raise SimError(400, "model is required")
        show = self._catalogue.show_body(model)
        if show is None:
            raise SimError(404, f"model '{model}' not found")
        await exchange.respond(200, show)

    async def _openai_models(self, exchange: Exchange, body: bytes) -> None:
        await exchange.respond(200, self._catalogue.openai_models_body)

    async def _openai_model(self, exchange: Exchange, body: bytes) -> None:
        model = exchange.path.removeprefix("/v1/models/")
        card = self._catalogue.openai_model_body(model)
        if card is None:
            raise SimError(404, f'model "{model}" not found')
        await exchange.respond(200, card)

    # --- completions -------------------------------------------------------------------------

    async def _chat(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_chat, body)
        self._require_model(request.model)
        framer = OllamaFramer(request.model, chat=True)
        if not request.messages:
            await exchange.respond(200, framer.load())
            return
        chars = message_chars(request.messages)
        plan = plan_answer(self.config.chunks, _num_predict(request.options), chars)
        await self._delivery.answer(exchange, framer, plan, stream=request.stream is not False)

    async def _generate(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_generate, body)
        self._require_model(request.model)
        framer = OllamaFramer(request.model, chat=False)
        if not request.prompt:
            await exchange.respond(200, framer.load())
            return
        plan = plan_answer(self.config.chunks, _num_predict(request.options), len(request.prompt))
        await self._delivery.answer(exchange, framer, plan, stream=request.stream is not False)

    async def _openai_chat(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_openai_chat, body)
        self._require_model(request.model)
        if not request.messages:
            raise SimError(400, "[] is too short - 'messages'")
        limit = request.max_completion_tokens or request.max_tokens
        plan = plan_answer(self.config.chunks, limit, message_chars(request.messages))
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        answer_id = f"chatcmpl-{next(self._answer_ids)}"
        framer = OpenAIChatFramer(request.model, answer_id, int(time.time()), include_usage)
        await self._delivery.answer(exchange, framer, plan, stream=bool(request.stream))

    async def _openai_completion(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_openai_completion, body)
        self._require_model(request.model)
        chars = sum(len(text) for text in _texts(request.prompt))
        plan = plan_answer(self.config.chunks, request.max_tokens, chars)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        answer_id = f"cmpl-{next(self._answer_ids)}"
        framer = OpenAICompletionFramer(request.model, answer_id, int(time.time()), include_usage)
        await self._delivery.answer(exchange, framer, plan, stream=bool(request.stream))

    # --- embeddings --------------------------------------------------------------------------

    async def _embed(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_embed, body)
        self._require_model(request.model)
        texts = _texts(request.input)
        clock = Clock()
        await pause_ms(self.config.ttft_ms)
        timings = clock.timings()
        answer = OllamaEmbed(
            model=request.model,
            embeddings=[embedding(request.model, text) for text in texts],
            total_duration=timings.total_ns,
            load_duration=timings.load_ns,
            prompt_eval_count=sum(prompt_token_estimate(len(text)) for text in texts),
        )
        await exchange.respond(200, _encoder.encode(answer))

    async def _legacy_embeddings(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_legacy_embeddings, body)
        self._require_model(request.model)
        await pause_ms(self.config.ttft_ms)
        vector = embedding(request.model, request.prompt) if request.prompt else []
        await exchange.respond(200, _encoder.encode(LegacyEmbedding(embedding=vector)))

    async def _openai_embeddings(self, exchange: Exchange, body: bytes) -> None:
        request = _parse(_decode_openai_embedding, body)
        self._require_model(request.model)
        if request.input is None:
            raise SimError(400, "invalid input")
        texts = _texts(request.input)
        await pause_ms(self.config.ttft_ms)
        prompt_tokens = sum(prompt_token_estimate(len(text)) for text in texts)
        answer = OpenAIEmbeddingList(
            object="list",
            data=[
                OpenAIEmbedding(
                    object="embedding", embedding=embedding(request.model, text), index=i
                )
                for i, text in enumerate(texts)
            ],
            model=request.model,
            usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )
        await exchange.respond(200, _encoder.encode(answer))


def _parse(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    if not body.strip():
        raise SimError(400, "missing request body")
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as error:
        raise SimError(400, f"invalid request body: {error}") from None


def _num_predict(options: Options | None) -> int | None:
    return None if options is None else options.num_predict


def _texts(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


async def _run_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
