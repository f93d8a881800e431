"""`gateway models allow|deny|inherit|list` and `tenants create --allow-all-models` against real
Postgres and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import psycopg
import pytest
import redis

from tests.integration.cli_support import as_json, gateway, key_id, make_tenant, ok, stored

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def env(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}


@pytest.fixture
def cache(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def tenant_models(database_url: str, name: str) -> tuple[Any, ...]:
    return stored(
        database_url,
        "SELECT allow_all_models, allowed_models FROM gateway.tenants WHERE name = %s",
        name,
    )


def key_models(database_url: str, prefix: str) -> tuple[Any, ...]:
    return stored(
        database_url,
        "SELECT allow_all_models, allowed_models FROM gateway.api_keys WHERE id = %s",
        key_id(prefix),
    )


def discover(cache: redis.Redis, prefix: str, names: list[str], *, age_s: float = 0.0) -> None:
    """What a running gateway's discovery shares with the others."""
    blob = msgspec.json.encode({"models": names, "at_s": time.time() - age_s})
    cache.set(f"{prefix}:discovered", blob, ex=120)


def test_new_tenants_may_use_no_model_unless_created_allowing_all(
    env: dict[str, str], database_url: str
) -> None:
    closed = as_json(env, "tenants", "create", "acme")
    assert (closed["name"], closed["allow_all_models"]) == ("acme", False)
    opened = as_json(env, "tenants", "create", "open", "--allow-all-models")
    assert (opened["name"], opened["allow_all_models"]) == ("open", True)
    assert tenant_models(database_url, "acme") == (False, [])
    assert tenant_models(database_url, "open") == (True, [])
    human = ok(env, "tenants", "create", "beta").splitlines()
    assert human[1] == "it may use no model yet: `gateway models allow --tenant beta MODEL…`"
    assert as_json(env, "models", "list", "--tenant", "acme")["models"] == []
    assert ok(env, "models", "list", "--tenant", "acme").strip() == (
        "models for tenant acme: no models"
    )
    assert as_json(env, "models", "list", "--tenant", "open")["allow_all"] is True


def test_allow_stores_canonical_names_sorted_once(env: dict[str, str], database_url: str) -> None:
    make_tenant(database_url, "acme")
    shown = ok(env, "models", "allow", "--tenant", "acme", "mistral:7b", "llama3", "llama3:latest")
    assert shown.strip() == "models for tenant acme: llama3:latest, mistral:7b"
    assert tenant_models(database_url, "acme") == (False, ["llama3:latest", "mistral:7b"])
    more = as_json(env, "models", "allow", "--tenant", "acme", "qwen2:0.5b", "mistral:7b")
    assert more == {
        "scope": "tenant",
        "tenant": "acme",
        "key": None,
        "allow_all": False,
        "source": "own",
        "allowed": ["llama3:latest", "mistral:7b", "qwen2:0.5b"],
    }
    again = ok(env, "models", "allow", "--tenant", "acme", "llama3")
    assert again.splitlines()[0] == "nothing changed"
    everything = as_json(env, "models", "allow", "--tenant", "acme", "--all")
    assert (everything["allow_all"], everything["allowed"]) == (True, [])
    # The list is kept, but it no longer matters: nothing is added while all are allowed.
    assert ok(env, "models", "allow", "--tenant", "acme", "phi3").splitlines() == [
        "tenant acme may use all models already",
        "nothing changed",
        "models for tenant acme: all models",
    ]
    assert tenant_models(database_url, "acme") == (
        True,
        ["llama3:latest", "mistral:7b", "qwen2:0.5b"],
    )


