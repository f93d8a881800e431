"""A backend spec: what URLs and settings it accepts, the exact auth header it sends, the
`OLLAMA_URL` default, and that its token never shows."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Secret, load_settings
from gateway.upstream.spec import (
    BackendSpec,
    SpecError,
    TokenMissing,
    auth_headers,
    check_url,
    default_spec,
)

TOKEN = "tok-4f1c9e2b7a"
visible = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64)
# Secrets that cannot occur by chance in a message or a repr, so "absent" means "not leaked".
secrets = visible.map(lambda text: f"Zq9{text}")
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
paths = st.from_regex(r"(/[a-z0-9._~-]{0,10}){0,3}", fullmatch=True)


def spec(**fields: Any) -> BackendSpec:
    return BackendSpec(**{"name": "gpu1", "url": "http://gpu1:11434", **fields})


def revealed(headers: list[tuple[str, Secret]]) -> list[tuple[str, str]]:
    return [(name, value.reveal()) for name, value in headers]


def test_a_stored_token_goes_in_authorization_as_a_bearer_by_default() -> None:
    assert revealed(auth_headers(spec(token=Secret(TOKEN)), {})) == [
        ("Authorization", f"Bearer {TOKEN}")
    ]


def test_an_empty_scheme_sends_the_bare_token_in_the_chosen_header() -> None:
    chosen = spec(auth_header="X-Api-Key", auth_scheme="", token=Secret(TOKEN))
    assert revealed(auth_headers(chosen, {})) == [("X-Api-Key", TOKEN)]


def test_no_token_means_no_auth_header() -> None:
    assert auth_headers(spec(), {"ANYTHING": TOKEN}) == []


def test_a_token_env_is_read_from_the_environment_given() -> None:
    from_env = spec(token_env="GPU1_TOKEN", auth_scheme="Key")
    assert revealed(auth_headers(from_env, {"GPU1_TOKEN": TOKEN})) == [
        ("Authorization", f"Key {TOKEN}")
    ]


@pytest.mark.parametrize("environ", [{}, {"GPU1_TOKEN": ""}])
def test_an_unset_token_env_is_an_error_naming_the_variable(environ: dict[str, str]) -> None:
    with pytest.raises(TokenMissing, match="GPU1_TOKEN is not set"):
        auth_headers(spec(token_env="GPU1_TOKEN"), environ)


def test_a_token_env_holding_no_header_value_is_refused_without_showing_it() -> None:
    with pytest.raises(SpecError) as refused:
        auth_headers(spec(token_env="T"), {"T": f"{TOKEN}\r\nX-Evil: 1"})
    assert TOKEN not in str(refused.value)
    assert "T is not a usable header value" in str(refused.value)


@given(token=visible, scheme=st.from_regex(r"[!-~]{0,16}", fullmatch=True))
def test_the_header_value_is_the_scheme_and_the_token(token: str, scheme: str) -> None:
    headers = auth_headers(spec(auth_scheme=scheme, token=Secret(token)), {})
    assert revealed(headers) == [("Authorization", f"{scheme} {token}" if scheme else token)]


@given(token=secrets)
def test_the_token_never_shows_in_a_repr(token: str) -> None:
    stored = spec(token=Secret(token))
    assert token not in repr(stored)
    assert token not in str(auth_headers(stored, {}))
    with pytest.raises(TypeError):
        msgspec.json.encode(stored)  # no encoder for a Secret: a spec cannot be dumped whole


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=hosts,
    port=st.none() | st.integers(1, 65535),
    path=paths,
)
def test_http_urls_with_a_host_are_accepted(
    scheme: str, host: str, port: int | None, path: str
) -> None:
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
    assert check_url(url) == url
    assert spec(url=url).base_url == url.rstrip("/") + "/"


@given(user=secrets, password=secrets)
def test_a_url_with_credentials_is_refused_without_repeating_them(user: str, password: str) -> None:
    with pytest.raises(SpecError) as refused:
        check_url(f"http://{user}:{password}@gpu1:11434")
    assert password not in str(refused.value)
    assert user not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://gpu1", "http:// or https://"),
        ("gpu1:11434", "http:// or https://"),
        ("http://", "no host"),
        ("http:///api", "no host"),
        ("http://gpu1:99999", "cannot be parsed"),
        ("http://gpu1:0", "port 0"),
        ("http://gpu1/?key=abc", "no query string"),
        ("ftp://gpu1/?key=abc", "no query string"),
        ("http://gpu1/#x", "no query string"),
        ("http://gpu 1", "whitespace"),
        ("http://gpu1/\n", "whitespace"),
        ("http://token@gpu1", "holds an .@."),
    ],
)
def test_unusable_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(SpecError, match=why):
        check_url(url)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"name": "GPU"}, "invalid backend name"),
        ({"name": "-gpu"}, "invalid backend name"),
        ({"name": "g" * 64}, "invalid backend name"),
        ({"kind": "vllm"}, "invalid kind"),
        ({"token": Secret("a"), "token_env": "A"}, "not both"),
        ({"token_env": "1A"}, "invalid token environment variable"),
        ({"auth_header": "X-Api-Key"}, "needs a token"),
        ({"auth_scheme": "Bearer"}, "needs a token"),
        ({"token_env": "A", "auth_header": "X Api"}, "invalid auth header"),
        ({"token_env": "A", "auth_header": "Host"}, "the proxy sets it"),
        ({"token_env": "A", "auth_scheme": "Be arer"}, "invalid auth scheme"),
        ({"token": Secret("has space")}, "not a usable header value"),
        ({"token": Secret("")}, "not a usable header value"),
        ({"max_parallel": 0}, "invalid max_parallel"),
        ({"priority": 2**31}, "out of range"),
    ],
)
def test_unusable_settings_are_refused(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(SpecError, match=why):
        spec(**fields)


def test_the_default_backend_is_ollama_url_with_its_auth_settings() -> None:
    settings = load_settings(
        {
            "OLLAMA_URL": "https://ollama.internal:8443",
            "OLLAMA_AUTH_TOKEN": TOKEN,
            "OLLAMA_AUTH_HEADER": "X-Api-Key",
            "OLLAMA_AUTH_SCHEME": "",
            "OLLAMA_MAX_CONNECTIONS": "16",
        },
        require_stores=False,
    )
    default = default_spec(settings)
    assert (default.name, default.url, default.kind, default.max_parallel) == (
        "default",
        "https://ollama.internal:8443",
        "ollama",
        16,
    )
    assert revealed(auth_headers(default, {})) == [("X-Api-Key", TOKEN)]


def test_the_default_backend_without_a_token_sends_no_auth() -> None:
    default = default_spec(
        load_settings({"OLLAMA_URL": "http://ollama:11434"}, require_stores=False)
    )
    assert (default.auth_header, default.auth_scheme, auth_headers(default, {})) == (None, None, [])


def test_a_default_url_with_credentials_is_refused_naming_the_variable_not_the_password() -> None:
    settings = load_settings({"OLLAMA_URL": f"http://admin:{TOKEN}@ollama"}, require_stores=False)
    with pytest.raises(SpecError, match="OLLAMA_URL") as refused:
        default_spec(settings)
    assert TOKEN not in str(refused.value)
