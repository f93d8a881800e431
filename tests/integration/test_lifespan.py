"""What start-up does to the process that serves, besides building the services."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import GIL_SWITCH_INTERVAL_S
from gateway.config import load_settings
from tests.integration.served import serve_gateway

pytestmark = pytest.mark.anyio


@pytest.fixture
def process_tuning() -> Iterator[None]:
    """Put back what the served gateway changes, for the tests that run after this one."""
    interval_s = sys.getswitchinterval()
    try:
        yield
    finally:
        sys.setswitchinterval(interval_s)
        gc.unfreeze()


@pytest.mark.usefixtures("process_tuning")
async def test_startup_freezes_what_it_built_and_shortens_the_gil_switch_interval(
    env: dict[str, str],
) -> None:
    gc.unfreeze()
    sys.setswitchinterval(0.005)
    with serve_gateway(load_settings(env)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200
        # Python's default is 5 ms: a telemetry thread could keep the event loop waiting that long.
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
        assert GIL_SWITCH_INTERVAL_S < 0.001
        assert gc.get_freeze_count() > 0
