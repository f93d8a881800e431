"""No secret ever leaks: every API key and backend token the tests make is recorded, every log
record, CLI output, gateway subprocess output and OTLP export is kept, and the run fails at the
end, naming the place and a count (never the secret), when any of them holds a recorded secret.

Registered from tests/conftest.py. Helpers reach the one watch of the run through `WATCH`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pytest

import gateway.keys

SECRET_LENGTH = gateway.keys.SECRET_LENGTH
# A whole key as `keys create` / `keys rotate` hand it out: prefix, 12-char id, 32-char secret.
HANDED_OUT_KEY = re.compile(r"\b[a-z][a-z0-9]{0,15}_[A-Za-z0-9]{44}\b")
# Where a key's secret part can sit: inside a run of at least that many letters and digits.
ALNUM_RUN = re.compile(rf"[A-Za-z0-9]{{{SECRET_LENGTH},}}")
# Shorter recorded values would match by chance; tests use longer tokens than this.
MIN_TOKEN_LENGTH = 8
SECRET_ENV = re.compile(r"(TOKEN|PASSWORD|SECRET)$")
# Attributes every LogRecord has; anything else came in through `extra=` and is scanned too.
RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@dataclass(frozen=True)
class Leak:
    place: str
    count: int  # occurrences of recorded secrets there


@dataclass
class SecretWatch:
    """The secrets recorded so far and the outputs to scan for them at the end of the run."""

    key_secrets: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    texts: list[tuple[str, str, frozenset[str]]] = field(default_factory=list)
    files: list[tuple[str, Path, IO[bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _outputs: Path | None = None

    def record_key(self, full_key: str) -> None:
        with self.lock:
            self.key_secrets.add(full_key[-SECRET_LENGTH:])

    def record_token(self, token: str | None) -> None:
        if token and len(token.strip()) >= MIN_TOKEN_LENGTH:
            with self.lock:
                self.tokens.add(token.strip())

    def record_env(self, env: Mapping[str, str]) -> None:
        """Backend tokens and passwords among settings: *_TOKEN, *PASSWORD, *SECRET."""
        for name, value in env.items():
            if SECRET_ENV.search(name):
                self.record_token(value)

    def record_url_password(self, url: str | None) -> None:
        if url:
            self.record_token(urlsplit(url).password)

    def record_handout(self, output: str) -> frozenset[str]:
        """The keys an operator is handed in `output`: recorded, and allowed there only."""
        issued = frozenset(key[-SECRET_LENGTH:] for key in HANDED_OUT_KEY.findall(output))
        with self.lock:
            self.key_secrets.update(issued)
        return issued

    def see(self, place: str, text: str, *, allowed: Iterable[str] = ()) -> None:
        """Keep `text` (a log line, an output) to be scanned; `allowed` secrets may be in it."""
        if text:
            with self.lock:
                self.texts.append((f"{current_test()}{place}", text, frozenset(allowed)))

    def output_file(self, name: str) -> IO[bytes]:
        """A file for a subprocess's stdout/stderr, scanned at the end (instead of DEVNULL)."""
        with self.lock:
            if self._outputs is None:
                self._outputs = Path(tempfile.mkdtemp(prefix="gateway-secret-watch-"))
            safe_name = re.sub(r"[^\w.-]", "_", name)
            path = self._outputs / f"{len(self.files):05d}-{safe_name}.log"
            handle = path.open("wb")
            self.files.append((f"{current_test()}{name} output", path, handle))
        return handle

    def leaks(self) -> list[Leak]:
        with self.lock:
            texts = list(self.texts)
            for place, path, handle in self.files:
                handle.close()
                texts.append((place, path.read_text(errors="replace"), frozenset()))
            key_secrets, tokens = frozenset(self.key_secrets), frozenset(self.tokens)
        found = []
        for place, text, allowed in texts:
            count = count_secrets(text, key_secrets - allowed, tokens - allowed)
            if count:
                found.append(Leak(place, count))
        return found

    def close(self) -> None:
        with self.lock:
            for _, path, handle in self.files:
                handle.close()
                path.unlink(missing_ok=True)
            if self._outputs is not None:
                os.rmdir(self._outputs)