def test_deny_removes_names_and_deny_all_empties_the_list(
    env: dict[str, str], database_url: str
) -> None:
    make_tenant(database_url, "acme")
    ok(env, "models", "allow", "--tenant", "acme", "llama3", "mistral:7b", "qwen2:0.5b")
    assert ok(env, "models", "deny", "--tenant", "acme", "llama3:latest", "phi3").splitlines() == [
        "not allowed before either: phi3:latest",
        "models for tenant acme: mistral:7b, qwen2:0.5b",
    ]
    assert tenant_models(database_url, "acme") == (False, ["mistral:7b", "qwen2:0.5b"])
    ok(env, "models", "allow", "--tenant", "acme", "--all")
    assert ok(env, "models", "deny", "--tenant", "acme", "--all").strip() == (
        "models for tenant acme: no models"
    )
    assert tenant_models(database_url, "acme") == (False, [])


def test_denying_one_model_of_an_allow_all_scope_is_refused(
    env: dict[str, str], database_url: str
) -> None:
    acme = make_tenant(database_url, "acme", "ci", allow_all=True)
    refused = gateway(env, "models", "deny", "--tenant", "acme", "llama3")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.strip() == (
        "error: tenant acme is allowed all models; use `models deny --all` first, then allow "
        "the ones it may use"
    )
    inherited = gateway(env, "models", "deny", "--key", acme.keys[0], "llama3")
    assert inherited.returncode == 2
    assert inherited.stderr.strip().startswith(
        f"error: key {acme.keys[0]} is allowed all models (inherited from tenant acme); "
    )
    assert tenant_models(database_url, "acme") == (True, [])
    assert key_models(database_url, acme.keys[0]) == (None, None)


def test_a_key_follows_its_tenant_until_it_has_its_own_setting(
    env: dict[str, str], database_url: str
) -> None:
    acme = make_tenant(database_url, "acme", "ci", "bot")
    ci, bot = acme.keys
    ok(env, "models", "allow", "--tenant", "acme", "llama3", "mistral:7b")
    inherited = as_json(env, "models", "list", "--key", ci)
    assert (inherited["scope"], inherited["key"], inherited["source"]) == ("key", ci, "tenant")
    assert [m["name"] for m in inherited["models"]] == ["llama3:latest", "mistral:7b"]
    # Allowing starts the key's own list from nothing: the key may use exactly these now.
    own = ok(env, "models", "allow", "--key", ci, "qwen2:0.5b").splitlines()
    assert own == [
        f"key {ci} now has its own model list and no longer follows tenant acme's "
        f"(`gateway models inherit --key {ci}` undoes this)",
        f"models for key {ci} (own setting): qwen2:0.5b",
    ]
    assert key_models(database_url, ci) == (False, ["qwen2:0.5b"])
    ok(env, "models", "allow", "--tenant", "acme", "--all")
    assert as_json(env, "models", "list", "--key", ci)["allow_all"] is False
    assert as_json(env, "models", "list", "--key", bot)["source"] == "tenant"
    assert as_json(env, "models", "list", "--key", bot)["allow_all"] is True
    back = ok(env, "models", "inherit", "--key", key_id(ci)).strip()
    assert back == f"models for key {ci} (inherited from tenant acme): all models"
    assert key_models(database_url, ci) == (None, None)
    # Denying on a key that follows its tenant's list keeps the rest of that list, as its own.
    ok(env, "models", "deny", "--tenant", "acme", "--all")
    ok(env, "models", "allow", "--tenant", "acme", "llama3", "mistral:7b")
    narrowed = as_json(env, "models", "deny", "--key", bot, "mistral:7b")
    assert narrowed["allowed"] == ["llama3:latest"]
    assert narrowed["source"] == "own"
    assert key_models(database_url, bot) == (False, ["llama3:latest"])
    assert tenant_models(database_url, "acme") == (False, ["llama3:latest", "mistral:7b"])


def test_a_key_may_be_allowed_or_denied_everything_on_its_own(
    env: dict[str, str], database_url: str
) -> None:
    acme = make_tenant(database_url, "acme", "ci")
    key = acme.keys[0]
    shown = as_json(env, "models", "allow", "--key", key, "--all")
    assert (shown["allow_all"], shown["source"]) == (True, "own")
    assert key_models(database_url, key) == (True, None)
    assert ok(env, "models", "deny", "--key", key, "--all").splitlines()[-1] == (
        f"models for key {key} (own setting): no models"
    )
    assert key_models(database_url, key) == (False, [])
    # An own empty list is not the tenant's: the tenant's models do not reach this key.
    ok(env, "models", "allow", "--tenant", "acme", "llama3")
    assert as_json(env, "models", "list", "--key", key)["models"] == []


