"""API keys: the `<prefix>_<12-char id><32-char secret>` format, generation and argon2id hashing."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from typing import NamedTuple

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ID_LENGTH = 12
SECRET_LENGTH = 32
ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(r"^([a-z][a-z0-9]{0,15})_([A-Za-z0-9]{12})([A-Za-z0-9]{32})$")


class ParsedKey(NamedTuple):
    prefix: str
    key_id: str
    secret: str


class IssuedKey(NamedTuple):
    key_id: str
    full_key: str


def parse_key(text: str, prefix: str) -> ParsedKey | None:
    """Split a presented key into its parts; None for anything not shaped like one of ours."""
    match = _KEY.match(text)
    if match is None or match.group(1) != prefix:
        return None
    return ParsedKey(match.group(1), match.group(2), match.group(3))


def generate_key(prefix: str) -> IssuedKey:
    key_id = "".join(secrets.choice(ALPHABET) for _ in range(ID_LENGTH))
    secret = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    return IssuedKey(key_id, f"{prefix}_{key_id}{secret}")


def cache_digest(full_key: str) -> bytes:
    """Binds a cache entry to the whole key; 190 bits of secret make a fast hash safe here."""
    return hashlib.blake2b(full_key.encode("ascii"), digest_size=32).digest()


class KeyHasher:
    """argon2id with bounded parallelism, run in worker threads so the event loop never waits."""

    def __init__(
        self,
        *,
        time_cost: int,
        memory_cost_kib: int,
        parallelism: int,
        max_concurrent_verifies: int,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism
        )
        self._limiter = anyio.CapacityLimiter(max_concurrent_verifies)
        # A real hash of a random key: unknown key ids pay the same verify as known ones.
        self._dummy_hash = self._hasher.hash(generate_key("dummy").full_key)

    def hash(self, full_key: str) -> str:
        return self._hasher.hash(full_key)

    async def hash_in_thread(self, full_key: str) -> str:
        return await anyio.to_thread.run_sync(self.hash, full_key, limiter=self._limiter)

    def _verify(self, stored_hash: str, full_key: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, full_key)
        except (VerificationError, InvalidHashError):
            return False

    async def verify(self, stored_hash: str, full_key: str) -> bool:
        return await anyio.to_thread.run_sync(
            self._verify, stored_hash, full_key, limiter=self._limiter
        )

    async def verify_nothing(self, full_key: str) -> None:
        """Spend the time of a verify so an unknown key id cannot be told apart by timing."""
        await self.verify(self._dummy_hash, full_key)

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)
