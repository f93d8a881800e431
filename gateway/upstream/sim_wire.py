"""Wire shapes of the Ollama simulator: the request fields it reads and the answers it writes.

Request views decode only what the simulator needs; unknown fields are ignored, as Ollama does.
"""

from collections.abc import Sequence

import msgspec

# --- request views -------------------------------------------------------------------------


class Options(msgspec.Struct):
    num_predict: int | None = None


class ContentPart(msgspec.Struct):
    """One part of an OpenAI multi-part message; non-text parts simply carry no text."""

    text: str = ""


class ChatMessage(msgspec.Struct):
    role: str = ""
    content: str | list[ContentPart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # the field's older spelling, still accepted by Ollama


class ChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[ChatMessage] | None = None
    stream: bool | None = None
    options: Options | None = None


class GenerateRequest(msgspec.Struct):
    model: str = ""
    prompt: str | None = None
    stream: bool | None = None
    options: Options | None = None


class EmbedRequest(msgspec.Struct):
    model: str = ""
    input: str | list[str] | None = None


class LegacyEmbeddingsRequest(msgspec.Struct):
    model: str = ""
    prompt: str | None = None


class OpenAIChatRequest(msgspec.Struct):
    model: str = ""
    messages: list[ChatMessage] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class OpenAICompletionRequest(msgspec.Struct):
    model: str = ""
    prompt: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class OpenAIEmbeddingRequest(msgspec.Struct):
    model: str = ""
    input: str | list[str] | None = None


# --- Ollama-native answers -----------------------------------------------------------------


class AssistantMessage(msgspec.Struct):
    role: str
    content: str


class OllamaLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One NDJSON line of /api/chat (`message`) or /api/generate (`response`)."""

    model: str
    created_at: str
    message: AssistantMessage | None = None
    response: str | None = None
    done: bool
    done_reason: str | None = None


class OllamaDoneLine(OllamaLine, kw_only=True):
    """The final line (or the whole non-streamed answer), carrying the counters."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class OllamaEmbed(msgspec.Struct):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbedding(msgspec.Struct):
    embedding: list[float]


class Version(msgspec.Struct):
    version: str


class OllamaError(msgspec.Struct):
    error: str


# --- OpenAI-compatible answers -------------------------------------------------------------


class Delta(msgspec.Struct):
    role: str
    content: str


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None


class MessageChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str


class TextChoice(msgspec.Struct):
    text: str
    index: int
    finish_reason: str | None
    logprobs: None = None


Choice = ChunkChoice | MessageChoice | TextChoice


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIAnswer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A chat.completion(.chunk) or text_completion body; `usage` only where OpenAI sends it."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str
    choices: Sequence[Choice]
    usage: Usage | None = None


class OpenAIEmbedding(msgspec.Struct):
    object: str
    embedding: list[float]
    index: int


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingList(msgspec.Struct):
    object: str
    data: list[OpenAIEmbedding]
    model: str
    usage: EmbeddingUsage


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: None = None
    code: None = None


class OpenAIError(msgspec.Struct):
    error: OpenAIErrorDetail


# --- model catalogue -----------------------------------------------------------------------


class ModelDetails(msgspec.Struct):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class TagEntry(msgspec.Struct):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class Tags(msgspec.Struct):
    models: list[TagEntry]


class ShowAnswer(msgspec.Struct):
    license: str
    modelfile: str
    parameters: str
    template: str
    system: str
    details: ModelDetails
    model_info: dict[str, str | int]
    capabilities: list[str]
    modified_at: str


class OpenAIModel(msgspec.Struct):
    id: str
    object: str
    created: int
    owned_by: str


class OpenAIModelList(msgspec.Struct):
    object: str
    data: list[OpenAIModel]
