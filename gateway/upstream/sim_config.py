"""The simulator's settings and the counters it keeps about what it was asked."""

import msgspec

FAIL_MESSAGE = "internal sim failure: SECRET-UPSTREAM-DETAIL"
REDACTED = "<redacted>"


class SimConfig(msgspec.Struct, frozen=True):
    """How the simulator behaves: its models, pace, and which failure it injects."""

    models: tuple[str, ...] = ("llama3.2:1b", "qwen2.5:0.5b")
    chunks: int = 8  # completion tokens per answer
    token_delay_ms: float = 0.0  # between streamed tokens
    ttft_ms: float = 0.0  # before the first token
    version: str = "0.6.5"
    required_token: str | None = None  # demanded on every request (by default as a Bearer)
    auth_header: str = "Authorization"  # the header that must carry required_token
    auth_scheme: str = "Bearer"  # before the token in that header; empty: the bare token
    fail_status: int | None = None  # every model endpoint answers this status, FAIL_MESSAGE
    # Streams drop the connection after this many tokens; whole answers halfway through.
    die_after_chunks: int | None = None

    def __post_init__(self) -> None:
        if self.chunks < 0 or (self.die_after_chunks is not None and self.die_after_chunks < 0):
            raise ValueError("chunks and die_after_chunks must not be negative")
        if self.token_delay_ms < 0 or self.ttft_ms < 0:
            raise ValueError("delays must not be negative")
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")

    def __repr__(self) -> str:
        shown = {name: getattr(self, name) for name in self.__struct_fields__}
        if self.required_token is not None:
            shown["required_token"] = REDACTED
        return f"SimConfig({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


class SimRequest(msgspec.Struct, frozen=True):
    """A model request as it arrived: its `X-Request-ID`, path and monotonic arrival time."""

    request_id: str
    path: str
    at_s: float
    traceparent: str | None = None  # the W3C trace context the request carried


class SimCancel(msgspec.Struct, frozen=True):
    """A stream its client left: when the simulator noticed, and the tokens it had sent."""

    request_id: str
    at_s: float
    tokens_sent: int


class SimStats(msgspec.Struct):
    """What the simulator has seen, for tests that must observe the upstream side."""

    log: list[SimRequest] = msgspec.field(default_factory=list)  # model requests, in order
    cancels: list[SimCancel] = msgspec.field(default_factory=list)
    requests: int = 0
    streams_open: int = 0
    streams_finished: int = 0
    streams_cancelled: int = 0  # the client went away mid-stream
    streams_crashed: int = 0  # answers dropped on purpose by die_after_chunks, whole ones too
