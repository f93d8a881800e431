"""A key's life through the CLI: rotation with a grace, the prompt-log switch, expiry, and
revocation measured across three gateway processes."""

from __future__ import annotations

import time
from datetime import datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import httpx
import msgspec
import pytest

from tests.integration.cli_support import as_json, gateway, key_id, ok, stored
from tests.integration.quota_support import CHAT, bearer, running_gateway
from tests.integration.test_admission import gateway_processes

pytestmark = pytest.mark.anyio

REVOCATION_BOUND_S = 1.0


def new_key(env: dict[str, str], *extra: str) -> dict[str, Any]:
    """A key (as `keys create --json` shows it) of tenant acme, which may use every model."""
    if gateway(env, "tenants", "list", "--json").stdout.strip() == "[]":
        ok(env, "tenants", "create", "acme", "--allow-all-models")
    created: dict[str, Any] = as_json(
        env, "keys", "create", "--tenant", "acme", "--name", "app", *extra
    )
    return created


async def status(client: httpx.AsyncClient, key: str) -> int:
    return (await client.get("/v1/me", headers=bearer(key))).status_code


async def until_status(client: httpx.AsyncClient, key: str, wanted: int, within_s: float) -> None:
    """Change notices reach the gateway asynchronously: wait for them, but not forever."""
    deadline = time.monotonic() + within_s
    while (got := await status(client, key)) != wanted:
        assert time.monotonic() < deadline, f"still {got}, wanted {wanted}"
        await anyio.sleep(0.02)


async def test_a_rotated_out_secret_works_for_its_grace_only_even_if_cached(
    env: dict[str, str],
) -> None:
    old = new_key(env)
    async with running_gateway(env) as (_, client):
        assert await status(client, old["key"]) == 200  # cached here and in Redis, no expiry
        result = gateway(env, "keys", "rotate", old["prefix"], "--grace", "2s", "--json")
        assert result.returncode == 0, result.stderr
        assert old["key"] not in result.stdout + result.stderr
        rotated = msgspec.json.decode(result.stdout)
        new = rotated["key"]
        assert new.startswith(old["prefix"])
        assert new != old["key"]
        grace_end = datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert await status(client, new) == 200
        assert await status(client, old["key"]) == 200
        await anyio.sleep(max(0.0, grace_end.timestamp() - time.time()) + 0.1)
        assert await status(client, old["key"]) == 401
        assert await status(client, new) == 200
        chat = await client.post("/api/chat", json=CHAT, headers=bearer(new))
        assert chat.status_code == 200


async def test_rotation_without_grace_ends_the_old_secret_and_a_revoked_key_cannot_rotate(
    env: dict[str, str],
) -> None:
    old = new_key(env)
    async with running_gateway(env) as (_, client):
        assert await status(client, old["key"]) == 200
        shown = ok(env, "keys", "rotate", old["prefix"], "--grace", "0")
        assert old["key"] not in shown
        lines = shown.strip().splitlines()
        assert lines[0] == f"rotated key 'app' of tenant 'acme' ({old['prefix']})"
        assert "the old secret stopped working now" in lines
        new = lines[-1]
        assert new.startswith(old["prefix"])
        await until_status(client, old["key"], 401, within_s=1.0)
        assert await status(client, new) == 200
    assert stored(
        env["DATABASE_URL"],
        "SELECT previous_secret_hash, previous_secret_expires_at FROM gateway.api_keys "
        "WHERE id = %s",
        key_id(old["prefix"]),
    ) == (None, None)
    again = ok(env, "keys", "rotate", old["prefix"], "--grace", "30m")
    assert "the old secret keeps working until" in again
    assert new not in again
    assert "rotated out before" not in again
    # A second rotation within the grace ends the first one's grace, and says so.
    third = ok(env, "keys", "rotate", old["prefix"], "--grace", "30m")
    assert "the secret rotated out before this one stopped working now" in third
    hash_before = stored(
        env["DATABASE_URL"],
        "SELECT secret_hash FROM gateway.api_keys WHERE id = %s",
        key_id(old["prefix"]),
    )
    ok(env, "keys", "revoke", old["prefix"])
    refused = gateway(env, "keys", "rotate", old["prefix"])
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.strip() == (
        f"error: key {old['prefix']} is revoked and cannot be rotated; create a new key"
    )
    assert hash_before == stored(
        env["DATABASE_URL"],
        "SELECT secret_hash FROM gateway.api_keys WHERE id = %s",
        key_id(old["prefix"]),
    )
    missing = gateway(env, "keys", "rotate", "gw_AAAAAAAAAAAA")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "error: no key with prefix 'gw_AAAAAAAAAAAA'; list them with `gateway keys list`",
    )
    for grace in ("soon", "-1s", "1.5h", "99999999999999w"):
        bad = gateway(env, "keys", "rotate", old["prefix"], f"--grace={grace}")
        assert (bad.returncode, bad.stderr.strip().split(":")[0]) == (2, "error"), grace
        assert "invalid" in bad.stderr


