"""The playground's files as the gateway serves them: off by default, known files only, strict CSP.

The page itself is driven in a real browser by tests/browser/test_playground_browser.py.
"""

from __future__ import annotations

import re
from importlib import resources

import msgspec
import pytest

from gateway.app import Gateway
from gateway.chain import route
from gateway.config import load_settings
from gateway.playground import CSP
from tests.integration.asgi import call
from tests.integration.quota_support import bearer, make_key, running_gateway

pytestmark = pytest.mark.anyio

ON = {"PLAYGROUND_ENABLED": "true"}
STATIC = resources.files("gateway.playground").joinpath("static")
TYPES = {
    b"/playground": b"text/html; charset=utf-8",
    b"/playground/": b"text/html; charset=utf-8",
    b"/playground/app.js": b"text/javascript; charset=utf-8",
    b"/playground/style.css": b"text/css; charset=utf-8",
    b"/playground/endpoints.json": b"application/json",
}


def page_app(env: dict[str, str], **extra: str) -> Gateway:
    # The page needs no running services: it is answered before the chain.
    return Gateway(load_settings({**env, **ON, **extra}))


async def test_off_by_default_it_is_any_unknown_path(env: dict[str, str]) -> None:
    assert load_settings(env).playground_enabled is False
    async with running_gateway(env) as (services, client):
        key = await make_key(services)
        for path in ("/playground", "/playground/app.js"):
            with_key = await client.get(path, headers=bearer(key))
            assert with_key.status_code == 404
            assert with_key.json() == {"error": "no such endpoint"}
            assert "content-security-policy" not in with_key.headers
            assert (await client.get(path)).status_code == 401


async def test_each_file_is_served_with_its_type_and_the_security_headers(
    env: dict[str, str],
) -> None:
    app = page_app(env)
    for path, content_type in TYPES.items():
        for method in ("GET", "HEAD"):
            answer = await call(app, method, path, [])
            assert answer.status == 200, path
            headers = answer.headers
            assert headers[b"content-type"] == content_type
            assert headers[b"content-security-policy"] == CSP
            assert headers[b"x-content-type-options"] == b"nosniff"
            assert headers[b"referrer-policy"] == b"no-referrer"
            assert headers[b"x-frame-options"] == b"DENY"
            assert re.fullmatch(rb"[0-9a-f]{32}", headers[b"x-request-id"])
            assert int(headers[b"content-length"]) > 0
            expected_bytes = 0 if method == "HEAD" else int(headers[b"content-length"])
            assert len(answer.body) == expected_bytes
    index = await call(app, "GET", b"/playground", [])
    assert index.body == STATIC.joinpath("index.html").read_bytes()


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/playground/../gateway/config.py",
        b"/playground/%2e%2e/__init__.py",
        b"/playground/static/app.js",
        b"/playground/about.py",
        b"/playground/__init__.py",
        b"/playground/app.js/",
        b"/playground//app.js",
        b"/playground/APP.JS",
        b"/playground/app%2ejs",
        b"/playground/app.js%00",
        b"/playground/index.html",
        b"/playground/..%2fpyproject.toml",
    ],
)
async def test_only_the_known_files_are_served(env: dict[str, str], raw_path: bytes) -> None:
    answer = await call(page_app(env), "GET", raw_path, [])
    assert answer.status == 404
    assert msgspec.json.decode(answer.body) == {"error": "no such endpoint"}
    assert answer.headers[b"content-security-policy"] == CSP


async def test_other_methods_are_refused_with_allow(env: dict[str, str]) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        answer = await call(page_app(env), method, b"/playground", [], b"{}")
        assert answer.status == 405
        assert answer.headers[b"allow"] == b"GET, HEAD"


async def test_the_endpoint_list_is_the_route_table(env: dict[str, str]) -> None:
    app = page_app(env, GATEWAY_REQUEST_ID_HEADER="X-Trace-Id")
    config = msgspec.json.decode((await call(app, "GET", b"/playground/endpoints.json", [])).body)
    assert config["request_id_header"] == "X-Trace-Id"
    listed = [(card["method"], card["path"]) for card in config["endpoints"]]
    assert listed == [(endpoint.method, path) for path, endpoint in route.TABLE.items()]
    for card in config["endpoints"]:
        endpoint = route.TABLE[card["path"]]
        assert card["protocol"] == endpoint.protocol.value
        assert card["local"] == (endpoint.kind in route.LOCAL)
        assert (card["sample_request"] is None) == (endpoint.method == "GET")
        assert card["streams"] == (
            "default"
            if endpoint.stream_by_default
            else "on request"
            if endpoint.kind is route.Kind.GENERATE
            else "never"
        )
        assert card["summary"]
        assert card["sample_response"]


async def test_every_sample_request_works_through_the_gateway(env: dict[str, str]) -> None:
    """What an About card shows is what a user will paste: each sample gets a 200."""
    app = page_app(env)
    config = msgspec.json.decode((await call(app, "GET", b"/playground/endpoints.json", [])).body)
    async with running_gateway(env) as (services, client):
        key = await make_key(services)
        for card in config["endpoints"]:
            answer = await client.request(
                card["method"], card["path"], json=card["sample_request"], headers=bearer(key)
            )
            assert answer.status_code == 200, (card["path"], answer.text)


def test_the_page_holds_no_inline_code_and_no_other_origin() -> None:
    html = STATIC.joinpath("index.html").read_text()
    script = STATIC.joinpath("app.js").read_text()
    css = STATIC.joinpath("style.css").read_text()
    # The CSP blocks all of these; a test says so before a browser would silently refuse them.
    assert not re.search(r"\sstyle\s*=", html, re.IGNORECASE)
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE)
    assert "<style" not in html.lower()
    assert re.findall(r"<script[^>]*>(.*?)</script>", html, re.DOTALL) == [""]
    assert re.findall(r"""(?:src|href)="([^"]+)\"""", html) == [
        "data:,",
        "/playground/style.css",
        "/playground/app.js",
    ]
    for text in (html, script, css):
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE)
    assert "@import" not in css
    assert "url(" not in css
    assert "localStorage" not in script
    assert not re.search(r"\b(eval|Function)\s*\(|innerHTML|outerHTML|insertAdjacentHTML", script)
    # Every fetch goes to a path of this origin: a literal "/..." or the endpoint's table path.
    assert re.findall(r"fetch\(\s*([^,)]+)", script) == [
        '"/v1/models"',
        "request.path",
        '"/playground/endpoints.json"',
    ]
