"""Call an ASGI app with a hand-built scope: exact raw paths and headers, no client rewriting."""

from __future__ import annotations

from typing import Any

import msgspec


class Answer(msgspec.Struct):
    status: int
    headers: dict[bytes, bytes]
    body: bytes


async def call(
    app: Any,
    method: str,
    raw_path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
) -> Answer:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }
    sent = False
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    return Answer(
        status=start["status"],
        headers=dict(start["headers"]),
        body=b"".join(m.get("body", b"") for m in messages[1:]),
    )