async def test_the_prompt_log_is_off_by_default_and_switched_per_key(env: dict[str, str]) -> None:
    env = {**env, "PROMPT_LOG_DEFAULT_RETENTION_DAYS": "12"}
    created = new_key(env)
    key, prefix = created["key"], created["prefix"]
    database_url = env["DATABASE_URL"]
    columns = "SELECT prompt_log, prompt_log_retention_days FROM gateway.api_keys WHERE id = %s"

    async with running_gateway(env) as (_, client):

        async def prompt_log() -> dict[str, Any]:
            me: dict[str, Any] = (await client.get("/v1/me", headers=bearer(key))).json()
            return me["prompt_log"]  # type: ignore[no-any-return] # JSON

        async def until_prompt_log(wanted: dict[str, Any]) -> None:
            deadline = time.monotonic() + 1.0
            while (got := await prompt_log()) != wanted:
                assert time.monotonic() < deadline, got
                await anyio.sleep(0.02)

        assert await prompt_log() == {"enabled": False, "retention_days": None}
        dry = ok(env, "keys", "update", prefix, "--prompt-log", "on", "--dry-run")
        assert dry.splitlines() == [
            f"dry run, nothing written; prompt log for key {prefix} ('app' of tenant 'acme')",
            "  now:   off (when on, rows kept 12 days (default))",
            "  would: on, rows kept 12 days (default)",
        ]
        dry_json = as_json(env, "keys", "update", prefix, "--retention-days", "7", "--dry-run")
        assert dry_json["dry_run"] is True
        assert dry_json["after"]["retention_days"] == 7
        assert stored(database_url, columns, key_id(prefix)) == (False, None)
        assert await prompt_log() == {"enabled": False, "retention_days": None}

        # The principal was cached before each change: the change notice must reach it.
        shown = ok(env, "keys", "update", prefix, "--prompt-log", "on", "--retention-days", "7")
        assert shown.strip() == (
            f"prompt log for key {prefix} ('app' of tenant 'acme'): on, rows kept 7 days"
        )
        assert stored(database_url, columns, key_id(prefix)) == (True, 7)
        await until_prompt_log({"enabled": True, "retention_days": 7})
        after = as_json(env, "keys", "update", prefix, "--retention-days", "default")["after"]
        assert (after["prompt_log"], after["retention_days"]) == (True, None)
        assert after["retention_days_in_force"] == 12
        await until_prompt_log({"enabled": True, "retention_days": 12})
        ok(env, "keys", "update", prefix, "--prompt-log", "off")
        await until_prompt_log({"enabled": False, "retention_days": None})
        assert stored(database_url, columns, key_id(prefix)) == (False, None)

    for args, code, message in [
        ((), 2, "nothing to change"),
        (("--prompt-log", "maybe"), 2, "invalid --prompt-log 'maybe'"),
        (("--retention-days", "0"), 2, "invalid --retention-days '0'"),
        (("--retention-days", "3000000000"), 2, "invalid --retention-days"),
    ]:
        bad = gateway(env, "keys", "update", prefix, *args)
        assert (bad.returncode, bad.stderr.startswith(f"error: {message}")) == (code, True), args
    missing = gateway(env, "keys", "update", "gw_AAAAAAAAAAAA", "--prompt-log", "on")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "error: no key with prefix 'gw_AAAAAAAAAAAA'; list them with `gateway keys list`",
    )


async def test_a_key_created_to_expire_is_refused_after_it_even_from_a_cache(
    env: dict[str, str],
) -> None:
    created = new_key(env, "--expires-in", "2s")
    expires_at = datetime.fromisoformat(created["expires_at"]).timestamp()
    async with running_gateway(env) as (_, client):
        assert await status(client, created["key"]) == 200
        assert time.time() < expires_at  # so that 200 was before the expiry, and now cached
        await anyio.sleep(max(0.0, expires_at - time.time()) + 0.1)
        assert await status(client, created["key"]) == 401


async def test_three_gateway_processes_refuse_a_revoked_key_within_a_second(
    env: dict[str, str],
) -> None:
    created = new_key(env)
    key = created["key"]
    with gateway_processes(env, 3) as urls:
        clients = [httpx.AsyncClient(base_url=url, timeout=10) for url in urls]
        try:
            for client in clients:
                # One real request each: every process now holds the key in its own cache.
                assert (
                    await client.post("/api/chat", json=CHAT, headers=bearer(key))
                ).status_code == 200
            refused_at: dict[str, float] = {}
            revoked: dict[str, float] = {}

            async def poll(client: httpx.AsyncClient) -> None:
                with anyio.fail_after(10):
                    while True:
                        got = await status(client, key)
                        if got != 200:
                            refused_at[str(client.base_url)] = time.time()
                            break
                        await anyio.sleep(0.02)
                assert got == 401

            async def revoke() -> None:
                revoked["started"] = time.time()
                await anyio.to_thread.run_sync(
                    partial(ok, env, "keys", "revoke", created["prefix"])
                )
                revoked["exited"] = time.time()

            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(poll, client)
                await anyio.sleep(0.1)  # the pollers see 200 first
                tg.start_soon(revoke)
        finally:
            for client in clients:
                await client.aclose()
    assert len(refused_at) == 3
    # Wall clocks, one machine: the row's revoked_at is when the revocation committed.
    (committed,) = stored(
        env["DATABASE_URL"],
        "SELECT revoked_at FROM gateway.api_keys WHERE id = %s",
        key_id(created["prefix"]),
    )
    last = max(refused_at.values())
    after_commit = sorted(at - committed.timestamp() for at in refused_at.values())
    print(
        f"\nrevocation: the last of 3 processes refused the key {last - revoked['exited']:+.3f} s "
        f"after `keys revoke` exited ({last - revoked['started']:.3f} s after it started); "
        f"after the commit: {', '.join(f'{v * 1000:.0f}' for v in after_commit)} ms"
    )
    assert last - revoked["exited"] <= REVOCATION_BOUND_S
    assert after_commit[-1] <= REVOCATION_BOUND_S
