"""Over a real socket: no server banner, nosniff everywhere, no-store on every keyed answer."""

from __future__ import annotations

import httpx
import pytest

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
