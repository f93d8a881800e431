"""Integration tests talk to asyncio-only drivers, and most want one gateway environment."""

from __future__ import annotations

import pytest

from tests.integration.quota_support import FAST_ARGON2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str, simulator_url: str) -> dict[str, str]:
    """Settings for a gateway on this test's database, Redis prefix and simulator."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": redis_prefix,
        "OLLAMA_URL": simulator_url,
        **FAST_ARGON2,
    }
