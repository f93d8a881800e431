"""`gateway backends add|remove|list|probe` as subprocesses against real Postgres and simulators
on real sockets: the table round trip, dry runs, the NOTIFY, and tokens that never show."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import msgspec
import psycopg
import pytest

from gateway.devservices import free_port
from tests.integration.cli_support import as_json, gateway, ok, stored

LIST_THEM = "list them with `gateway backends list`\n"
CHECK_THEM = "check each URL and token in the table above\n"

SECRET = "sk-backend-7Qm2xV9pLr4T"
WRONG = "sk-wrong-3Hd8Kw1Zn6Yb"
Start = Callable[..., AbstractContextManager[str]]


@pytest.fixture
def env(database_url: str, simulator_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "OLLAMA_URL": simulator_url}


@pytest.fixture
def notices(database_url: str) -> Iterator[Callable[[], list[str]]]:
    """What arrived on `gateway_backends` since the last call (the names of changed backends)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN gateway_backends")

        def drain() -> list[str]:
            return [notice.payload for notice in conn.notifies(timeout=0.5)]

        yield drain


def count(database_url: str) -> int:
    return int(stored(database_url, "SELECT count(*) FROM gateway.backends")[0])


def probe_json(env: dict[str, str], *args: str) -> tuple[int, list[dict[str, Any]]]:
    result = gateway(env, "backends", "probe", *args, "--json")
    return result.returncode, msgspec.json.decode(result.stdout)


def listing(name: str, url: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": url,
        "kind": "ollama",
        "auth_header": None,
        "auth_scheme": None,
        "token": "none",
        "priority": 0,
        "max_parallel": 8,
        "enabled": True,
        "source": "database",
        **fields,
    }


