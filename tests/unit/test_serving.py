"""The idle deadline a connection keeps between requests, and the worker's swap of hypercorn's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import hypercorn.asyncio.run
import pytest
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import TCPServer

from gateway.app import Gateway
from gateway.serving import Connection, IdleDeadline, use_gateway_connections, worker_app

DELAY_S = 0.05
# Long enough for a deadline of DELAY_S to have passed several times over.
WAIT_S = 0.3


async def _run(scenario: str) -> list[str]:
    """Drive an IdleDeadline through scenario on a real loop; which actions started, in order."""
    loop = asyncio.get_running_loop()
    started: list[str] = []

    def action(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            started.append(name)

        return run

    async with TaskGroup(loop) as group:
        deadline = IdleDeadline(loop, DELAY_S)
        if scenario == "restarted":
            await deadline.restart(group, action("first"))
            await deadline.restart(group, action("second"))
        elif scenario == "stopped":
            await deadline.restart(group, action("first"))
            await deadline.stop()
        elif scenario == "expired now":
            await deadline.restart(group, action("first"))
            deadline.expire()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            started.append("in the same turn" if started else "not yet")
        elif scenario == "expired while busy":
            await deadline.restart(group, action("first"))
            await deadline.stop()
            deadline.expire()
        await asyncio.sleep(WAIT_S)
    return started


def test_a_restart_replaces_the_deadline_and_its_action() -> None:
    assert asyncio.run(_run("restarted")) == ["second"]


def test_a_stopped_deadline_starts_nothing() -> None:
    assert asyncio.run(_run("stopped")) == []


def test_expiring_an_idle_deadline_starts_its_action_at_once_and_only_once() -> None:
    assert asyncio.run(_run("expired now")) == ["first", "in the same turn"]


def test_expiring_a_stopped_deadline_starts_nothing() -> None:
    assert asyncio.run(_run("expired while busy")) == []


def test_the_worker_serves_its_connections_with_the_gateways_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Hypercorn's own class, as a fresh worker process finds it (the suite swapped it already).
    monkeypatch.setattr(hypercorn.asyncio.run, "TCPServer", TCPServer)
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/none")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")
    assert isinstance(worker_app(), Gateway)
    assert hypercorn.asyncio.run.TCPServer is Connection  # type: ignore[attr-defined] # not re-exported, but there
    use_gateway_connections()  # again: nothing changes
    assert hypercorn.asyncio.run.TCPServer is Connection  # type: ignore[attr-defined] # not re-exported, but there
