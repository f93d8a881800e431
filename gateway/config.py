"""Settings read once from the environment, validated at boot, secrets redacted in every repr."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from gateway.clientip import TrustedProxies

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
KeyPrefix = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9]{0,15}$")]
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,64}$")]


class ConfigError(Exception):
    """The environment cannot start a gateway; the message names the variable."""


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _field(env: str, default: Any) -> Any:
    return msgspec.field(default=default, name=env)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every knob of the gateway; each field is named after its environment variable."""

    bind_host: str = _field("GATEWAY_BIND_HOST", "0.0.0.0")  # noqa: S104 - a gateway listens on the network
    bind_port: Port = _field("GATEWAY_BIND_PORT", 8080)
    workers: Positive = _field("GATEWAY_WORKERS", 1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _field("GATEWAY_LOG_LEVEL", "INFO")
    log_format: Literal["json", "text"] = _field("GATEWAY_LOG_FORMAT", "json")
    request_id_header: HeaderName = _field("GATEWAY_REQUEST_ID_HEADER", "X-Request-ID")
    trusted_proxies: tuple[str, ...] = _field("GATEWAY_TRUSTED_PROXIES", ("127.0.0.1",))
    key_prefix: KeyPrefix = _field("GATEWAY_KEY_PREFIX", "gw")

    ollama_url: str = _field("OLLAMA_URL", "http://ollama:11434")
    ollama_connect_timeout_s: Seconds = _field("OLLAMA_CONNECT_TIMEOUT_S", 5.0)
    ollama_read_timeout_s: Seconds = _field("OLLAMA_READ_TIMEOUT_S", 600.0)
    ollama_max_connections: Positive = _field("OLLAMA_MAX_CONNECTIONS", 64)
    ollama_auth_token: Secret | None = _field("OLLAMA_AUTH_TOKEN", None)
    ollama_auth_header: HeaderName = _field("OLLAMA_AUTH_HEADER", "Authorization")
    ollama_auth_scheme: str = _field("OLLAMA_AUTH_SCHEME", "Bearer")
    backend_queue_size: NonNegative = _field("BACKEND_QUEUE_SIZE", 256)
    backend_queue_timeout_s: Seconds = _field("BACKEND_QUEUE_TIMEOUT_S", 30.0)
    breaker_failures: Positive = _field("BREAKER_FAILURES", 5)
    breaker_open_s: Seconds = _field("BREAKER_OPEN_S", 10.0)
    model_discovery_refresh_s: Seconds = _field("MODEL_DISCOVERY_REFRESH_S", 60.0)
    model_discovery_cache_ttl_s: Seconds = _field("MODEL_DISCOVERY_CACHE_TTL_S", 120.0)

    database_url: Secret = _field("DATABASE_URL", Secret(""))
    database_pool_size: Positive = _field("DATABASE_POOL_SIZE", 10)
    database_timeout_s: Seconds = _field("DATABASE_TIMEOUT_S", 5.0)
    redis_url: Secret = _field("REDIS_URL", Secret(""))
    redis_key_prefix: str = _field("REDIS_KEY_PREFIX", "gw")
    redis_timeout_s: Seconds = _field("REDIS_TIMEOUT_S", 2.0)
    redis_max_connections: Positive = _field("REDIS_MAX_CONNECTIONS", 64)
    redis_key_cache_ttl_s: Positive = _field("REDIS_KEY_CACHE_TTL_S", 60)
    local_key_cache_ttl_s: Seconds = _field("LOCAL_KEY_CACHE_TTL_S", 10.0)
    local_key_cache_size: Positive = _field("LOCAL_KEY_CACHE_SIZE", 10_000)

    default_rpm: NonNegative = _field("DEFAULT_RPM", 60)
    default_tpm: NonNegative = _field("DEFAULT_TPM", 100_000)
    default_concurrent: NonNegative = _field("DEFAULT_CONCURRENT", 8)
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=3)] = _field("LEASE_TTL_S", 30.0)
    ledger_flush_interval_s: Seconds = _field("LEDGER_FLUSH_INTERVAL_S", 0.5)
    max_request_body_bytes: Positive = _field("MAX_REQUEST_BODY_BYTES", 262_144)
    max_num_predict: Positive = _field("MAX_NUM_PREDICT", 4096)
    # Slow and greedy clients, per worker process (server.py hands the first two to hypercorn).
    client_header_timeout_s: Seconds = _field("CLIENT_HEADER_TIMEOUT_S", 10.0)
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = _field("MAX_HEADER_BYTES", 16_384)
    client_body_timeout_s: Seconds = _field("CLIENT_BODY_TIMEOUT_S", 30.0)
    max_concurrent_requests: Positive = _field("GATEWAY_MAX_CONCURRENT_REQUESTS", 512)

    argon2_time_cost: Positive = _field("ARGON2_TIME_COST", 3)
    argon2_memory_cost_kib: Annotated[int, msgspec.Meta(ge=8)] = _field(
        "ARGON2_MEMORY_COST_KIB", 65_536
    )
    argon2_parallelism: Positive = _field("ARGON2_PARALLELISM", 4)
    argon2_max_concurrent_verifies: Positive = _field("ARGON2_MAX_CONCURRENT_VERIFIES", 2)
    auth_failure_rate_limit_per_ip_per_min: NonNegative = _field(
        "AUTH_FAILURE_RATE_LIMIT_PER_IP_PER_MIN", 20
    )

    audit_buffer_size: Positive = _field("AUDIT_BUFFER_SIZE", 1000)
    prompt_log_default_retention_days: Positive = _field("PROMPT_LOG_DEFAULT_RETENTION_DAYS", 30)
    audit_log_default_retention_days: Positive = _field("AUDIT_LOG_DEFAULT_RETENTION_DAYS", 365)
    audit_flush_interval_s: Seconds = _field("AUDIT_FLUSH_INTERVAL_S", 0.5)
    retention_sweep_interval_s: Seconds = _field("RETENTION_SWEEP_INTERVAL_S", 3600.0)
    shutdown_grace_s: Seconds = _field("SHUTDOWN_GRACE_S", 30.0)
    # The browser page at /playground (docs/PLAYGROUND.md); off unless an operator turns it on.
    playground_enabled: bool = _field("PLAYGROUND_ENABLED", False)

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^\s/]+", self.ollama_url):
            raise ValueError("OLLAMA_URL must be an http:// or https:// URL")
        try:
            TrustedProxies(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"GATEWAY_TRUSTED_PROXIES: {exc}") from None


