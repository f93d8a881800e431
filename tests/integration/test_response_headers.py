"""Over a real socket: no server banner, nosniff everywhere, no-store on every keyed answer,
and each answer framed as it should be: a whole one with its length, a stream chunked."""

from __future__ import annotations

import httpx
import pytest

from gateway.chain.answer import WHOLE_ANSWER_MAX_BYTES
from gateway.config import load_settings
from tests.integration.quota_support import CHAT
from tests.integration.served import serve_gateway
from tests.integration.test_walking_skeleton import create_key

pytestmark = pytest.mark.anyio


async def test_every_answer_has_nosniff_no_store_and_no_server_banner(
    env: dict[str, str],
) -> None:
    key = create_key(env)
    auth = {"Authorization": f"Bearer {key}"}
    with serve_gateway(load_settings(env)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            answers = {
                "health": await client.get("/healthz"),
                "ready": await client.get("/readyz"),
                "models": await client.get("/v1/models", headers=auth),
                "me": await client.get("/v1/me", headers=auth),
                "no key": await client.get("/api/tags"),
                "not found": await client.get("/nowhere", headers=auth),
                "blocked": await client.post("/api/pull", headers=auth),
                "bad body": await client.post("/api/chat", headers=auth, content=b"{"),
                "whole chat": await client.post("/api/chat", headers=auth, json=CHAT),
                "streamed chat": await client.post(
                    "/api/chat", headers=auth, json={**CHAT, "stream": True}
                ),
            }
    assert answers["whole chat"].status_code == 200
    assert answers["streamed chat"].headers["content-type"] == "application/x-ndjson"
    for name, answer in answers.items():
        assert answer.headers.get("x-content-type-options") == "nosniff", name
        assert answer.headers.get_list("cache-control") == ["no-store"], name
        assert "server" not in answer.headers, name


async def test_a_whole_answer_comes_with_its_length_and_a_stream_chunked(
    env: dict[str, str],
) -> None:
    key = create_key(env)
    auth = {"Authorization": f"Bearer {key}"}
    # Enough texts that the answer outgrows what the gateway holds back to send whole.
    texts = [f"text number {index}" for index in range(4000)]
    with serve_gateway(load_settings(env)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            whole = await client.post("/api/chat", headers=auth, json=CHAT)
            streamed = await client.post("/api/chat", headers=auth, json={**CHAT, "stream": True})
            large = await client.post(
                "/api/embed", headers=auth, json={"model": CHAT["model"], "input": texts}
            )
    assert whole.headers["content-length"] == str(len(whole.content))
    assert "transfer-encoding" not in whole.headers
    assert whole.json()["done"] is True
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert len(streamed.text.splitlines()) > 1
    assert large.status_code == 200
    assert len(large.content) > WHOLE_ANSWER_MAX_BYTES
    assert large.headers["transfer-encoding"] == "chunked"
    assert len(large.json()["embeddings"]) == len(texts)