def test_list_says_which_models_are_discovered(
    env: dict[str, str], database_url: str, cache: redis.Redis, redis_prefix: str
) -> None:
    make_tenant(database_url, "acme")
    make_tenant(database_url, "open", allow_all=True)
    ok(env, "models", "allow", "--tenant", "acme", "llama3", "mistral:7b")
    discover(cache, redis_prefix, ["qwen2:0.5b", "llama3:latest"])
    listed = as_json(env, "models", "list", "--tenant", "acme")
    assert listed == {
        "scope": "tenant",
        "tenant": "acme",
        "key": None,
        "allow_all": False,
        "source": "own",
        "models": [
            {"name": "llama3:latest", "discovered": True},
            {"name": "mistral:7b", "discovered": False},
        ],
    }
    table = ok(env, "models", "list", "--tenant", "acme").splitlines()
    assert table[0] == "models for tenant acme:"
    assert [row.split() for row in table[1:]] == [
        ["model", "discovered"],
        ["llama3:latest", "yes"],
        ["mistral:7b", "no"],
    ]
    everything = as_json(env, "models", "list", "--tenant", "open")
    assert everything["models"] == [
        {"name": "llama3:latest", "discovered": True},
        {"name": "qwen2:0.5b", "discovered": True},
    ]
    discover(cache, redis_prefix, [])
    assert ok(env, "models", "list", "--tenant", "open").strip() == (
        "models for tenant open: all models (none discovered right now)"
    )


def test_list_says_when_discovery_is_unknown(
    env: dict[str, str], database_url: str, cache: redis.Redis, redis_prefix: str
) -> None:
    make_tenant(database_url, "acme")
    make_tenant(database_url, "open", allow_all=True)
    ok(env, "models", "allow", "--tenant", "acme", "llama3")
    for stale, environment, warning in (
        (False, env, "no gateway has discovered models lately"),
        (True, env, "no gateway has discovered models lately"),
        (False, {**env, "REDIS_URL": DOWN}, "could not reach Redis"),
    ):
        if stale:
            discover(cache, redis_prefix, ["llama3"], age_s=600)
        result = gateway(environment, "models", "list", "--tenant", "acme", "--json")
        assert result.returncode == 0
        assert result.stderr.startswith("warning: ")
        assert warning in result.stderr
        assert "whether models are discovered is unknown" in result.stderr
        assert msgspec.json.decode(result.stdout)["models"] == [
            {"name": "llama3:latest", "discovered": None}
        ]
        human = gateway(environment, "models", "list", "--tenant", "acme")
        assert human.stdout.splitlines()[-1].split() == ["llama3:latest", "unknown"]
        opened = gateway(environment, "models", "list", "--tenant", "open")
        assert opened.stdout.strip() == "models for tenant open: all models (discovery unknown)"


