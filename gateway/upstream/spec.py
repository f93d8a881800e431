"""A model backend as stored and as the proxy will call it: its checked settings, the exact auth
header it sends, and the one-backend default from `OLLAMA_URL` used while the table is empty."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from gateway.config import Secret, Settings

Kind = Literal["ollama", "openai"]
# Where a backend comes from: the table, or the OLLAMA_URL default while the table is empty.
Source = Literal["database", "environment"]
KINDS: tuple[Kind, ...] = ("ollama", "openai")
DEFAULT_NAME = "default"
DEFAULT_AUTH_HEADER = "Authorization"
DEFAULT_AUTH_SCHEME = "Bearer"
# Where each kind lists its models, relative so that a base URL's path prefix is kept.
LISTING_PATH: dict[Kind, str] = {"ollama": "api/tags", "openai": "v1/models"}

INT_MAX = 2**31 - 1  # the integer columns' range
MAX_TOKEN_CHARS = 4096
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # as the table's check constraint
_HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")
_SCHEME = re.compile(r"[!-~]{0,64}")  # visible ASCII, no spaces; empty sends the bare token
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TOKEN = re.compile(rf"[!-~]{{1,{MAX_TOKEN_CHARS}}}")  # fits a header value, no CR/LF
# Hop-by-hop and framing headers the proxy sets itself; a token in them would be lost or worse.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "x-request-id"}
)


class SpecError(ValueError):
    """A backend setting is not usable; the message names it and never holds a secret."""


class TokenMissing(SpecError):
    """The backend takes its token from an environment variable that is not set here."""


class BackendSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One backend, checked on construction. `token` is a `Secret`: it never shows in a repr.

    `auth_header` / `auth_scheme` are None when the backend takes no token; with a token they
    default to `Authorization` / `Bearer` (an empty scheme sends the bare token).
    """

    name: str
    url: str
    kind: Kind = "ollama"
    auth_header: str | None = None
    auth_scheme: str | None = None
    token_env: str | None = None
    token: Secret | None = None
    priority: int = 0
    max_parallel: int = 8
    enabled: bool = True

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise SpecError(
                f"invalid backend name {self.name!r}: use 1-63 of a-z 0-9 . _ -, starting with a "
                "letter or digit"
            )
        check_url(self.url)
        if self.kind not in KINDS:
            raise SpecError(f"invalid kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.token is not None and self.token_env is not None:
            raise SpecError("give a stored token or a token environment variable, not both")
        if self.token_env is not None and not _ENV_NAME.fullmatch(self.token_env):
            raise SpecError(f"invalid token environment variable name {self.token_env!r}")
        if self.token is not None:
            check_token(self.token, "the token")
        has_token = self.token is not None or self.token_env is not None
        if not has_token and (self.auth_header is not None or self.auth_scheme is not None):
            raise SpecError("an auth header or scheme needs a token (--token-env or --token-stdin)")
        if self.auth_header is not None and not _HEADER.fullmatch(self.auth_header):
            raise SpecError(f"invalid auth header name {self.auth_header!r}: use A-Z a-z 0-9 -")
        if self.auth_header is not None and self.auth_header.lower() in _RESERVED_HEADERS:
            raise SpecError(f"the auth header cannot be {self.auth_header}: the proxy sets it")
        if self.auth_scheme is not None and not _SCHEME.fullmatch(self.auth_scheme):
            raise SpecError("invalid auth scheme: use up to 64 visible characters, no spaces")
        if not -INT_MAX - 1 <= self.priority <= INT_MAX:
            raise SpecError(f"invalid priority {self.priority}: out of range")
        if not 1 <= self.max_parallel <= INT_MAX:
            raise SpecError(f"invalid max_parallel {self.max_parallel}: use a whole number >= 1")

    @property
    def base_url(self) -> str:
        """The URL ending in `/`, so that a relative path (`LISTING_PATH`) keeps its prefix."""
        return self.url.rstrip("/") + "/"


def check_url(url: str) -> str:
    """The URL if it is usable as a backend base; `SpecError` otherwise.

    The message never repeats a URL that embeds credentials: it would leak them.
    """
    if not url.isprintable() or any(char.isspace() for char in url):
        raise SpecError("invalid URL: it holds whitespace or control characters")
    # Any '@', not just a parsed userinfo: a password holding '/' or '?' splits differently.
    if "@" in url:
        raise SpecError(
            "the URL holds an '@', as credentials do (user:password@host), which would show in "
            "every listing; give the token with --token-env or --token-stdin instead"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SpecError("invalid URL: it cannot be parsed (check the host and port)") from None
    if parts.query or parts.fragment or "?" in url or "#" in url:
        # A query string is where URLs carry API keys; it would show in listings too.
        raise SpecError("invalid URL: no query string or fragment, only a base URL")
    if parts.scheme not in ("http", "https"):
        raise SpecError(f"invalid URL {url!r}: use an http:// or https:// URL")
    if not parts.hostname:
        raise SpecError(f"invalid URL {url!r}: it names no host")
    if port == 0:
        raise SpecError(f"invalid URL {url!r}: port 0")
    return url


def check_token(token: Secret, what: str) -> None:
    if not _TOKEN.fullmatch(token.reveal()):
        raise SpecError(
            f"{what} is not a usable header value: use 1-{MAX_TOKEN_CHARS} visible ASCII "
            "characters, no spaces"
        )


def auth_headers(spec: BackendSpec, environ: Mapping[str, str]) -> list[tuple[str, Secret]]:
    """The exact auth header (name, value) the proxy sends to this backend; none without a token.

    A `token_env` that is unset or empty in `environ` raises `TokenMissing`, naming the
    variable only.
    """
    token = spec.token
    if spec.token_env is not None:
        value = environ.get(spec.token_env, "")
        if not value:
            raise TokenMissing(f"the token variable {spec.token_env} is not set")
        token = Secret(value)
        check_token(token, f"the token in {spec.token_env}")
    if token is None:
        return []
    header = spec.auth_header if spec.auth_header is not None else DEFAULT_AUTH_HEADER
    scheme = spec.auth_scheme if spec.auth_scheme is not None else DEFAULT_AUTH_SCHEME
    value = f"{scheme} {token.reveal()}" if scheme else token.reveal()
    return [(header, Secret(value))]


def default_spec(settings: Settings) -> BackendSpec:
    """`OLLAMA_URL` and `OLLAMA_AUTH_*` as one backend named `default`: what serves while the
    backends table is empty."""
    token = settings.ollama_auth_token
    try:
        return BackendSpec(
            name=DEFAULT_NAME,
            url=settings.ollama_url,
            kind="ollama",
            auth_header=settings.ollama_auth_header if token is not None else None,
            auth_scheme=settings.ollama_auth_scheme if token is not None else None,
            token=token,
            max_parallel=settings.ollama_max_connections,
        )
    except SpecError as exc:
        raise SpecError(f"OLLAMA_URL / OLLAMA_AUTH_*: {exc}") from None
