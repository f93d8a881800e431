"""Hostile input, fuzzed: every answer is from the catalogue, 4xx (or a true 2xx), logged
without a traceback, and in time. In process through ASGI; on the wire where ASGI cannot say it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.from_thread
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import errors
from gateway.app import Gateway
from gateway.chain.route import TABLE
from gateway.config import load_settings
from tests.integration.asgi import Answer, call
from tests.integration.served import read_until_closed, serve_gateway, status_of
from tests.integration.test_walking_skeleton import create_key

DEADLINE_S = 15.0
CODES = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and
         issubclass(cls, errors.GatewayError)}  # fmt: skip
# Room for every example: limits and the per-IP failure throttle are not what is fuzzed here.
ROOMY = {
    "DEFAULT_RPM": "1000000",
    "DEFAULT_TPM": "1000000000",
    "AUTH_FAILURE_RATE_LIMIT_PER_IP_PER_MIN": "0",
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class _Patient:
    """The app behind a client that waits for its answer: after the body, no disconnect comes.

    (`call` reports a disconnect right after the body, which a stream takes as the client gone.)
    """

    def __init__(self, app: Gateway) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        given = False

        async def patient_receive() -> Any:
            nonlocal given
            if not given:
                given = True
                return await receive()
            await anyio.sleep_forever()

        await self.app(scope, patient_receive, send)


class Served:
    """The real app with its services, on an event loop in a thread, and a valid key."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, app: Gateway, key: str) -> None:
        self.portal, self.app, self.key = portal, app, key

    def call(self, method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes = b"") -> Answer:  # fmt: skip
        async def bounded() -> Answer:
            with anyio.fail_after(DEADLINE_S):
                return await call(_Patient(self.app), method, raw_path, headers, body)

        return self.portal.call(bounded)

    def auth(self) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", b"Bearer " + self.key.encode())]


@pytest.fixture
def served(env: dict[str, str]) -> Iterator[Served]:
    key = create_key(env)
    app = Gateway(load_settings({**env, **ROOMY}))
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(app.running()),
    ):
        yield Served(portal, app, key)