class Recorder:
    """An upstream that answers every request with one status and body, and keeps each
    request's path and headers."""

    def __init__(self, status: int = 200, body: bytes = b'{"models": []}') -> None:
        self.status = status
        self.body = body
        self.seen: list[tuple[str, list[tuple[str, str]]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = [(name.decode(), value.decode()) for name, value in scope["headers"]]
        self.seen.append((scope["path"], headers))
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": self.body})


def test_add_list_remove_round_trip(env: dict[str, str], simulator_url: str) -> None:
    added = as_json(env, "backends", "add", "gpu1", simulator_url, "--priority", "5")
    assert added == {
        "action": "add",
        "dry_run": False,
        "backend": listing("gpu1", simulator_url, priority=5),
    }
    text = ok(
        env, "backends", "add", "gpu2", "https://gpu2.internal:8443/ollama", "--kind", "openai",
        "--token-env", "GPU2_TOKEN", "--auth-header", "X-Api-Key", "--auth-scheme", "",
        "--max-parallel", "2",
    )  # fmt: skip
    assert "added backend 'gpu2'" in text

    gpu2 = listing(
        "gpu2",
        "https://gpu2.internal:8443/ollama",
        kind="openai",
        auth_header="X-Api-Key",
        auth_scheme="",
        token="env:GPU2_TOKEN",
        max_parallel=2,
    )
    assert as_json(env, "backends", "list") == [listing("gpu1", simulator_url, priority=5), gpu2]
    table = ok(env, "backends", "list").splitlines()
    assert table[0].split() == [
        "name", "kind", "url", "auth", "token", "priority", "max", "parallel", "enabled",
    ]  # fmt: skip
    assert table[1].split()[:2] == ["gpu1", "ollama"]
    assert "X-Api-Key: <token>" in table[2]
    assert "env:GPU2_TOKEN" in table[2]

    removed = as_json(env, "backends", "remove", "gpu1")
    assert removed == {
        "action": "remove",
        "dry_run": False,
        "backend": listing("gpu1", simulator_url, priority=5),
    }
    assert as_json(env, "backends", "list") == [gpu2]
    assert ok(env, "backends", "remove", "gpu2").splitlines() == [
        "removed backend 'gpu2'",
        "the backends table is empty: the gateway uses OLLAMA_URL as its one backend "
        f"({simulator_url})",
    ]
    missing = gateway(env, "backends", "remove", "gpu2")
    assert (missing.returncode, missing.stderr) == (
        1,
        "error: no backend named 'gpu2'; " + LIST_THEM,
    )


def test_an_empty_table_shows_the_ollama_url_default(
    env: dict[str, str], simulator_url: str
) -> None:
    with_token = {**env, "OLLAMA_AUTH_TOKEN": SECRET, "OLLAMA_MAX_CONNECTIONS": "16"}
    assert as_json(with_token, "backends", "list") == [
        listing(
            "default",
            simulator_url,
            auth_header="Authorization",
            auth_scheme="Bearer",
            token="env:OLLAMA_AUTH_TOKEN",
            max_parallel=16,
            source="environment",
        )
    ]
    text = ok(with_token, "backends", "list")
    assert "the backends table is empty: the gateway uses OLLAMA_URL" in text
    assert SECRET not in text


def test_dry_runs_check_everything_and_write_nothing(
    env: dict[str, str], database_url: str, simulator_url: str, notices: Callable[[], list[str]]
) -> None:
    dry = as_json(env, "backends", "add", "gpu1", simulator_url, "--dry-run")
    assert dry == {"action": "add", "dry_run": True, "backend": listing("gpu1", simulator_url)}
    assert "nothing was written" in ok(env, "backends", "add", "gpu1", simulator_url, "--dry-run")
    assert count(database_url) == 0
    assert notices() == []

    ok(env, "backends", "add", "gpu1", simulator_url)
    assert notices() == ["gpu1"]
    duplicate = gateway(env, "backends", "add", "gpu1", simulator_url, "--dry-run")
    assert (duplicate.returncode, duplicate.stderr) == (
        1,
        "error: backend 'gpu1' already exists; remove it first with `gateway backends remove`\n",
    )

    assert ok(env, "backends", "remove", "gpu1", "--dry-run") == (
        "dry run: would remove backend 'gpu1'; nothing was written\n"
    )
    assert as_json(env, "backends", "remove", "gpu1", "--dry-run")["dry_run"] is True
    assert count(database_url) == 1
    assert notices() == []
    missing = gateway(env, "backends", "remove", "gpu9", "--dry-run")
    assert missing.returncode == 1


def test_add_and_remove_notify_every_gateway(
    env: dict[str, str], simulator_url: str, notices: Callable[[], list[str]]
) -> None:
    ok(env, "backends", "add", "gpu1", simulator_url)
    ok(env, "backends", "add", "gpu2", simulator_url)
    assert notices() == ["gpu1", "gpu2"]
    ok(env, "backends", "remove", "gpu1")
    assert notices() == ["gpu1"]


def test_a_stored_token_never_appears_in_any_output(
    env: dict[str, str], database_url: str, start_simulator: Start
) -> None:
    with start_simulator(required_token=SECRET) as url:
        outputs = [gateway(env, "backends", "add", "gpu1", url, "--token-stdin", stdin=SECRET)]
        assert outputs[0].returncode == 0
        assert stored(database_url, "SELECT token FROM gateway.backends") == (SECRET,)
        adding: list[tuple[str, ...]] = [
            ("add", "gpu2", url, "--token-stdin", "--auth-scheme", "Bearer", "--json"),
            ("add", "gpu3", url, "--token-stdin", "--dry-run"),
        ]
        for args in adding:
            outputs.append(gateway(env, "backends", *args, stdin=f"{SECRET}\n"))
        showing: list[tuple[str, ...]] = [
            ("list",),
            ("list", "--json"),
            ("probe",),
            ("probe", "--json"),
            ("probe", "gpu1"),
            ("remove", "gpu2", "--dry-run"),
            ("remove", "gpu2", "--json"),
            ("remove", "gpu1"),
        ]
        for args in showing:
            outputs.append(gateway(env, "backends", *args))

    assert [result.returncode for result in outputs] == [0] * len(outputs)
    assert "token stored" in outputs[0].stdout
    for result in outputs:
        assert SECRET not in result.stdout + result.stderr


def test_probe_reports_a_bad_token_as_a_failure_without_printing_it(
    env: dict[str, str], start_simulator: Start
) -> None:
    with start_simulator(required_token=SECRET) as url:
        added = gateway(env, "backends", "add", "gpu1", url, "--token-stdin", stdin=WRONG)
        assert added.returncode == 0
        text = gateway(env, "backends", "probe")
        code, results = probe_json(env)

    assert text.returncode == code == 1
    assert text.stdout.splitlines()[1].split()[:4] == ["gpu1", "failed", "HTTP", "401"]
    assert text.stderr == "error: 1 of 1 backend(s) failed the probe; " + CHECK_THEM
    assert [(r["name"], r["ok"], r["status"], r["error"]) for r in results] == [
        ("gpu1", False, 401, None)
    ]
    for output in (text.stdout, text.stderr):
        assert WRONG not in output
        assert SECRET not in output


def test_probe_with_a_token_from_the_environment(
    env: dict[str, str], start_simulator: Start
) -> None:
    with start_simulator(required_token=SECRET) as url:
        ok(env, "backends", "add", "gpu1", url, "--token-env", "GPU1_TOKEN")
        right = probe_json({**env, "GPU1_TOKEN": SECRET})
        wrong = gateway({**env, "GPU1_TOKEN": WRONG}, "backends", "probe")
        unset = probe_json(env)

    assert right[0] == 0
    assert right[1][0]["ok"] is True
    assert wrong.returncode == 1
    assert "HTTP 401" in wrong.stdout
    assert WRONG not in wrong.stdout + wrong.stderr
    assert unset[0] == 1
    assert unset[1][0]["error"] == "TokenMissing"
    assert unset[1][0]["message"] == "the token variable GPU1_TOKEN is not set"


def test_probe_sends_exactly_the_configured_header(
    env: dict[str, str], serve_app: Callable[[Any], str]
) -> None:
    upstream = Recorder()
    url = serve_app(upstream)
    added = gateway(
        env, "backends", "add", "gpu1", f"{url}/prefix/", "--token-stdin",
        "--auth-header", "X-Api-Key", "--auth-scheme", "",
        stdin=SECRET,
    )  # fmt: skip
    assert added.returncode == 0
    assert gateway(env, "backends", "probe").returncode == 0

    [(path, headers)] = upstream.seen
    assert path == "/prefix/api/tags"
    assert [header for header in headers if SECRET in header[1]] == [("x-api-key", SECRET)]
    assert "authorization" not in dict(headers)


def test_probe_asks_an_openai_backend_for_v1_models(
    env: dict[str, str], simulator_url: str
) -> None:
    ok(env, "backends", "add", "vllm", simulator_url, "--kind", "openai")
    code, results = probe_json(env)
    assert code == 0
    assert (results[0]["status"], results[0]["models"]) == (200, 2)


def test_probe_fails_on_a_closed_port_and_on_an_answer_that_is_not_a_model_list(
    env: dict[str, str], simulator_url: str, serve_app: Callable[[Any], str]
) -> None:
    not_ollama = serve_app(Recorder(body=b"<html>SECRET-UPSTREAM-DETAIL</html>"))
    ok(env, "backends", "add", "good", simulator_url, "--priority", "3")
    ok(env, "backends", "add", "closed", f"http://127.0.0.1:{free_port()}", "--priority", "2")
    ok(env, "backends", "add", "html", not_ollama, "--priority", "1")

    code, results = probe_json(env)
    text = gateway(env, "backends", "probe")

    assert code == text.returncode == 1
    by_name = {r["name"]: (r["ok"], r["status"], r["error"], r["models"]) for r in results}
    assert by_name == {
        "good": (True, 200, None, 2),
        "closed": (False, None, "ConnectionRefusedError", None),
        "html": (False, 200, "UnexpectedAnswer", None),
    }
    assert "SECRET-UPSTREAM-DETAIL" not in text.stdout + text.stderr
    assert text.stderr == "error: 2 of 3 backend(s) failed the probe; " + CHECK_THEM
    assert ok(env, "backends", "probe", "good").splitlines()[1].split()[:5] == [
        "good", "ok", "HTTP", "200,", "2",
    ]  # fmt: skip


def test_probe_gives_up_after_its_timeout(env: dict[str, str]) -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        ok(env, "backends", "add", "silent", f"http://127.0.0.1:{silent.getsockname()[1]}")
        code, [result] = probe_json(env, "--timeout-s", "0.5")
    assert code == 1
    assert (result["ok"], result["status"]) == (False, None)
    assert result["error"] is not None


def test_probe_uses_the_ollama_url_default_when_the_table_is_empty(
    env: dict[str, str], start_simulator: Start
) -> None:
    with start_simulator(required_token=SECRET) as url:
        settings = {**env, "OLLAMA_URL": url, "OLLAMA_AUTH_TOKEN": SECRET}
        code, results = probe_json(settings)
        text = ok(settings, "backends", "probe")
        without_token = gateway({**settings, "OLLAMA_AUTH_TOKEN": ""}, "backends", "probe")

    assert code == 0
    assert [(r["name"], r["ok"], r["source"]) for r in results] == [
        ("default", True, "environment")
    ]
    assert text.splitlines()[1].startswith("default (OLLAMA_URL)  ok")
    assert without_token.returncode == 1
    assert SECRET not in text


def test_probe_skips_disabled_backends_unless_named(
    env: dict[str, str], database_url: str, simulator_url: str
) -> None:
    ok(env, "backends", "add", "gpu1", simulator_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE gateway.backends SET enabled = false")
    assert as_json(env, "backends", "list")[0]["enabled"] is False

    nothing = gateway(env, "backends", "probe")
    assert (nothing.returncode, nothing.stderr) == (
        1,
        "error: no enabled backend to probe; add one with `gateway backends add`\n",
    )
    assert ok(env, "backends", "probe", "gpu1").splitlines()[1].split()[:2] == ["gpu1", "ok"]
    unknown = gateway(env, "backends", "probe", "gpu9")
    assert (unknown.returncode, unknown.stderr) == (
        1,
        "error: no backend named 'gpu9'; " + LIST_THEM,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Bad", "http://gpu1"), "invalid backend name 'Bad'"),
        (("gpu1", "ftp://gpu1"), "use an http:// or https:// URL"),
        (("gpu1", f"http://admin:{SECRET}@gpu1"), "the URL holds an '@'"),
        (("gpu1", f"http://gpu1/?key={SECRET}"), "no query string"),
        (("gpu1", "http://gpu1", "--max-parallel", "0"), "invalid max_parallel 0"),
        (("gpu1", "http://gpu1", "--auth-header", "X-Key"), "need --token-env or --token-stdin"),
        (("gpu1", "http://gpu1", "--token-env", "A", "--token-stdin"), "not both"),
        (("gpu1", "http://gpu1", "--token-env", "NOT-A-NAME"), "invalid token environment"),
        (("gpu1", "http://gpu1", "--token-stdin"), "no token on standard input"),
        (("gpu1", "http://gpu1", "--kind", "vllm"), "Invalid value"),
        (("gpu1", "http://gpu1", "--token", SECRET), "Unknown option: --token"),
    ],
)
def test_invalid_values_exit_2_without_writing(
    env: dict[str, str], database_url: str, args: tuple[str, ...], message: str
) -> None:
    result = gateway(env, "backends", "add", *args, stdin="")
    assert result.returncode == 2
    assert message in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert count(database_url) == 0


def test_a_token_that_cannot_be_a_header_is_refused_without_showing_it(
    env: dict[str, str], database_url: str
) -> None:
    bad = f"{SECRET}\r\nX-Injected: 1"
    result = gateway(env, "backends", "add", "gpu1", "http://gpu1", "--token-stdin", stdin=bad)
    assert result.returncode == 2
    assert "the token is not a usable header value" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert count(database_url) == 0
