"""The real `openai` SDK against a served gateway: streams, usage, and its exception classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from gateway.app import Gateway
from gateway.config import load_settings
from tests.integration.test_walking_skeleton import cli, create_key

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
ANSWER = "".join(f"tok{i} " for i in range(8))


@pytest.fixture
def served(env: dict[str, str], serve_app: Callable[[Any], str]) -> tuple[str, str]:
    return serve_app(Gateway(load_settings(env))) + "/v1", create_key(env)


def sdk(base_url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


async def test_a_streamed_chat_without_usage_asked_sees_none(served: tuple[str, str]) -> None:
    async with sdk(*served) as client:
        stream = await client.chat.completions.create(
            model="llama3.2:1b", messages=MESSAGES, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_a_streamed_chat_with_usage_asked_gets_it_last(served: tuple[str, str]) -> None:
    async with sdk(*served) as client:
        stream = await client.chat.completions.create(
            model="llama3.2:1b",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


async def test_whole_answers_and_completions(served: tuple[str, str]) -> None:
    async with sdk(*served) as client:
        chat = await client.chat.completions.create(
            model="llama3.2:1b", messages=MESSAGES, max_tokens=3
        )
        text = await client.completions.create(model="llama3.2:1b", prompt="hi")
    assert chat.choices[0].message.content == "tok0 tok1 tok2 "
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 3
    assert text.choices[0].text == ANSWER


async def test_the_sdk_raises_its_own_exception_classes(
    env: dict[str, str], served: tuple[str, str]
) -> None:
    base_url, key = served
    async with sdk(base_url, "gw_wrong") as stranger:
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            await stranger.chat.completions.create(model="llama3.2:1b", messages=MESSAGES)
    assert unauthorized.value.code == "invalid_api_key"
    async with sdk(base_url, key) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="nope:1b", messages=MESSAGES)
        assert missing.value.code == "model_not_found"
    # An operator shuts the key's rate to zero; the running gateway applies it at once.
    assert cli(env, "limits", "set", "--key", key[:15], "--rpm", "0").returncode == 0
    async with sdk(base_url, key) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="llama3.2:1b", messages=MESSAGES)
    assert limited.value.code == "rate_limit_exceeded"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60


def test_the_sync_client_lists_models_embeds_and_chats(served: tuple[str, str]) -> None:
    base_url, key = served
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        models = sorted(model.id for model in client.models.list())
        vectors = client.embeddings.create(model="qwen2.5:0.5b", input=["a", "b"])
        with client.chat.completions.create(
            model="qwen2.5:0.5b", messages=MESSAGES, stream=True
        ) as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert models == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert [item.index for item in vectors.data] == [0, 1]
    assert vectors.usage.prompt_tokens > 0
    assert text == ANSWER


async def test_a_bad_request_is_the_sdks_bad_request(served: tuple[str, str]) -> None:
    async with sdk(*served) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="llama3.2:1b", messages=MESSAGES, n=99)
    assert bad.value.code == "invalid_request"
    assert bad.value.message.endswith('"n" must be an integer from 1 to 8')
