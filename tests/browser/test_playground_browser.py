"""The playground in headless Chromium against a served gateway, real stores and the simulator.

A key, a model from the key's own list, a streamed chat that grows on screen, the curl line
that mirrors the request byte for byte, a wrong key's 401, and nothing loaded from elsewhere.
PLAYGROUND_SCREENSHOT names where the screenshot goes (docs/playground.png for the README).
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait

from gateway.app import Gateway
from gateway.config import load_settings
from gateway.upstream.sim import SimConfig, Simulator
from tests.integration.test_walking_skeleton import cli

TOKEN_DELAY_MS = 150
ANSWER = "".join(f"tok{i} " for i in range(8))
ALLOWED = "qwen2.5:0.5b"  # the simulator also serves llama3.2:1b, which this tenant may not use
BAD_KEY = "gw_notAKey0000" + "0" * 32
WAIT_S = 30.0
SAMPLE_EVERY_S = 0.02


@dataclass
class Seen:
    """One HTTP request as it reached the gateway, and the request id it was answered with."""

    method: str
    raw_path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)
    status: int = 0
    request_id: str = ""

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


class Recorder:
    """The real gateway behind a tap that keeps what each request carried."""

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self.seen: list[Seen] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = Seen(scope["method"], scope["raw_path"], list(scope["headers"]))
        self.seen.append(seen)

        async def tapped_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                seen.body += message.get("body", b"")
            return message

        async def tapped_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen.status = message["status"]
                seen.request_id = dict(message["headers"])[b"x-request-id"].decode()
            await send(message)

        await self.app(scope, tapped_receive, tapped_send)

    def last(self, path: str) -> Seen:
        return [seen for seen in self.seen if seen.raw_path == path.encode()][-1]


@dataclass
class Served:
    base: str
    recorder: Recorder
    simulator: Simulator
    key: str


@pytest.fixture
def served(
    chromium: tuple[str, str], env: dict[str, str], serve_app: Callable[[Any], str]
) -> Served:
    """The stack, started after the check for Chromium; tests take it before `browser`, so the
    browser closes its connections before the servers stop."""
    simulator = Simulator(SimConfig(token_delay_ms=TOKEN_DELAY_MS))
    settings = {**env, "OLLAMA_URL": serve_app(simulator), "PLAYGROUND_ENABLED": "true"}
    recorder = Recorder(Gateway(load_settings(settings)))
    base = serve_app(recorder)
    assert cli(settings, "tenants", "create", "acme").returncode == 0
    assert cli(settings, "models", "allow", "--tenant", "acme", ALLOWED).returncode == 0
    created = cli(settings, "keys", "create", "--tenant", "acme", "--name", "ui", "--json")
    assert created.returncode == 0, created.stderr
    return Served(base, recorder, simulator, msgspec.json.decode(created.stdout)["key"])


def wait(browser: Chrome, condition: Callable[[Chrome], Any]) -> Any:
    return WebDriverWait(browser, WAIT_S, poll_frequency=SAMPLE_EVERY_S).until(condition)


def by_id(browser: Chrome, element_id: str) -> Any:
    return browser.find_element(By.ID, element_id)


def open_page(browser: Chrome, served: Served) -> None:
    browser.get(served.base + "/playground")
    wait(browser, lambda b: b.execute_script("return document.body.dataset.ready === 'true'"))


def enter_key(browser: Chrome, key: str) -> None:
    by_id(browser, "key").send_keys(key)


def run_and_sample(browser: Chrome) -> tuple[list[str], str]:
    """Click Run, then read the output as it renders until the call ends: (texts seen, state)."""
    by_id(browser, "run").click()
    texts: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        text, state = browser.execute_script(
            "return [document.getElementById('output').textContent,"
            " document.getElementById('status').dataset.state]"
        )
        if not texts or texts[-1] != text:
            texts.append(text)
        if state in ("done", "error", "stopped"):
            return texts, state
        time.sleep(SAMPLE_EVERY_S)
    raise AssertionError(f"the call did not end within {WAIT_S} s; output so far {texts[-1:]}")


def shown(browser: Chrome, element_id: str) -> str:
    text: str = by_id(browser, element_id).text
    return text


def header_panel(browser: Chrome) -> dict[str, str]:
    pairs = browser.execute_script(
        "return [...document.querySelectorAll('#headers dt')]"
        ".map(dt => [dt.textContent, dt.nextElementSibling.textContent])"
    )
    return dict(pairs)


def parse_curl(text: str) -> tuple[str, str, dict[str, str], str | None]:
    """(method, URL, headers by lower-case name, body) of the curl line the page shows."""
    words = shlex.split(text.replace("\\\n", " "))
    assert words[0] == "curl"
    method, url, headers, body = "", "", {}, None
    index = 1
    while index < len(words):
        word = words[index]
        if word == "-X":
            method = words[index + 1]
            index += 1
        elif word == "-H":
            name, _, value = words[index + 1].partition(": ")
            headers[name.lower()] = value
            index += 1
        elif word == "--data-raw":
            body = words[index + 1]
            index += 1
        elif not word.startswith("-"):
            url = word
        index += 1
    return method, url, headers, body


def growing(texts: list[str]) -> list[str]:
    """The distinct non-empty renders, each checked to extend the one before."""
    renders = [text for text in texts if text]
    for before, after in itertools.pairwise(renders):
        assert after.startswith(before), (before, after)
    return renders


def test_a_streamed_chat_grows_on_screen_and_curl_mirrors_it(
    served: Served, browser: Chrome, tmp_path: Path
) -> None:
    open_page(browser, served)
    assert not by_id(browser, "run").is_enabled()
    assert shown(browser, "curl") == "(enter an API key)"

    enter_key(browser, served.key)
    assert by_id(browser, "run").is_enabled()
    # The caller's effective set, not everything the backend has.
    wait(browser, lambda b: by_id(b, "model").is_enabled())
    models = Select(by_id(browser, "model"))
    assert [option.get_attribute("value") for option in models.options] == [ALLOWED]
    models.select_by_value(ALLOWED)
    Select(by_id(browser, "endpoint")).select_by_value("/api/chat")
    body = json.loads(by_id(browser, "body").get_attribute("value"))
    assert body["model"] == ALLOWED
    assert body["stream"] is True

    texts, state = run_and_sample(browser)
    assert state == "done", shown(browser, "status")
    renders = growing(texts)
    assert renders[-1] == ANSWER
    assert len(renders) >= 3, renders  # it grew on screen, token by token, before it completed
    assert shown(browser, "metric-completion") == "8"
    assert shown(browser, "metric-chunks") == "8"
    assert shown(browser, "metric-ttft").endswith(" ms")
    assert shown(browser, "metric-duration").endswith(" ms")

    seen = served.recorder.last("/api/chat")
    assert seen.status == 200
    assert shown(browser, "request-id") == seen.request_id
    assert served.simulator.stats.log[-1].request_id == seen.request_id
    headers = header_panel(browser)
    assert headers["x-request-id"] == seen.request_id
    assert headers["content-type"] == "application/x-ndjson"
    assert int(headers["x-ratelimit-limit-requests"]) > 0
    assert {name for name in headers if name.startswith("x-ratelimit-")} == {
        f"x-ratelimit-{what}-{unit}"
        for what in ("limit", "remaining", "reset")
        for unit in ("requests", "tokens")
    }

    # The curl box: the key masked until revealed, then exactly what the gateway received.
    masked = shown(browser, "curl")
    assert served.key not in masked
    assert served.key[:7] in masked
    by_id(browser, "curl-reveal").click()
    method, url, curl_headers, curl_body = parse_curl(shown(browser, "curl"))
    assert method == seen.method == "POST"
    assert url == served.base + "/api/chat"
    assert urlsplit(url).path.encode() == seen.raw_path
    assert curl_headers == {
        "authorization": f"Bearer {served.key}",
        "content-type": "application/json",
    }
    for name, value in curl_headers.items():
        assert seen.header(name.encode()) == [value.encode()]
    assert seen.header(b"cookie") == []
    assert curl_body is not None
    assert curl_body.encode() == bytes(seen.body)
    assert json.loads(curl_body) == body

    # Nothing came from another origin, and the page broke no rule of its own CSP.
    entries = browser.execute_script(
        "return performance.getEntries()"
        ".filter(e => ['navigation', 'resource'].includes(e.entryType)).map(e => e.name)"
    )
    origins = {urlsplit(name).netloc for name in entries if not name.startswith("data:")}
    assert origins == {urlsplit(served.base).netloc}
    paths = {urlsplit(name).path for name in entries}
    assert {"/playground", "/playground/app.js", "/playground/style.css"} <= paths
    assert {"/playground/endpoints.json", "/v1/models", "/api/chat"} <= paths
    console = browser.get_log("browser")  # type: ignore[no-untyped-call]  # selenium: untyped
    assert [entry for entry in console if entry["level"] == "SEVERE"] == []
    # The key lives in page memory only, unless the user asks for the tab's sessionStorage.
    assert browser.execute_script("return [localStorage.length, sessionStorage.length]") == [0, 0]

    by_id(browser, "curl-reveal").click()  # masked again for the picture
    assert served.key not in shown(browser, "curl")
    screenshot = Path(os.environ.get("PLAYGROUND_SCREENSHOT") or tmp_path / "playground.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_an_openai_stream_renders_its_events_and_usage(served: Served, browser: Chrome) -> None:
    open_page(browser, served)
    enter_key(browser, served.key)
    wait(browser, lambda b: by_id(b, "model").is_enabled())
    Select(by_id(browser, "endpoint")).select_by_value("/v1/chat/completions")
    stream = by_id(browser, "stream")
    assert stream.is_selected()
    body = json.loads(by_id(browser, "body").get_attribute("value"))
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == ALLOWED

    texts, state = run_and_sample(browser)
    assert state == "done", shown(browser, "status")
    renders = growing(texts)
    assert renders[-1] == ANSWER
    assert len(renders) >= 3, renders
    assert shown(browser, "metric-completion") == "8"
    assert header_panel(browser)["content-type"].startswith("text/event-stream")
    seen = served.recorder.last("/v1/chat/completions")
    assert shown(browser, "request-id") == seen.request_id

    # Unticking "stream" rewrites the body, and the whole answer is shown at once.
    stream.click()
    assert "stream_options" not in json.loads(by_id(browser, "body").get_attribute("value"))
    texts, state = run_and_sample(browser)
    assert state == "done"
    assert json.loads(texts[-1])["choices"][0]["message"]["content"] == ANSWER
    assert served.recorder.last("/v1/chat/completions").request_id == shown(browser, "request-id")

    # Asked for, the key is kept in this tab's sessionStorage, never in localStorage.
    by_id(browser, "remember").click()
    assert browser.execute_script(
        "return [localStorage.length, sessionStorage.getItem('gateway-playground-key')]"
    ) == [0, served.key]


def test_a_wrong_key_shows_the_401_in_each_shape_with_its_request_id(
    served: Served, browser: Chrome
) -> None:
    open_page(browser, served)
    enter_key(browser, BAD_KEY)
    wait(browser, lambda b: "401" in shown(b, "model-status"))
    assert not by_id(browser, "model").is_enabled()
    models_call = served.recorder.last("/v1/models")
    assert models_call.status == 401
    assert models_call.request_id in shown(browser, "model-status")

    texts, state = run_and_sample(browser)
    assert state == "error"
    seen = served.recorder.last("/api/chat")
    assert seen.status == 401
    assert shown(browser, "status").startswith("401")
    assert shown(browser, "request-id") == seen.request_id
    assert json.loads(texts[-1]) == {"error": "invalid or missing API key"}

    Select(by_id(browser, "endpoint")).select_by_value("/v1/chat/completions")
    texts, state = run_and_sample(browser)
    assert state == "error"
    seen = served.recorder.last("/v1/chat/completions")
    assert shown(browser, "request-id") == seen.request_id
    assert json.loads(texts[-1]) == {
        "error": {
            "message": "invalid or missing API key",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "param": None,
        }
    }
    # Refused before any backend saw it.
    assert served.simulator.stats.log == []


def test_the_browser_enforces_the_csp(served: Served, browser: Chrome) -> None:
    """An injected inline script is refused: the header is not decoration."""
    open_page(browser, served)
    outcome = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        document.addEventListener(
          "securitypolicyviolation", (e) => done(e.effectiveDirective), {once: true});
        const script = document.createElement("script");
        script.textContent = "window.inlineRan = true";
        document.head.append(script);
        setTimeout(() => done(window.inlineRan ? "ran" : "no violation seen"), 2000);
        """
    )
    assert outcome == "script-src-elem"
    assert browser.execute_script("return window.inlineRan === undefined")
