"""The real `ollama` client library, pointed at a served gateway with a CLI-made key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ollama
import pytest

from gateway import __version__
from gateway.app import Gateway
from gateway.config import load_settings
from tests.integration.test_walking_skeleton import create_key

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
def served(env: dict[str, str], serve_app: Callable[[Any], str]) -> tuple[str, str]:
    return serve_app(Gateway(load_settings(env))), create_key(env)


async def test_the_ollama_client_streams_a_chat(served: tuple[str, str]) -> None:
    url, key = served
    async with ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {key}"}) as client:
        parts = [
            part
            async for part in await client.chat(
                model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        ]
    assert "".join(p.message.content or "" for p in parts) == "".join(f"tok{i} " for i in range(8))
    assert parts[-1].done
    assert parts[-1].eval_count == 8


async def test_the_ollama_client_generates_and_sees_our_errors(served: tuple[str, str]) -> None:
    url, key = served
    async with ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {key}"}) as client:
        answer = await client.generate(model="llama3.2:1b", prompt="hi", options={"num_predict": 2})
        assert answer.response == "tok0 tok1 "
        assert answer.done_reason == "length"
        with pytest.raises(ollama.ResponseError) as refused:
            await client.pull("llama3.2:1b")
    assert refused.value.status_code == 403
    assert refused.value.error == "this endpoint is not available through the gateway"
    async with ollama.AsyncClient(host=url, headers={"Authorization": "Bearer no"}) as stranger:
        with pytest.raises(ollama.ResponseError) as unauthorized:
            await stranger.chat(model="llama3.2:1b", messages=[])
    assert unauthorized.value.status_code == 401


async def test_the_ollama_client_lists_shows_and_embeds(served: tuple[str, str]) -> None:
    url, key = served
    async with ollama.AsyncClient(host=url, headers={"Authorization": f"Bearer {key}"}) as client:
        listed = await client.list()
        shown = await client.show("llama3.2:1b")
        embedded = await client.embed(model="llama3.2:1b", input=["one", "two"])
        whole = await client.chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=False
        )
        version = (await client._client.get("/api/version")).json()
    assert sorted(m.model or "" for m in listed.models) == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert shown.template is None
    assert shown.modelfile is None
    assert shown.details is not None
    assert len(embedded.embeddings) == 2
    assert whole.message.content == "".join(f"tok{i} " for i in range(8))
    assert whole.done
    assert version["version"] == __version__
