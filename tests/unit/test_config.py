"""Settings: every knob from the environment, errors that name the variable, secrets hidden."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Secret, load_settings

STORES = {"DATABASE_URL": "postgresql://gw:hunter2@db/gw", "REDIS_URL": "redis://:pw@cache/0"}


def test_defaults_match_the_documented_knobs() -> None:
    settings = load_settings(STORES)
    assert (settings.bind_host, settings.bind_port) == ("0.0.0.0", 8080)
    assert settings.request_id_header == "X-Request-ID"
    assert settings.trusted_proxies == ("127.0.0.1",)
    assert (settings.default_rpm, settings.default_tpm, settings.default_concurrent) == (
        60,
        100_000,
        8,
    )
    assert settings.max_request_body_bytes == 262_144
    assert settings.max_num_predict == 4096
    assert (settings.argon2_time_cost, settings.argon2_memory_cost_kib) == (3, 65_536)
    assert settings.auth_failure_rate_limit_per_ip_per_min == 20
    assert settings.audit_buffer_size == 1000


def test_values_are_converted_from_strings() -> None:
    settings = load_settings(
        {
            **STORES,
            "GATEWAY_BIND_PORT": "9000",
            "OLLAMA_READ_TIMEOUT_S": "12.5",
            "GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
        }
    )
    assert settings.bind_port == 9000
    assert settings.ollama_read_timeout_s == 12.5
    assert settings.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")


def test_the_earlier_systems_backend_variable_still_works() -> None:
    assert load_settings({**STORES, "OLLAMA_BASE_URL": "http://gpu:11434"}).ollama_url == (
        "http://gpu:11434"
    )
    both = {**STORES, "OLLAMA_BASE_URL": "http://old:1", "OLLAMA_URL": "http://new:2"}
    assert load_settings(both).ollama_url == "http://new:2"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_BIND_PORT", "eighty"),
        ("GATEWAY_BIND_PORT", "70000"),
        ("MAX_REQUEST_BODY_BYTES", "0"),
        ("GATEWAY_LOG_LEVEL", "LOUD"),
        ("GATEWAY_KEY_PREFIX", "Not_Ok"),
        ("OLLAMA_CONNECT_TIMEOUT_S", "-1"),
    ],
)
def test_an_invalid_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        load_settings({**STORES, variable: value})


def test_a_backend_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="OLLAMA_URL"):
        load_settings({**STORES, "OLLAMA_URL": "file:///etc/passwd"})


def test_missing_stores_are_named() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL, REDIS_URL: required"):
        load_settings({})
    assert load_settings({}, require_stores=False).database_url.reveal() == ""


def test_secrets_never_show_in_repr() -> None:
    settings = load_settings({**STORES, "OLLAMA_AUTH_TOKEN": "tok-SECRET"})
    text = repr(settings) + str(settings.database_url)
    assert "hunter2" not in text
    assert "tok-SECRET" not in text
    assert ":pw@" not in text
    assert settings.ollama_auth_token == Secret("tok-SECRET")
    assert settings.ollama_auth_token is not None
    assert settings.ollama_auth_token.reveal() == "tok-SECRET"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert Secret("a") != "a"


def test_an_empty_backend_token_means_none() -> None:
    assert load_settings({**STORES, "OLLAMA_AUTH_TOKEN": ""}).ollama_auth_token is None
