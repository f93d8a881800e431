"""Running the real `gateway` CLI in a subprocess, as an operator or a script would."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import msgspec

from tests.integration.quota_support import FAST_ARGON2


def gateway(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`gateway ARGS...` with `env` on top of this process's environment (minus its stores)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**clean, **FAST_ARGON2, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr
    return result


def ok(env: dict[str, str], *args: str) -> str:
    result = gateway(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(env: dict[str, str], *args: str) -> Any:
    return msgspec.json.decode(ok(env, *args, "--json"))