BAD_INPUT = (
    (["allow", "--tenant", "acme", "llama 3"], 2, "invalid model name 'llama 3'"),
    (["allow", "--tenant", "acme", ""], 2, "invalid model name ''"),
    (["allow", "--tenant", "acme", "llama3\x07"], 2, "invalid model name 'llama3\\x07'"),
    (["allow", "--tenant", "acme", "a" * 257], 2, "invalid model name"),
    (["allow", "--tenant", "acme", "llama3:"], 2, "invalid model name 'llama3:'"),
    (["deny", "--tenant", "acme", "ok", "bad\tname"], 2, "invalid model name 'bad\\tname'"),
    (["allow", "--tenant", "acme"], 2, "give model names or --all, not both and not neither"),
    (["deny", "--tenant", "acme", "x", "--all"], 2, "give model names or --all"),
    (["allow", "llama3"], 2, "give exactly one of --tenant NAME and --key PREFIX"),
    (
        ["deny", "--tenant", "acme", "--key", "gw_AAAAAAAAAAAA", "--all"],
        2,
        "give exactly one of --tenant NAME and --key PREFIX",
    ),
    (["list"], 2, "give exactly one of --tenant NAME and --key PREFIX"),
    (["inherit", "--tenant", "acme"], 2, "--key"),
    (["allow", "--tenant", "ghost", "llama3"], 1, "no tenant named 'ghost'"),
    (["deny", "--key", "gw_AAAAAAAAAAAA", "--all"], 1, "no key with prefix 'gw_AAAAAAAAAAAA'"),
    (["inherit", "--key", "gw_AAAAAAAAAAAA"], 1, "no key with prefix 'gw_AAAAAAAAAAAA'"),
    (["list", "--tenant", "ghost"], 1, "no tenant named 'ghost'"),
)


def test_bad_input_is_one_error_and_changes_nothing(env: dict[str, str], database_url: str) -> None:
    make_tenant(database_url, "acme")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda args: gateway(env, "models", *args), [c[0] for c in BAD_INPUT])
        )
    for (args, code, message), result in zip(BAD_INPUT, results, strict=True):
        assert (result.returncode, result.stdout) == (code, ""), args
        assert message in result.stderr, args
        if code == 1 or "exactly one" in message or "model" in message:
            assert result.stderr.startswith("error: "), args
            assert len(result.stderr.strip().splitlines()) == 1, args
    assert tenant_models(database_url, "acme") == (False, [])


def test_a_change_is_announced_to_gateways(env: dict[str, str], database_url: str) -> None:
    acme = make_tenant(database_url, "acme", "ci")
    ok(env, "models", "allow", "--tenant", "acme", "llama3")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN gateway_principals")
        # Nothing changes, so nothing is announced.
        ok(env, "models", "allow", "--tenant", "acme", "llama3")
        ok(env, "models", "allow", "--key", acme.keys[0], "mistral")
        ok(env, "models", "deny", "--tenant", "acme", "llama3")
        ok(env, "models", "inherit", "--key", acme.keys[0])
        payloads = [n.payload for n in conn.notifies(timeout=10, stop_after=6)]
    # Once with the change, once more after Redis was cleaned of what it cached before it.
    key_notice, tenant_notice = f"k:{key_id(acme.keys[0])}", f"t:{acme.id}"
    assert payloads == [key_notice] * 2 + [tenant_notice] * 2 + [key_notice] * 2


def test_the_shared_key_cache_is_evicted(
    env: dict[str, str], database_url: str, cache: redis.Redis, redis_prefix: str
) -> None:
    acme = make_tenant(database_url, "acme", "ci", "bot")
    other = make_tenant(database_url, "other", "ci")
    entries = [f"{redis_prefix}:key:{key_id(p)}" for p in [*acme.keys, *other.keys]]
    for entry in entries:
        cache.hset(entry, "digest", "principal")
    ok(env, "models", "allow", "--key", acme.keys[0], "llama3")
    assert [cache.exists(entry) for entry in entries] == [0, 1, 1]
    cache.hset(entries[0], "digest", "principal")
    ok(env, "models", "allow", "--tenant", "acme", "--all")
    assert [cache.exists(entry) for entry in entries] == [0, 0, 1]


def test_an_unreachable_redis_warns_but_the_change_stands(
    env: dict[str, str], database_url: str
) -> None:
    make_tenant(database_url, "acme", "ci")
    result = gateway({**env, "REDIS_URL": DOWN}, "models", "allow", "--tenant", "acme", "llama3")
    assert result.returncode == 0
    assert result.stderr.startswith("warning: could not reach Redis")
    assert result.stdout.strip() == "models for tenant acme: llama3:latest"
    assert tenant_models(database_url, "acme") == (False, ["llama3:latest"])