def count_secrets(text: str, key_secrets: frozenset[str], tokens: frozenset[str]) -> int:
    """How many times recorded secrets occur in `text`: keys by their 32-char secret part (so a
    key found whole or in part counts), tokens as they are."""
    count = sum(text.count(token) for token in tokens)
    if key_secrets:
        for run in ALNUM_RUN.finditer(text):
            chars = run.group()
            count += sum(
                chars[i : i + SECRET_LENGTH] in key_secrets
                for i in range(len(chars) - SECRET_LENGTH + 1)
            )
    return count


def current_test() -> str:
    name = os.environ.get("PYTEST_CURRENT_TEST", "")
    return f"{name.rsplit(' ', 1)[0]}: " if name else ""


def log_text(record: logging.LogRecord) -> str:
    """All a handler could write of a record: message, exception, stack and `extra` fields."""
    try:
        parts = [record.getMessage()]
    except Exception:  # a bad format string is the logging call's bug, not ours to raise here
        parts = [str(record.msg), repr(record.args)]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(record.exc_info[1])))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    parts.extend(f"{k}={v!r}" for k, v in vars(record).items() if k not in RECORD_FIELDS)
    return "\n".join(parts)


class WatchHandler(logging.Handler):
    """On the root logger for the whole run: keeps the text of every record that reaches it."""

    def __init__(self, watch: SecretWatch) -> None:
        super().__init__(level=logging.NOTSET)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        self.watch.see(f"log {record.name}", log_text(record))


# The one watch of the run: plain helpers (cli_support.gateway, the OTLP sink) have no fixture
# to ask, and every key must be recorded from the moment the first test module imports.
WATCH = SecretWatch()
_generate_key = gateway.keys.generate_key


def _recording_generate_key(prefix: str) -> gateway.keys.IssuedKey:
    issued = _generate_key(prefix)
    WATCH.record_key(issued.full_key)
    return issued


# Installed on import, before any test module binds the name (`from gateway.keys import ...`).
gateway.keys.generate_key = _recording_generate_key

_handler = WatchHandler(WATCH)
LEAKS = pytest.StashKey[list[Leak]]()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(_handler)
    for variable in ("GATEWAY_TEST_DATABASE_URL", "GATEWAY_TEST_REDIS_URL"):
        WATCH.record_url_password(os.environ.get(variable))


def pytest_collection_finish(session: pytest.Session) -> None:
    """A module that bound generate_key before the watch was installed would go unrecorded."""
    import sys

    stale = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith(("tests.", "gateway."))
        and name not in ("gateway.keys", "gateway.cli_keys")  # the CLI runs as a subprocess
        and getattr(module, "generate_key", _recording_generate_key) is _generate_key
    ]
    if stale:
        raise pytest.UsageError(f"secret watch: generate_key bound before the watch in {stale}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.getLogger().removeHandler(_handler)
    found = session.config.stash[LEAKS] = WATCH.leaks()
    WATCH.close()
    if found and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    found = config.stash.get(LEAKS, [])
    if not found:
        # The evidence that the watch looked: what it held and what it read.
        terminalreporter.write_line(
            f"secret watch: {len(WATCH.key_secrets)} keys and {len(WATCH.tokens)} tokens recorded,"
            f" {len(WATCH.texts)} texts and {len(WATCH.files)} output files scanned, no leak"
        )
        return
    total = sum(leak.count for leak in found)
    terminalreporter.section("secret watch: secrets leaked", sep="=", red=True, bold=True)
    terminalreporter.line(f"{total} occurrence(s) of recorded secrets in {len(found)} place(s):")
    for leak in found:
        terminalreporter.line(f"  {leak.place} ({leak.count})")
