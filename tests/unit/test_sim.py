"""The Ollama simulator speaks Ollama's and OpenAI's wire formats, paces and fails on demand."""

import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import httpx
import pytest

from gateway.upstream.sim import FAIL_MESSAGE, SimConfig, SimulatedCrash, Simulator
from gateway.upstream.sim_catalogue import SHOW_SYSTEM, SHOW_TEMPLATE

pytestmark = pytest.mark.anyio

MODEL = "llama3.2:1b"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
Message = MutableMapping[str, Any]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def client(config: SimConfig | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=Simulator(config))
    return httpx.AsyncClient(transport=transport, base_url="http://sim")


@pytest.fixture
async def sim() -> AsyncIterator[httpx.AsyncClient]:
    async with client(SimConfig(chunks=5)) as http:
        yield http


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines()]


def sse_data(response: httpx.Response) -> list[str]:
    events = response.text.split("\n\n")
    assert events[-1] == "", "the stream must end with a complete event"
    assert all(event.startswith("data: ") for event in events[:-1])
    return [event.removeprefix("data: ") for event in events[:-1]]


def tokens(count: int) -> str:
    return "".join(f"tok{index} " for index in range(count))


async def drive(
    app: Simulator,
    path: str,
    body: dict[str, Any],
    sent: list[Message],
    disconnect_after_frames: int | None = None,
    method: str = "POST",
) -> None:
    """Calls the ASGI app directly, to see each body message; the client may leave mid-stream."""
    client_gone = anyio.Event()
    request_read = False

    async def receive() -> Message:
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await client_gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if disconnect_after_frames is not None and len(bodies(sent)) >= disconnect_after_frames:
            client_gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)


def bodies(sent: list[Message]) -> list[Message]:
    return [message for message in sent if message["type"] == "http.response.body"]


# --- Ollama-native completions -------------------------------------------------------------


async def test_streamed_chat_sends_each_token_then_a_done_line_with_counts(
    sim: httpx.AsyncClient,
) -> None:
    response = await sim.post("/api/chat", json=CHAT)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response)
    assert len(lines) == 6
    assert [line["message"] for line in lines[:5]] == [
        {"role": "assistant", "content": f"tok{index} "} for index in range(5)
    ]
    assert not any(line["done"] for line in lines[:5])
    done = lines[-1]
    assert done["done"] is True
    assert done["done_reason"] == "stop"
    assert done["message"] == {"role": "assistant", "content": ""}
    assert done["eval_count"] == 5
    assert done["prompt_eval_count"] == 5  # 20 characters, about four a token
    for counter in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(done[counter], int)
        assert done[counter] > 0


async def test_num_predict_cuts_the_answer_short_with_done_reason_length(
    sim: httpx.AsyncClient,
) -> None:
    response = await sim.post("/api/chat", json={**CHAT, "options": {"num_predict": 3}})

    lines = ndjson(response)
    assert "".join(line["message"]["content"] for line in lines) == tokens(3)
    assert lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 3


async def test_non_streamed_chat_is_one_object_with_the_whole_answer(
    sim: httpx.AsyncClient,
) -> None:
    response = await sim.post("/api/chat", json={**CHAT, "stream": False})

    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["message"] == {"role": "assistant", "content": tokens(5)}
    assert answer["done"] is True
    assert answer["done_reason"] == "stop"
    assert answer["eval_count"] == 5
    assert answer["prompt_eval_count"] == 5


async def test_generate_streams_response_fields(sim: httpx.AsyncClient) -> None:
    response = await sim.post("/api/generate", json={"model": MODEL, "prompt": "x" * 40})

    lines = ndjson(response)
    assert [line["response"] for line in lines] == [f"tok{index} " for index in range(5)] + [""]
    assert "message" not in lines[0]
    assert lines[-1]["done"] is True
    assert lines[-1]["prompt_eval_count"] == 10
    assert lines[-1]["eval_count"] == 5


