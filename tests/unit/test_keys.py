"""Key format, generation and argon2id hashing."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.keys import (
    ALPHABET,
    ID_LENGTH,
    SECRET_LENGTH,
    KeyHasher,
    cache_digest,
    generate_key,
    parse_key,
)

prefixes = st.from_regex(r"\A[a-z][a-z0-9]{0,15}\Z")
alnum = st.text(alphabet=ALPHABET, min_size=1, max_size=60)


def cheap_hasher(time_cost: int = 1) -> KeyHasher:
    return KeyHasher(
        time_cost=time_cost, memory_cost_kib=64, parallelism=1, max_concurrent_verifies=2
    )


@given(prefixes)
def test_a_generated_key_parses_back_to_its_parts(prefix: str) -> None:
    issued = generate_key(prefix)
    parsed = parse_key(issued.full_key, prefix)
    assert parsed is not None
    assert parsed.prefix == prefix
    assert parsed.key_id == issued.key_id
    assert len(parsed.key_id) == ID_LENGTH
    assert len(parsed.secret) == SECRET_LENGTH
    assert issued.full_key == f"{prefix}_{parsed.key_id}{parsed.secret}"


@given(prefixes, alnum)
def test_only_exactly_44_characters_after_the_prefix_parse(prefix: str, rest: str) -> None:
    parsed = parse_key(f"{prefix}_{rest}", prefix)
    assert (parsed is not None) == (len(rest) == ID_LENGTH + SECRET_LENGTH)


@given(st.text(max_size=80))
def test_arbitrary_text_never_crashes_the_parser(text: str) -> None:
    parsed = parse_key(text, "gw")
    if parsed is not None:
        assert text.startswith("gw_")
        assert set(parsed.key_id + parsed.secret) <= set(string.ascii_letters + string.digits)


def test_a_key_of_another_prefix_is_not_ours() -> None:
    issued = generate_key("nz")
    assert parse_key(issued.full_key, "gw") is None


def test_keys_are_unique_and_use_the_whole_alphabet() -> None:
    keys = {generate_key("gw").full_key for _ in range(2000)}
    assert len(keys) == 2000
    used = set("".join(k[3:] for k in keys))
    assert used == set(ALPHABET)


def test_cache_digest_binds_the_whole_key() -> None:
    issued = generate_key("gw")
    other = issued.full_key[:-1] + ("a" if issued.full_key[-1] != "a" else "b")
    assert cache_digest(issued.full_key) != cache_digest(other)
    assert len(cache_digest(issued.full_key)) == 32


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_argon2id_roundtrip_accepts_the_key_and_nothing_else() -> None:
    hasher = cheap_hasher()
    issued = generate_key("gw")
    stored = hasher.hash(issued.full_key)
    assert stored.startswith("$argon2id$")
    assert issued.full_key not in stored
    assert await hasher.verify(stored, issued.full_key)
    assert not await hasher.verify(stored, generate_key("gw").full_key)
    assert not await hasher.verify("not a hash", issued.full_key)
    await hasher.verify_nothing(issued.full_key)  # spends the time, answers nothing


@pytest.mark.anyio
async def test_a_hash_made_with_other_parameters_needs_a_rehash() -> None:
    old = cheap_hasher(time_cost=1)
    new = cheap_hasher(time_cost=2)
    issued = generate_key("gw")
    stored = old.hash(issued.full_key)
    assert new.needs_rehash(stored)
    assert not old.needs_rehash(stored)
    rehashed = await new.hash_in_thread(issued.full_key)
    assert not new.needs_rehash(rehashed)
    assert await new.verify(rehashed, issued.full_key)