# Names the earlier system used, still honoured so its operators' .env files keep working.
_ALIASES = {"OLLAMA_BASE_URL": "OLLAMA_URL"}
_ENV_NAMES = frozenset(field.encode_name for field in msgspec.structs.fields(Settings))
_REQUIRED = ("DATABASE_URL", "REDIS_URL")


def _decode_custom(kind: type, value: Any) -> Any:
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    raise NotImplementedError


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def load_settings(environ: Mapping[str, str], *, require_stores: bool = True) -> Settings:
    """Build Settings from an environment mapping; `ConfigError` names the offending variable."""
    raw: dict[str, Any] = {}
    for alias, name in _ALIASES.items():
        if alias in environ and name not in environ:
            raw[name] = environ[alias]
    raw.update({name: value for name, value in environ.items() if name in _ENV_NAMES})
    if "GATEWAY_TRUSTED_PROXIES" in raw:
        raw["GATEWAY_TRUSTED_PROXIES"] = _split_list(raw["GATEWAY_TRUSTED_PROXIES"])
    # An empty value means "not set" for the optional secret, as in most .env tooling.
    if raw.get("OLLAMA_AUTH_TOKEN") == "":
        del raw["OLLAMA_AUTH_TOKEN"]
    if require_stores:
        missing = [name for name in _REQUIRED if not raw.get(name)]
        if missing:
            raise ConfigError(f"{', '.join(missing)}: required but not set")
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_custom)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc))) from None


def _explain(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.GATEWAY_BIND_PORT`"; lead with the variable.
    match = re.search(r" - at `\$\.([A-Z0-9_]+)(?:\[\d+\])?`$", message)
    if match is None:
        return message
    return f"{match.group(1)}: {message[: match.start()]}"
