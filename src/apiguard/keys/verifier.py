"""`KeyVerifier`: from a presented key to a `Principal`, through a bounded cache.

Checks run cheapest first: cache, then shape and checksum (no I/O), then one store
lookup and one hash verification, shared by concurrent requests with the same key.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection
from typing import NoReturn

import anyio
from starlette.authentication import AuthCredentials

from apiguard._cache import CacheOptions, VerdictCache
from apiguard.exceptions import BackendUnavailableError, ConfigurationError, InvalidCredentials
from apiguard.keys.format import DEFAULT_PREFIX, MAX_KEY_LENGTH, parse_key, validate_prefix
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.record import KeyRecord, utcnow
from apiguard.principal import Grant, Principal
from apiguard.types import KeyStore

__all__ = ["CacheOptions", "KeyVerifier"]

logger = logging.getLogger("apiguard.keys")


# Cache keys are BLAKE2s-256 digests of the presented key, never the key itself;
# BLAKE2s costs about half of SHA-256 on a short input, and this runs per request.
_digest = hashlib.blake2s


class KeyVerifier:
    """Verifies presented API keys against a store, caching the outcome.

    Args:
        store: Where the key records are.
        hasher: Verifies secrets against stored hashes.
        prefixes: The key prefixes accepted.
        cache: Cache sizes and lifetimes.
        slow_hash_concurrency: How many slow (imported) hashes may be verified at once
            in worker threads; bounds the work a flood of forged keys can cause.
    """

    def __init__(
        self,
        store: KeyStore,
        hasher: KeyHasher,
        *,
        prefixes: Collection[str] = (DEFAULT_PREFIX,),
        cache: CacheOptions | None = None,
        slow_hash_concurrency: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._hasher = hasher
        self._prefixes = frozenset(validate_prefix(p) for p in prefixes)
        if not self._prefixes:
            raise ConfigurationError("at least one key prefix is required")
        self._verdicts: VerdictCache[bytes, Grant] = VerdictCache(cache or CacheOptions(), clock)
        self._slow_limiter = anyio.CapacityLimiter(slow_hash_concurrency)
        self._clock = clock
        store.add_listener(self.invalidate)

    def invalidate(self, key_id: str) -> None:
        """Forget every cached verification of `key_id` (called on revoke and rotate)."""
        self._verdicts.invalidate(key_id)

    async def verify(self, raw: bytes) -> Grant:
        """Return the principal and credentials for a presented key.

        Raises:
            InvalidCredentials: The key is malformed, unknown, wrong, expired or revoked.
            BackendUnavailableError: The store could not be reached.
        """
        if len(raw) > MAX_KEY_LENGTH:  # bound the hashing work before anything else
            raise InvalidCredentials(reason="malformed")
        digest = _digest(raw).digest()
        now = self._clock()
        verdicts = self._verdicts
        grant = verdicts.positive.get(digest, now)
        if grant is not None:
            return grant
        reason = verdicts.negative.get(digest, now)
        if reason is not None:
            raise InvalidCredentials(reason=reason)
        return await verdicts.fill(digest, lambda generation: self._lookup(raw, digest, generation))

    async def _lookup(self, raw: bytes, digest: bytes, generation: int) -> Grant:
        try:
            parsed = parse_key(raw.decode("ascii"), self._prefixes)
        except UnicodeDecodeError:
            raise InvalidCredentials(reason="malformed") from None

        record = await self.store.get(parsed.key_id)
        if record is None:
            self._refuse(digest, parsed.key_id, "unknown key", generation)
        if self._hasher.is_fast(record.secret_hash):
            ok, new_hash = self._hasher.verify(parsed.secret, record.secret_hash)
        else:
            ok, new_hash = await anyio.to_thread.run_sync(
                self._hasher.verify, parsed.secret, record.secret_hash, limiter=self._slow_limiter
            )
        if not ok:
            self._refuse(digest, parsed.key_id, "wrong secret", generation)
        wall_now = utcnow()
        status = record.status(wall_now)
        if status != "active":
            self._refuse(digest, parsed.key_id, status, generation)

        if new_hash is not None:
            await self._migrate(record, new_hash)
        grant = _grant(record)
        lifetime = None
        if record.expires_at is not None:
            lifetime = (record.expires_at - wall_now).total_seconds()
        self._verdicts.allow(digest, grant, generation, tag=record.key_id, lifetime=lifetime)
        try:
            await self.store.record_usage(record.key_id, at=wall_now)
        except BackendUnavailableError:
            logger.warning("could not record key usage (key_id=%s)", record.key_id)
        return grant

    def _refuse(self, digest: bytes, key_id: str, reason: str, generation: int) -> NoReturn:
        self._verdicts.refuse(digest, reason, generation, tag=key_id)
        error = InvalidCredentials(reason=reason)
        error.credential_id = key_id
        raise error

    async def _migrate(self, record: KeyRecord, new_hash: str) -> None:
        try:
            await self.store.update_hash(record.key_id, new_hash)
        except BackendUnavailableError:
            logger.warning("could not migrate key hash (key_id=%s)", record.key_id)
        else:
            logger.info("migrated key hash to the default scheme (key_id=%s)", record.key_id)


def _grant(record: KeyRecord) -> Grant:
    principal = Principal(
        identity=record.key_id,
        kind="api_key",
        name=record.name,
        scopes=record.scopes,
        key_id=record.key_id,
        metadata=record.metadata,
    )
    return principal, AuthCredentials(sorted(record.scopes))
