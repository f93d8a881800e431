"""The operator's CLI: a contract scripts rely on (output, --json, exit codes, no tracebacks)."""

from __future__ import annotations

import msgspec
import pytest

from tests.integration.cli_support import gateway
from tests.integration.test_migrate import shipped_migrations


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}


def test_tenants_are_created_once_and_listed(env: dict[str, str]) -> None:
    created = gateway(env, "tenants", "create", "acme", "--json")
    assert created.returncode == 0
    assert msgspec.json.decode(created.stdout)["name"] == "acme"
    again = gateway(env, "tenants", "create", "acme")
    assert again.returncode == 1
    assert again.stderr.strip() == (
        "error: tenant 'acme' already exists; pick another name, or change it with"
        " `gateway tenants update`"
    )
    bad = gateway(env, "tenants", "create", "Not A Name")
    assert bad.returncode == 2
    assert "invalid tenant name" in bad.stderr
    listed = msgspec.json.decode(gateway(env, "tenants", "list", "--json").stdout)
    assert [(t["name"], t["active_keys"], t["queue_weight"]) for t in listed] == [("acme", 0, 1)]
    table = gateway(env, "tenants", "list").stdout.splitlines()
    assert table[0].split() == ["name", "id", "active", "keys", "queue", "weight", "created"]
    assert table[1].startswith("acme ")
    weighted = gateway(env, "tenants", "update", "acme", "--queue-weight", "3")
    assert (weighted.returncode, weighted.stdout.strip()) == (
        0,
        "tenant 'acme' now has queue weight 3",
    )
    listed = msgspec.json.decode(gateway(env, "tenants", "list", "--json").stdout)
    assert listed[0]["queue_weight"] == 3
    assert gateway(env, "tenants", "update", "nobody", "--queue-weight", "2").returncode == 1
    assert gateway(env, "tenants", "update", "acme", "--queue-weight", "0").returncode == 2


def test_a_key_is_shown_once_and_never_listed(env: dict[str, str]) -> None:
    assert gateway(env, "tenants", "create", "acme").returncode == 0
    human = gateway(env, "keys", "create", "--tenant", "acme", "--name", "ci")
    assert human.returncode == 0
    key = human.stdout.strip().splitlines()[-1]
    assert key.startswith("gw_")
    assert len(key) == 3 + 44
    assert "only time the key is shown" in human.stdout
    as_json = msgspec.json.decode(
        gateway(
            env,
            "keys",
            "create",
            "--tenant",
            "acme",
            "--name",
            "bot",
            "--expires-in",
            "30d",
            "--json",
        ).stdout
    )
    assert as_json["key"].startswith(as_json["prefix"])
    assert as_json["expires_at"] is not None
    listing = gateway(env, "keys", "list", "--json").stdout + gateway(env, "keys", "list").stdout
    assert key[:15] in listing
    assert key[15:] not in listing
    assert as_json["key"][15:] not in listing
    rows = msgspec.json.decode(gateway(env, "keys", "list", "--tenant", "acme", "--json").stdout)
    assert sorted(r["name"] for r in rows) == ["bot", "ci"]
    assert gateway(env, "keys", "list", "--tenant", "other", "--json").stdout.strip() == "[]"


def test_key_errors_are_one_clear_line(env: dict[str, str]) -> None:
    unknown = gateway(env, "keys", "create", "--tenant", "ghost", "--name", "x")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "error: no tenant named 'ghost'; list them with `gateway tenants list`",
    )
    assert gateway(env, "tenants", "create", "acme").returncode == 0
    assert gateway(env, "keys", "create", "--tenant", "acme", "--name", "x").returncode == 0
    dup = gateway(env, "keys", "create", "--tenant", "acme", "--name", "x")
    assert (dup.returncode, dup.stderr.strip()) == (
        1,
        "error: tenant 'acme' already has a key named 'x'; pick another name",
    )
    bad_expiry = gateway(
        env, "keys", "create", "--tenant", "acme", "--name", "y", "--expires-in", "soon"
    )
    assert bad_expiry.returncode == 2
    assert "invalid duration 'soon'" in bad_expiry.stderr
    missing = gateway(env, "keys", "revoke", "gw_AAAAAAAAAAAA")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        "error: no key with prefix 'gw_AAAAAAAAAAAA'; list them with `gateway keys list`",
    )


def test_revoking_twice_says_so(env: dict[str, str]) -> None:
    assert gateway(env, "tenants", "create", "acme").returncode == 0
    created = gateway(env, "keys", "create", "--tenant", "acme", "--name", "x", "--json")
    prefix = msgspec.json.decode(created.stdout)["prefix"]
    first = gateway(env, "keys", "revoke", prefix, "--reason", "leaked")
    assert (first.returncode, first.stdout.strip()) == (0, f"revoked key {prefix}")
    second = gateway(env, "keys", "revoke", prefix)
    assert (second.returncode, second.stdout.strip()) == (0, f"key {prefix} was already revoked")
    rows = msgspec.json.decode(gateway(env, "keys", "list", "--json").stdout)
    assert rows[0]["revoked_at"] is not None


def test_an_unreachable_database_is_reported_without_secrets() -> None:
    env = {"DATABASE_URL": "postgresql://admin:hunter2@127.0.0.1:1/gw"}
    for args in (("tenants", "list"), ("migrate",)):
        result = gateway(env, *args)
        assert result.returncode == 1
        assert result.stderr.startswith("error: ")
        assert "hunter2" not in result.stderr + result.stdout
    missing = gateway({}, "tenants", "list")
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        "error: DATABASE_URL: required but not set; export it, e.g."
        " DATABASE_URL=postgresql://gateway@localhost/gateway",
    )


def test_migrate_applies_once_and_reports_status(empty_database_url: str) -> None:
    env = {"DATABASE_URL": empty_database_url}
    shipped = shipped_migrations()
    first = gateway(env, "migrate")
    assert first.returncode == 0
    assert first.stdout.strip() == f"applied {len(shipped)} migration(s): {', '.join(shipped)}"
    assert gateway(env, "migrate").stdout.strip() == "applied 0 migration(s)"
    status = gateway(env, "migrate", "--status").stdout.splitlines()
    assert [line.split()[0] for line in status[1:]] == shipped
    assert {line.split()[-1] for line in status[1:]} == {"ok"}
