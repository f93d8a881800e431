"""What the playground says about each endpoint of `route.TABLE`: its About card, as data.

Pure; no I/O. `endpoint_cards` fails at start-up if the table gained an entry with no card.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway import __version__
from gateway.chain import route

_MODEL = "llama3.2:1b"
_CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


class _Text(msgspec.Struct, frozen=True):
    summary: str
    sample_request: dict[str, Any] | None
    sample_response: str


class Card(msgspec.Struct, frozen=True):
    """One endpoint as the page shows it; `streams` is "default", "on request" or "never"."""

    method: str
    path: str
    protocol: str
    kind: str
    auth: str
    streams: str
    local: bool  # answered by the gateway itself, never forwarded
    summary: str
    sample_request: dict[str, Any] | None
    sample_response: str


_TEXTS: dict[str, _Text] = {
    "/api/chat": _Text(
        "Ollama chat: the model answers the conversation in `messages`. Streams NDJSON, one "
        'JSON object a line, until a line with "done": true that carries the token counts. '
        "`options.num_predict` is capped by the gateway.",
        {"model": _MODEL, "messages": _CHAT, "stream": True},
        '{"model":"llama3.2:1b","message":{"role":"assistant","content":"The "},"done":false}\n'
        '{"model":"llama3.2:1b","message":{"role":"assistant","content":"sky "},"done":false}\n'
        '{"model":"llama3.2:1b","message":{"role":"assistant","content":""},"done":true,'
        '"done_reason":"stop","prompt_eval_count":9,"eval_count":2,"total_duration":41000000}',
    ),
    "/api/generate": _Text(
        "Ollama completion of a single `prompt`. Streams NDJSON like /api/chat, with the text "
        "in `response`.",
        {"model": _MODEL, "prompt": "Why is the sky blue?", "stream": True},
        '{"model":"llama3.2:1b","response":"The ","done":false}\n'
        '{"model":"llama3.2:1b","response":"sky ","done":false}\n'
        '{"model":"llama3.2:1b","response":"","done":true,"done_reason":"stop",'
        '"prompt_eval_count":6,"eval_count":2}',
    ),
    "/api/embed": _Text(
        "Ollama embeddings of one string or a list of strings in `input`.",
        {"model": _MODEL, "input": ["first text", "second text"]},
        '{"model":"llama3.2:1b","embeddings":[[-0.31,0.29,...],[0.12,-0.05,...]],'
        '"prompt_eval_count":4}',
    ),
    "/api/embeddings": _Text(
        "Ollama's older embeddings endpoint: one `prompt`, one vector.",
        {"model": _MODEL, "prompt": "first text"},
        '{"embedding":[-0.31,0.29,0.55,...]}',
    ),
    "/api/show": _Text(
        "Details of one model (family, parameters, format). The gateway removes the system "
        "prompt, template and modelfile before answering.",
        {"model": _MODEL},
        '{"details":{"format":"gguf","family":"llama","parameter_size":"1B",'
        '"quantization_level":"Q4_K_M"},"model_info":{...}}',
    ),
    "/api/tags": _Text(
        "The models this key may use, in Ollama's format. Answered by the gateway from model "
        "discovery; counts against no limit.",
        None,
        '{"models":[{"name":"llama3.2:1b","model":"llama3.2:1b","size":401323367,'
        '"details":{"family":"llama","parameter_size":"1B"}}]}',
    ),
    "/api/version": _Text(
        "The gateway's version, in Ollama's format. Answered by the gateway.",
        None,
        f'{{"version":"{__version__}"}}',
    ),
    "/v1/chat/completions": _Text(
        'OpenAI chat completions. With "stream": true the answer is server-sent events '
        "(`data: {...}` chunks, then `data: [DONE]`); `stream_options.include_usage` adds a "
        "last chunk with the token counts. `max_tokens` is capped by the gateway.",
        {
            "model": _MODEL,
            "messages": _CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        '{"role":"assistant","content":"The "},"finish_reason":null}]}\n\n'
        'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":'
        '{"content":""},"finish_reason":"stop"}]}\n\n'
        'data: {"object":"chat.completion.chunk","choices":[],"usage":'
        '{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
        "data: [DONE]",
    ),
    "/v1/completions": _Text(
        "OpenAI text completions of a `prompt`; streams server-sent events like chat, with the "
        "text in `choices[0].text`.",
        {
            "model": _MODEL,
            "prompt": "Why is the sky blue?",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        'data: {"object":"text_completion","choices":[{"text":"The ","index":0,'
        '"finish_reason":null}]}\n\n'
        'data: {"object":"text_completion","choices":[],"usage":'
        '{"prompt_tokens":6,"completion_tokens":2,"total_tokens":8}}\n\n'
        "data: [DONE]",
    ),
    "/v1/embeddings": _Text(
        "OpenAI embeddings of one string or a list of strings in `input`.",
        {"model": _MODEL, "input": ["first text", "second text"]},
        '{"object":"list","data":[{"object":"embedding","embedding":[-0.31,0.29,...],'
        '"index":0}],"model":"llama3.2:1b","usage":{"prompt_tokens":4,"total_tokens":4}}',
    ),
    "/v1/models": _Text(
        "The models this key may use, in OpenAI's format (the list the model picker shows). "
        "Answered by the gateway; counts against no limit.",
        None,
        '{"object":"list","data":[{"id":"llama3.2:1b","object":"model",'
        '"created":1735689600,"owned_by":"library"}]}',
    ),
    "/v1/me": _Text(
        "This key's own limits, token budgets (with what is used), models and prompt-log "
        "setting. Answered by the gateway; counts against no limit.",
        None,
        '{"tenant":"demo","key":"gw_AbCdEfGhIjKl","limits":{"requests_per_minute":60,...},'
        '"budgets":[{"scope":"key","period":"day","budget":100000,"used":120,'
        '"remaining":99880}],"models":["llama3.2:1b"],'
        '"prompt_log":{"enabled":false,"retention_days":null}}',
    ),
}


def _streams(endpoint: route.Endpoint) -> str:
    if endpoint.stream_by_default:
        return "default"
    if endpoint.kind is route.Kind.GENERATE:
        return "on request"
    return "never"


def endpoint_cards() -> list[Card]:
    """A card for every entry of the endpoint table, in the table's order."""
    missing = sorted(set(route.TABLE) - set(_TEXTS))
    if missing:
        raise RuntimeError(f"playground: no About card for {', '.join(missing)}")
    cards = []
    for path, endpoint in route.TABLE.items():
        text = _TEXTS[path]
        cards.append(
            Card(
                method=endpoint.method,
                path=path,
                protocol=endpoint.protocol.value,
                kind=endpoint.kind.value,
                auth="API key (Authorization: Bearer)",
                streams=_streams(endpoint),
                local=endpoint.kind in route.LOCAL,
                summary=text.summary,
                sample_request=text.sample_request,
                sample_response=text.sample_response,
            )
        )
    return cards