async def test_non_streamed_generate_honours_num_predict(sim: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    answer = (await sim.post("/api/generate", json=request)).json()

    assert answer["response"] == tokens(2)
    assert answer["done_reason"] == "length"
    assert answer["eval_count"] == 2
    assert answer["prompt_eval_count"] == 1


async def test_a_request_with_nothing_to_complete_only_loads_the_model(
    sim: httpx.AsyncClient,
) -> None:
    answer = (await sim.post("/api/generate", json={"model": MODEL})).json()

    assert answer["done"] is True
    assert answer["done_reason"] == "load"
    assert answer["response"] == ""


async def test_each_line_is_its_own_body_message() -> None:
    sent: list[Message] = []
    await drive(Simulator(SimConfig(chunks=3)), "/api/chat", CHAT, sent)

    frames = bodies(sent)
    assert [frame["more_body"] for frame in frames] == [True, True, True, True, False]
    assert all(frame["body"].count(b"\n") == 1 for frame in frames[:4])
    assert json.loads(frames[3]["body"])["done"] is True


async def test_pacing_delays_the_first_token_and_spaces_the_rest() -> None:
    config = SimConfig(chunks=3, ttft_ms=60, token_delay_ms=30)
    async with client(config) as http:
        started_s = anyio.current_time()
        response = await http.post("/api/chat", json=CHAT)
        elapsed_s = anyio.current_time() - started_s

    assert elapsed_s >= 0.11  # 60 ms to the first token, then 2 x 30 ms
    assert ndjson(response)[-1]["prompt_eval_duration"] >= 60_000_000


# --- errors ---------------------------------------------------------------------------------


async def test_unknown_model_is_a_404_in_ollama_and_openai_shapes(sim: httpx.AsyncClient) -> None:
    native = await sim.post("/api/chat", json={**CHAT, "model": "nope:7b"})
    openai = await sim.post("/v1/chat/completions", json={**CHAT, "model": "nope:7b"})
    show = await sim.post("/api/show", json={"model": "nope:7b"})

    assert native.status_code == openai.status_code == show.status_code == 404
    assert native.json() == {"error": 'model "nope:7b" not found, try pulling it first'}
    assert openai.json() == {
        "error": {
            "message": 'model "nope:7b" not found, try pulling it first',
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    assert show.json() == {"error": "model 'nope:7b' not found"}


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"model": 7}', b'{"messages": []}'])
async def test_a_malformed_request_is_a_400(sim: httpx.AsyncClient, body: bytes) -> None:
    native = await sim.post("/api/chat", content=body)
    openai = await sim.post("/v1/chat/completions", content=body)

    assert native.status_code == openai.status_code == 400
    assert isinstance(native.json()["error"], str)
    assert openai.json()["error"]["type"] == "invalid_request_error"


async def test_unknown_paths_and_wrong_methods(sim: httpx.AsyncClient) -> None:
    missing = await sim.get("/api/nothing")
    wrong_method = await sim.get("/api/chat")

    assert missing.status_code == 404
    assert missing.json() == {"error": "404 page not found"}
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


async def test_required_token_refuses_requests_without_that_bearer() -> None:
    async with client(SimConfig(required_token="upstream-secret")) as http:
        missing = await http.get("/api/tags")
        wrong = await http.get("/api/tags", headers={"Authorization": "Bearer nope"})
        right = await http.get("/api/tags", headers={"Authorization": "Bearer upstream-secret"})

    assert missing.status_code == wrong.status_code == 401
    assert missing.json() == wrong.json() == {"error": "unauthorized"}
    assert right.status_code == 200


async def test_required_token_in_another_header_with_or_without_a_scheme() -> None:
    bare = SimConfig(required_token="upstream-secret", auth_header="X-Api-Key", auth_scheme="")
    async with client(bare) as http:
        right = await http.get("/api/tags", headers={"X-Api-Key": "upstream-secret"})
        as_bearer = await http.get("/api/tags", headers={"Authorization": "Bearer upstream-secret"})
        with_scheme = await http.get("/api/tags", headers={"X-Api-Key": "Bearer upstream-secret"})
    schemed = SimConfig(required_token="upstream-secret", auth_header="X-Auth", auth_scheme="Key")
    async with client(schemed) as http:
        right_schemed = await http.get("/api/tags", headers={"X-Auth": "Key upstream-secret"})
        wrong_scheme = await http.get("/api/tags", headers={"X-Auth": "Bearer upstream-secret"})

    assert right.status_code == right_schemed.status_code == 200
    assert as_bearer.status_code == with_scheme.status_code == wrong_scheme.status_code == 401


async def test_fail_status_answers_every_model_endpoint_with_a_secret_body() -> None:
    async with client(SimConfig(fail_status=503)) as http:
        chat = await http.post("/api/chat", json=CHAT)
        openai = await http.post("/v1/chat/completions", json=CHAT)
        tags = await http.get("/api/tags")

    assert chat.status_code == openai.status_code == 503
    assert chat.json() == {"error": FAIL_MESSAGE}
    assert "SECRET-UPSTREAM-DETAIL" in openai.json()["error"]["message"]
    assert tags.status_code == 200, "discovery keeps working, so the failure reaches a chat"


async def test_die_after_chunks_raises_out_of_the_app_without_ending_the_body() -> None:
    sent: list[Message] = []
    with pytest.raises(SimulatedCrash):
        await drive(Simulator(SimConfig(chunks=5, die_after_chunks=2)), "/api/chat", CHAT, sent)

    frames = bodies(sent)
    assert len(frames) == 2
    assert all(frame["more_body"] for frame in frames), "a proper end would hide the crash"


async def test_die_after_more_chunks_than_the_answer_still_never_ends_it() -> None:
    sent: list[Message] = []
    with pytest.raises(SimulatedCrash):
        await drive(Simulator(SimConfig(chunks=2, die_after_chunks=9)), "/api/chat", CHAT, sent)

    assert [json.loads(frame["body"])["done"] for frame in bodies(sent)] == [False, False]


async def test_die_after_chunks_cuts_a_whole_answer_halfway() -> None:
    sent: list[Message] = []
    app = Simulator(SimConfig(chunks=5, die_after_chunks=2))
    with pytest.raises(SimulatedCrash):
        await drive(app, "/api/chat", {**CHAT, "stream": False}, sent)

    (start,) = [message for message in sent if message["type"] == "http.response.start"]
    promised = int(dict(start["headers"])[b"content-length"])
    (frame,) = bodies(sent)
    assert frame["more_body"], "a proper end would hide the crash"
    assert 0 < len(frame["body"]) < promised
    assert app.stats.streams_crashed == 1


async def test_a_client_disconnect_stops_the_stream() -> None:
    app = Simulator(SimConfig(chunks=1000, token_delay_ms=1))
    sent: list[Message] = []
    await drive(app, "/api/chat", CHAT, sent, disconnect_after_frames=3)

    assert 3 <= len(bodies(sent)) < 10
    assert app.stats.streams_cancelled == 1
    assert app.stats.streams_finished == 0
    assert app.stats.streams_open == 0


# --- embeddings -----------------------------------------------------------------------------


async def test_embed_returns_one_small_deterministic_vector_per_input(
    sim: httpx.AsyncClient,
) -> None:
    many = (await sim.post("/api/embed", json={"model": MODEL, "input": ["a", "b"]})).json()
    one = (await sim.post("/api/embed", json={"model": MODEL, "input": "a"})).json()

    assert many["model"] == MODEL
    assert len(many["embeddings"]) == 2
    assert all(len(vector) == 8 for vector in many["embeddings"])
    assert one["embeddings"] == [many["embeddings"][0]]
    assert many["embeddings"][0] != many["embeddings"][1]
    assert many["prompt_eval_count"] == 2
    assert many["total_duration"] >= many["load_duration"] > 0


async def test_legacy_embeddings_and_openai_embeddings_agree(sim: httpx.AsyncClient) -> None:
    legacy = (await sim.post("/api/embeddings", json={"model": MODEL, "prompt": "a"})).json()
    openai = (await sim.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})).json()

    assert len(legacy["embedding"]) == 8
    assert openai["object"] == "list"
    assert [item["index"] for item in openai["data"]] == [0, 1]
    assert openai["data"][0] == {
        "object": "embedding",
        "embedding": legacy["embedding"],
        "index": 0,
    }
    assert openai["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


# --- OpenAI-compatible completions ----------------------------------------------------------


async def test_openai_stream_without_include_usage_has_no_usage_chunk(
    sim: httpx.AsyncClient,
) -> None:
    response = await sim.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert response.headers["content-type"] == "text/event-stream"
    events = sse_data(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks) == tokens(5)
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 5 + ["stop"]


async def test_openai_stream_with_include_usage_ends_with_usage_then_done(
    sim: httpx.AsyncClient,
) -> None:
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 3}
    events = sse_data(await sim.post("/v1/chat/completions", json=request))

    assert events[-1] == "[DONE]"
    usage_chunk = json.loads(events[-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    last_content = json.loads(events[-3])
    assert last_content["choices"][0]["finish_reason"] == "length"
    assert sum("usage" in json.loads(event) for event in events[:-1]) == 1


async def test_openai_chat_non_streamed_carries_usage(sim: httpx.AsyncClient) -> None:
    request = {**CHAT, "max_completion_tokens": 4}
    answer = (await sim.post("/v1/chat/completions", json=request)).json()

    assert answer["object"] == "chat.completion"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": tokens(4)},
            "finish_reason": "length",
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_openai_completions_stream_and_whole(sim: httpx.AsyncClient) -> None:
    request = {"model": MODEL, "prompt": "Say hi", "stream": True}
    events = sse_data(await sim.post("/v1/completions", json=request))
    whole = (await sim.post("/v1/completions", json={**request, "stream": False})).json()

    chunks = [json.loads(event) for event in events[:-1]]
    assert events[-1] == "[DONE]"
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == tokens(5)
    assert whole["choices"][0]["text"] == tokens(5)
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}


# --- catalogue ------------------------------------------------------------------------------


async def test_version_tags_and_openai_models_list_the_configured_models() -> None:
    async with client(SimConfig(models=("alpha:1b", "beta"), version="0.6.9")) as http:
        version = (await http.get("/api/version")).json()
        tags = (await http.get("/api/tags")).json()
        models = (await http.get("/v1/models")).json()
        one = await http.get("/v1/models/beta:latest")

    assert version == {"version": "0.6.9"}
    assert [entry["name"] for entry in tags["models"]] == ["alpha:1b", "beta:latest"]
    entry = tags["models"][0]
    assert entry["model"] == "alpha:1b"
    assert len(entry["digest"]) == 64
    assert entry["size"] > 0
    assert set(entry["details"]) == {
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    }
    assert models["object"] == "list"
    assert [(model["id"], model["owned_by"]) for model in models["data"]] == [
        ("alpha:1b", "library"),
        ("beta:latest", "library"),
    ]
    assert one.json()["id"] == "beta:latest"


async def test_a_model_named_without_tag_means_latest() -> None:
    async with client(SimConfig(models=("beta",))) as http:
        response = await http.post("/api/chat", json={**CHAT, "model": "beta", "stream": False})

    assert response.status_code == 200
    assert response.json()["model"] == "beta"


async def test_show_includes_the_system_prompt_and_template(sim: httpx.AsyncClient) -> None:
    show = (await sim.post("/api/show", json={"model": MODEL})).json()

    assert show["system"] == SHOW_SYSTEM
    assert show["template"] == SHOW_TEMPLATE
    assert SHOW_SYSTEM in show["modelfile"]
    assert show["details"]["family"] == "llama"
    assert show["model_info"]["general.architecture"] == "llama"
    assert show["capabilities"] == ["completion"]
    assert show["parameters"]


async def test_head_answers_headers_without_a_body() -> None:
    sent: list[Message] = []
    await drive(Simulator(), "/api/version", {}, sent, method="HEAD")

    start, body = sent
    assert start["status"] == 200
    assert (b"content-length", b"19") in start["headers"]  # as GET would: {"version":"0.6.5"}
    assert body == {"type": "http.response.body", "body": b"", "more_body": False}


# --- configuration and lifespan -------------------------------------------------------------


def test_config_repr_hides_the_required_token() -> None:
    assert "upstream-secret" not in repr(SimConfig(required_token="upstream-secret"))


@pytest.mark.parametrize(
    "bad",
    [{"chunks": -1}, {"ttft_ms": -1.0}, {"fail_status": 200}, {"die_after_chunks": -1}],
)
def test_config_refuses_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        SimConfig(**bad)


async def test_lifespan_completes_startup_and_shutdown() -> None:
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        sent.append(message)

    await Simulator()({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