def assert_catalogued(answer: Answer, raw_path: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A 2xx, or a 4xx whose body is the catalogue's shape for the path's API; no traceback."""
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
    assert answer.headers.get(b"x-content-type-options") == b"nosniff"
    if 200 <= answer.status < 300:
        return
    assert 400 <= answer.status < 500, (answer.status, answer.body[:200])
    body: Any = msgspec.json.decode(answer.body)
    path = raw_path.decode("latin-1")
    if path == "/v1" or path.startswith("/v1/"):
        assert body["error"]["code"] in CODES
        assert set(body["error"]) == {"message", "type", "code", "param"}
    else:
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
FIELD = st.sampled_from(
    ["model", "stream", "options", "messages", "prompt", "input", "max_tokens", "n",
     "stream_options", "MODEL", "Stream"]
)  # fmt: skip
MODELS = st.sampled_from(["llama3.2:1b", "qwen2.5:0.5b", "nope", "", "a" * 300]) | st.text()
OBJECTS = st.dictionaries(FIELD, JSON, max_size=5).flatmap(
    lambda extra: st.fixed_dictionaries({"model": MODELS}).map(lambda base: {**base, **extra})
)
SPECIAL_BODIES = st.sampled_from(
    [b"[" * 100_000, b'{"a":' * 50_000, b'{"model":"\xff"}', b"\xff\xfe\x00", b"", b"null",
     b'{"model":"llama3.2:1b","stream":false,"options":{"num_predict":-1}}',
     b'{"model":"llama3.2:1b","messages":' + b"[" * 5000 + b"]" * 5000 + b"}",
     b'{"model":"' + b"x" * 300_000 + b'"}', b'{"model":1e999999}']
)  # fmt: skip
BODIES = OBJECTS.map(msgspec.json.encode) | st.binary(max_size=300) | SPECIAL_BODIES
POSTS = st.sampled_from(sorted(p.encode() for p, e in TABLE.items() if e.method == "POST"))


@FUZZ
@given(raw_path=POSTS, body=BODIES)
def test_fuzzed_bodies_get_catalogued_answers(
    served: Served, caplog: pytest.LogCaptureFixture, raw_path: bytes, body: bytes
) -> None:
    caplog.clear()
    answer = served.call("POST", raw_path, served.auth(), body)
    assert_catalogued(answer, raw_path, caplog)


SEGMENT = st.sampled_from(
    [b"api", b"v1", b"chat", b"tags", b"..", b".", b"", b"%2e%2e", b"%2F", b"%00", b"\x00",
     b"%252e", b"%", b"%zz", b"%ff", b"\\", b"models", b"a" * 5000, b";x", b"?q=1", b"\xff"]
)  # fmt: skip
PATHS = st.lists(SEGMENT, min_size=1, max_size=6).map(lambda parts: b"/" + b"/".join(parts))
METHODS = st.sampled_from(
    ["GET", "POST", "TRACE", "CONNECT", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH", "get",
     "post", "FOO", "M-SEARCH", "PRI", ""]
)  # fmt: skip


@FUZZ
@given(method=METHODS, raw_path=PATHS | POSTS | st.binary(max_size=50).map(lambda b: b"/" + b))
def test_fuzzed_methods_and_paths_get_catalogued_answers(
    served: Served, caplog: pytest.LogCaptureFixture, method: str, raw_path: bytes
) -> None:
    caplog.clear()
    answer = served.call(method, raw_path, served.auth(), b'{"model":"llama3.2:1b"}')
    assert_catalogued(answer, raw_path, caplog)


HEADER_VALUES = st.binary(max_size=40) | st.sampled_from(
    [b"Bearer", b"Bearer ", b"bearer  x", b"Basic Zm9vOmJhcg==", b"Bearer \xff\xfe", b"x" * 20_000]
)
EXTRA_HEADERS = st.lists(
    st.tuples(
        st.sampled_from([b"authorization", b"content-length", b"x-request-id", b"content-type",
                         b"transfer-encoding", b"x-forwarded-for", b"host"]),
        HEADER_VALUES,
    ),
    max_size=6,
)  # fmt: skip


@FUZZ
@given(raw_path=POSTS | st.sampled_from([b"/v1/models", b"/api/tags", b"/v1/me"]),
       keyed=st.booleans(), extra=EXTRA_HEADERS)  # fmt: skip
def test_fuzzed_headers_get_catalogued_answers(
    served: Served,
    caplog: pytest.LogCaptureFixture,
    raw_path: bytes,
    keyed: bool,
    extra: list[tuple[bytes, bytes]],
) -> None:
    caplog.clear()
    headers = [*(served.auth() if keyed else []), *extra]
    method = TABLE[raw_path.decode()].method
    answer = served.call(method, raw_path, headers, b'{"model":"llama3.2:1b","stream":false}')
    assert_catalogued(answer, raw_path, caplog)


def test_several_authorization_headers_are_refused_even_if_each_is_valid(served: Served) -> None:
    twice = served.auth() * 2
    assert served.call("GET", b"/v1/models", twice).status == 401
    assert served.call("GET", b"/v1/models", served.auth()).status == 200


# On the wire: what an ASGI scope cannot carry. Hypercorn refuses what it cannot parse itself.
RAW_REQUESTS = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/tags\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"TRACE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil/api/pull HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/models\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
    b"\r\n0\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Bad Name: 1\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 1000 + b"\r\n",
    b"GET /" + b"a/" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.anyio
async def test_raw_hostile_requests_get_4xx_or_a_close_and_the_server_keeps_serving(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    statuses: list[int | None] = []
    # A head that never ends waits for the header deadline: short here, so the test is too.
    with serve_gateway(load_settings({**env, "CLIENT_HEADER_TIMEOUT_S": "1"})) as port:
        for raw in RAW_REQUESTS:
            with anyio.fail_after(DEADLINE_S):
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    await stream.send(raw)
                    await stream.send_eof()
                    answer = await read_until_closed(stream)
            statuses.append(status_of(answer) if answer.startswith(b"HTTP/1.1 ") else None)
        with anyio.fail_after(DEADLINE_S):
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                healthy = await read_until_closed(stream)
    answered = [(raw[:40], s) for raw, s in zip(RAW_REQUESTS, statuses, strict=True)]
    assert all(s is None or 200 <= s < 500 for _, s in answered), answered
    assert status_of(healthy) == 200
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
