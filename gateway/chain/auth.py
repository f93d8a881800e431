"""The auth stage: a bearer key becomes a Principal, or every kind of failure becomes one 401.

Lookup order: this process's cache, then Redis, then Postgres with an argon2id verify in a
worker thread. A cached key costs no Postgres round trip and no argon2. The Redis lookup also
counts the attempt against the client's auth-failure window, and refuses it when that is full.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import time
from collections.abc import Callable
from datetime import datetime

import anyio
import msgspec

from gateway.chain.budget import effective_budgets
from gateway.chain.limits import effective_limits
from gateway.chain.values import Principal
from gateway.clientip import throttle_subject
from gateway.errors import AuthRateLimited, GatewayError, ServiceUnavailable, Unauthorized
from gateway.keys import KeyHasher, cache_digest, parse_key
from gateway.models import effective_access
from gateway.store.pg import Database, KeyRecord
from gateway.store.redis import Attempt, Cache

log = logging.getLogger(__name__)

FAILURE_WINDOW_MS = 60_000

_encode_principal = msgspec.msgpack.Encoder().encode
_decode_principal = msgspec.msgpack.Decoder(Principal).decode


def _decode_cached(blob: bytes) -> Principal | None:
    """None for an entry this version cannot read (written by an older one): resolve afresh."""
    try:
        return _decode_principal(blob)
    except msgspec.DecodeError:
        return None


class LocalKeyCache:
    """Resolved keys in this process, bounded in size and age; evicted by key id on revocation."""

    def __init__(self, *, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[bytes, Principal, float]] = {}

    def get(self, key_id: str, digest: bytes) -> Principal | None:
        entry = self._entries.get(key_id)
        if entry is None or entry[0] != digest:
            return None
        if entry[2] <= self._clock():
            del self._entries[key_id]
            return None
        return entry[1]

    def put(self, key_id: str, digest: bytes, principal: Principal) -> None:
        if key_id not in self._entries and len(self._entries) >= self._max_entries:
            # Oldest insertion first: dicts keep insertion order.
            del self._entries[next(iter(self._entries))]
        self._entries[key_id] = (digest, principal, self._clock() + self._ttl_s)

    def evict(self, key_id: str) -> None:
        self._entries.pop(key_id, None)

    def evict_tenant(self, tenant_id: str) -> None:
        stale = [
            k for k, (_, principal, _) in self._entries.items() if principal.tenant_id == tenant_id
        ]
        for key_id in stale:
            del self._entries[key_id]

    def clear(self) -> None:
        self._entries.clear()


def bearer_token(authorization: list[bytes]) -> str | None:
    """The token of exactly one `Authorization: Bearer <token>` header, else None."""
    if len(authorization) != 1:
        return None
    scheme, _, token = authorization[0].partition(b" ")
    if scheme.lower() != b"bearer" or not token.isascii():
        return None
    return token.strip().decode("ascii")


def _epoch_s(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


class _Flight:
    """One key lookup in progress, and what it found."""

    __slots__ = ("done", "error", "principal")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.principal: Principal | None = None
        self.error: GatewayError | None = None


class Authenticator:
    """Resolves keys; shares one byte-identical refusal for every way a key can be wrong."""

    def __init__(
        self,
        *,
        key_prefix: str,
        hasher: KeyHasher,
        database: Database,
        cache: Cache,
        local: LocalKeyCache,
        shared_ttl_s: int,
        default_limits: tuple[int, int, int],
        prompt_log_default_days: int,
        failures_per_ip_per_min: int = 0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._prefix = key_prefix
        self._hasher = hasher
        self._database = database
        self._cache = cache
        self.local = local
        self._shared_ttl_s = shared_ttl_s
        self._default_limits = default_limits
        self._prompt_log_default_days = prompt_log_default_days
        self._failure_limit = failures_per_ip_per_min  # 0: no throttle
        self._now = wall_clock
        self._flights: dict[tuple[str, bytes], _Flight] = {}
        # argon2 verifies started (dummy ones included): what a brute force costs, observable.
        self.verifications = 0

    async def authenticate(
        self, authorization: list[bytes], client_ip: str | None = None
    ) -> Principal:
        """The key's Principal; `client_ip` is the address its failures are counted against."""
        token = bearer_token(authorization)
        parsed = parse_key(token, self._prefix) if token else None
        if token is None or parsed is None:
            # The key format is public, so a malformed key reveals nothing: refuse without argon2.
            raise Unauthorized
        digest = cache_digest(token)
        # The hot path: a key this process has seen costs no round trip at all.
        principal = self.local.get(parsed.key_id, digest)
        if principal is None:
            principal = await self._lookup_once(parsed.key_id, token, digest, client_ip)
        if principal.expires_at_s is not None and principal.expires_at_s <= self._now():
            raise Unauthorized
        return principal

    async def _lookup_once(
        self, key_id: str, token: str, digest: bytes, client_ip: str | None
    ) -> Principal:
        """Look up, with every concurrent caller of the same key waiting on one lookup.

        When a busy key's cache entry expires, its requests in flight would otherwise each run
        Postgres and argon2 at once, and stall together for seconds (and each count an attempt).
        """
        while True:
            flight = self._flights.get((key_id, digest))
            if flight is None:
                break
            await flight.done.wait()
            if flight.principal is not None:
                return flight.principal
            if flight.error is not None and not isinstance(flight.error, AuthRateLimited):
                raise copy.copy(flight.error)
            # The one looking was cancelled (its client left) before it knew, or was refused
            # for its own address, which may not be ours: try again.
        flight = self._flights[key_id, digest] = _Flight()
        try:
            flight.principal = await self._lookup(key_id, token, digest, client_ip)
        except GatewayError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key_id, digest]
            flight.done.set()
        return flight.principal

    async def _lookup(
        self, key_id: str, token: str, digest: bytes, client_ip: str | None
    ) -> Principal:
        blob, attempt = await self._shared(key_id, digest, client_ip)
        if blob is not None:
            principal = _decode_cached(blob)
            if principal is not None:
                self.local.put(key_id, digest, principal)
                return principal
        try:
            return await self._resolve(key_id, token, digest, attempt)
        except ServiceUnavailable:
            # A store failed, not the key: the attempt is not held against the client. (A 401,
            # or a client that left mid-check, leaves it counted as a failure.)
            if attempt is not None:
                await self._cache.forget_attempt(attempt)
            raise

    async def _shared(
        self, key_id: str, digest: bytes, client_ip: str | None
    ) -> tuple[bytes | None, Attempt | None]:
        """Redis's entry for the key, and on a miss the attempt now counted against the client.

        A full window refuses before Postgres and argon2, in the same round trip as the lookup.
        A cached digest is a key proven valid, so it is answered even then and counts nothing.
        """
        if not self._failure_limit:
            return await self._cache.get_principal(key_id, digest), None
        attempt = Attempt(
            throttle_subject(client_ip),
            secrets.token_hex(8),
            self._failure_limit,
            FAILURE_WINDOW_MS,
        )
        found = await self._cache.lookup_principal(key_id, digest, attempt)
        if found.retry_after_ms:
            raise AuthRateLimited(math.ceil(found.retry_after_ms / 1000))
        return found.blob, None if found.blob is not None else attempt

    async def _verify(self, stored_hash: str, token: str) -> bool:
        self.verifications += 1
        return await self._hasher.verify(stored_hash, token)

    async def _resolve(
        self, key_id: str, token: str, digest: bytes, attempt: Attempt | None
    ) -> Principal:
        record = await self._database.find_key(key_id)
        if record is None:
            self.verifications += 1
            await self._hasher.verify_nothing(token)
            raise Unauthorized
        now_s = self._now()
        grace_until_s = _epoch_s(record.previous_secret_expires_at)
        if await self._verify(record.secret_hash, token):
            await self._maybe_rehash(record, token)
            valid_until_s = _epoch_s(record.expires_at)
        elif (
            record.previous_secret_hash is not None
            and grace_until_s is not None
            and grace_until_s > now_s
            and await self._verify(record.previous_secret_hash, token)
        ):
            # A rotated-out secret works until its grace ends, and is cached no longer than that.
            expires_at_s = _epoch_s(record.expires_at)
            valid_until_s = min(grace_until_s, expires_at_s or grace_until_s)
        else:
            raise Unauthorized
        if record.revoked or record.tenant_disabled:
            raise Unauthorized
        principal = Principal(
            tenant_id=record.tenant_id,
            tenant_name=record.tenant_name,
            key_id=record.key_id,
            key_name=record.key_name,
            expires_at_s=valid_until_s,
            limits=effective_limits(
                (record.key_rpm, record.key_tpm, record.key_concurrent),
                (record.tenant_rpm, record.tenant_tpm, record.tenant_concurrent),
                self._default_limits,
            ),
            budgets=effective_budgets(
                (record.key_daily, record.key_monthly, record.key_total),
                (record.tenant_daily, record.tenant_monthly, record.tenant_total),
            ),
            models=effective_access(
                record.key_allow_all,
                record.key_allowed,
                record.tenant_allow_all,
                record.tenant_allowed,
            ),
            prompt_log_days=(
                (record.prompt_log_retention_days or self._prompt_log_default_days)
                if record.prompt_log
                else None
            ),
            queue_weight=record.queue_weight,
        )
        if valid_until_s is not None and valid_until_s <= now_s:
            raise Unauthorized
        await self._cache.put_principal(
            key_id, digest, _encode_principal(principal), self._shared_ttl_s, proven=attempt
        )
        self.local.put(key_id, digest, principal)
        return principal

    async def _maybe_rehash(self, record: KeyRecord, token: str) -> None:
        # Only now is the key in hand, so only now can a hash made with old parameters be
        # replaced; the update is conditional on the old hash, so concurrent replicas agree.
        if self._hasher.needs_rehash(record.secret_hash):
            new_hash = await self._hasher.hash_in_thread(token)
            await self._database.update_key_hash(record.key_id, record.secret_hash, new_hash)
            log.info("key %s rehashed with the current argon2 parameters", record.key_id)

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache (a revocation arrived)."""
        self.local.evict(key_id)

    def changed(self, subject: str) -> None:
        """Something a principal holds (limits, budgets, models, secret, prompt log) changed
        for `k:<key_id>` or every key of `t:<tenant_id>`."""
        kind, _, ident = subject.partition(":")
        if kind == "t":
            self.local.evict_tenant(ident)
        else:
            self.local.evict(ident)
