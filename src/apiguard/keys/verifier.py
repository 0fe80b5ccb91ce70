"""`KeyVerifier`: from a presented key to a `Principal`, through a bounded cache.

Checks run cheapest first: cache, then shape and checksum (no I/O), then one store
lookup and one hash verification, shared by concurrent requests with the same key.
A hash migration never delays an answer: it is kept in memory and written by
`flush()`, which the middleware calls after a response. Request counts and last-use
times are kept by `apiguard.keys.usage.UsageRecorder`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection
from typing import NoReturn

import anyio

from apiguard._backoff import Backoff
from apiguard._cache import CacheOptions, VerdictCache
from apiguard._observe import backend_call, cache_hit, cache_miss
from apiguard.exceptions import (
    ApiGuardError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidCredentials,
)
from apiguard.keys.channel import ALL_KEYS, InvalidationChannel
from apiguard.keys.format import DEFAULT_PREFIX, MAX_KEY_LENGTH, parse_key, validate_prefix
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.record import EMPTY_METADATA, KeyRecord, utcnow
from apiguard.principal import Grant, Principal, ScopeSets
from apiguard.types import KeyStore

__all__ = ["CacheOptions", "KeyVerifier"]

logger = logging.getLogger("apiguard.keys")


# Cache keys are BLAKE2s-256 digests of the presented key, never the key itself;
# BLAKE2s costs about half of SHA-256 on a short input, and this runs per request.
_digest = hashlib.blake2s


def slow_hash_threads() -> int:
    """The default `slow_hash_concurrency`: the cores available to this process, less one.

    The cores this process may run on (its CPU affinity, as `taskset` or a container
    set it), not the machine's; at least one.
    """
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13
    if counter is not None:
        cores = counter()
    elif hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS and Windows before Python 3.13
        cores = os.cpu_count()
    return max(1, (cores or 1) - 1)


class KeyVerifier:
    """Verifies presented API keys against a store, caching the outcome.

    Args:
        store: Where the key records are.
        hasher: Verifies secrets against stored hashes.
        prefixes: The key prefixes accepted.
        cache: Cache sizes and lifetimes.
        slow_hash_concurrency: How many slow (imported) hashes may be verified at once
            in worker threads; bounds the work a flood of forged keys can cause.
            By default one fewer than the cores this process may run on (at least
            one), so that the event loop keeps a core while they run.
        slow_hash_queue: How many slow hash verifications may wait or run at once;
            beyond it requests that need one get 503 at once instead of queueing.
        slow_hash_per_key: The same, per key id, so that forged secrets for one
            imported key cannot take the whole queue from the other keys.
        deadline: Seconds one lookup may take in all (the store read and the hash
            verification); then the request gets 503. Bookkeeping writes get the
            same deadline in all. A failed lookup (an outage, or the deadline passed)
            is not retried for a short, growing, jittered time (0.5-1 s, then up to
            30 s): requests that need the store get 503 at once meanwhile, so an
            outage is not amplified; keys in the cache are not affected.
    """

    def __init__(
        self,
        store: KeyStore,
        hasher: KeyHasher,
        *,
        prefixes: Collection[str] = (DEFAULT_PREFIX,),
        cache: CacheOptions | None = None,
        slow_hash_concurrency: int | None = None,
        slow_hash_queue: int = 32,
        slow_hash_per_key: int = 4,
        deadline: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slow_hash_concurrency is None:
            slow_hash_concurrency = slow_hash_threads()
        if min(slow_hash_concurrency, slow_hash_queue, slow_hash_per_key) < 1 or deadline <= 0:
            raise ConfigurationError(
                "slow hash limits must be at least 1 and the deadline must be positive"
            )
        self.store = store
        self._hasher = hasher
        self._prefixes = frozenset(validate_prefix(p) for p in prefixes)
        if not self._prefixes:
            raise ConfigurationError("at least one key prefix is required")
        self._verdicts: VerdictCache[bytes, Grant] = VerdictCache(cache or CacheOptions(), clock)
        self._slow_limiter = anyio.CapacityLimiter(slow_hash_concurrency)
        self._slow_queue = slow_hash_queue
        self._slow_per_key = slow_hash_per_key
        self._slow_waiting: dict[str, int] = {}
        self._slow_total = 0
        self._deadline = deadline
        self._clock = clock
        self._backoff = Backoff(clock=clock)
        self._new_hashes: dict[str, str] = {}
        self._scope_sets = ScopeSets()
        self._flushing = False
        self.pending = False
        """Whether bookkeeping writes wait for `flush()`."""
        store.add_listener(self.invalidate)
        # With `ttl_without_push`: verifications made while the store's channel is down
        # are trusted that long, and those from before it was lost are forgotten.
        channel: InvalidationChannel | None = getattr(store, "channel", None)
        fallback = self._verdicts.options.ttl_without_push
        self._push = channel if fallback is not None else None
        self._fallback_ttl = fallback or 0.0
        if self._push is not None:
            self._push.on_lost(self._verdicts.clear)

    def invalidate(self, key_id: str) -> None:
        """Forget every cached verification of `key_id` (called on revoke and rotate).

        `ALL_KEYS` forgets every cached verification.
        """
        if key_id == ALL_KEYS:
            self._verdicts.clear()
        else:
            self._verdicts.invalidate(key_id)

    def cached(self, raw: bytes) -> Grant | None:
        """The grant of a presented key whose verification is cached and live, else `None`.

        No I/O, never raises: a miss, a cached refusal or an oversized key is `None`,
        for `verify` to decide.
        """
        if len(raw) > MAX_KEY_LENGTH:
            return None
        return self._verdicts.positive.get(_digest(raw).digest(), self._clock())

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
            cache_hit()
            return grant
        reason = verdicts.negative.get(digest, now)
        if reason is not None:
            cache_hit()
            raise InvalidCredentials(reason=reason)
        cache_miss()
        return await verdicts.fill_or_stale(
            digest,
            lambda generation: self._lookup(raw, digest, generation),
            backend="key store",
            describe=_describe,
            log=logger,
        )

    async def _lookup(self, raw: bytes, digest: bytes, generation: int) -> Grant:
        try:
            parsed = parse_key(raw.decode("ascii"), self._prefixes)
        except UnicodeDecodeError:
            raise InvalidCredentials(reason="malformed") from None

        # One deadline for the lookup and the hash check. The store read runs in the
        # backoff, which records a read that passes the deadline as a failure, so that
        # a failing store is not asked again at once.
        begun = anyio.current_time()

        async def read() -> KeyRecord | None:
            with backend_call("store"):
                return await self.store.get(parsed.key_id)

        record = await self._backoff.call(read, deadline=self._deadline, what="key store")
        if record is None:
            self._refuse(digest, parsed.key_id, "unknown key", generation)
        if self._hasher.is_fast(record.secret_hash):
            ok, new_hash = self._hasher.verify(parsed.secret, record.secret_hash)
        else:
            try:
                with anyio.fail_after(self._deadline - (anyio.current_time() - begun)):
                    ok, new_hash = await self._verify_slowly(parsed.secret, record)
            except TimeoutError:
                raise BackendUnavailableError(
                    f"key store: no answer within {self._deadline:g} s"
                ) from None
        if not ok:
            self._refuse(digest, parsed.key_id, "wrong secret", generation)
        wall_now = utcnow()
        status = record.status(wall_now)
        if status != "active":
            self._refuse(digest, parsed.key_id, status, generation)

        grant = _grant(record, self._scope_sets)
        lifetime = trust_for = None
        if record.expires_at is not None:
            lifetime = (record.expires_at - wall_now).total_seconds()
        if self._push is not None and not self._push.connected:
            trust_for = self._fallback_ttl
        self._verdicts.allow(
            digest, grant, generation, tag=record.key_id, lifetime=lifetime, trust_for=trust_for
        )
        if new_hash is not None:
            self._new_hashes[record.key_id] = new_hash
            self.pending = True
        return grant

    async def _verify_slowly(self, secret: str, record: KeyRecord) -> tuple[bool, str | None]:
        key_id = record.key_id
        waiting = self._slow_waiting.get(key_id, 0)
        if self._slow_total >= self._slow_queue or waiting >= self._slow_per_key:
            # Shed rather than queue without bound: forged secrets for imported keys
            # must not make every other key wait behind their hashing.
            raise BackendUnavailableError("too many slow hash verifications under way")
        self._slow_total += 1
        self._slow_waiting[key_id] = waiting + 1
        try:
            return await anyio.to_thread.run_sync(
                self._hasher.verify, secret, record.secret_hash, limiter=self._slow_limiter
            )
        finally:
            self._slow_total -= 1
            if self._slow_waiting[key_id] == 1:
                del self._slow_waiting[key_id]
            else:
                self._slow_waiting[key_id] -= 1

    async def flush(self) -> None:
        """Write the pending hash migrations.

        Best effort and never raising: one pass over what is pending when it starts,
        bounded in all by `deadline`; a write that fails, or that the deadline cuts
        off, is logged and dropped (the key is migrated at its next verification).
        Concurrent calls while one runs return at once.
        """
        if self._flushing:
            return
        self._flushing = True
        new_hashes, self._new_hashes = self._new_hashes, {}
        done = 0
        try:
            with anyio.move_on_after(self._deadline):
                for key_id, secret_hash in new_hashes.items():
                    try:
                        await self.store.update_hash(key_id, secret_hash)
                        logger.info("migrated key hash to the default scheme (key_id=%s)", key_id)
                    except ApiGuardError:
                        logger.warning("could not migrate key hash (key_id=%s)", key_id)
                    except Exception:
                        logger.exception("could not migrate key hash (key_id=%s)", key_id)
                    done += 1
            if done < len(new_hashes):
                logger.warning(
                    "key store writes took longer than %g s; %d dropped",
                    self._deadline,
                    len(new_hashes) - done,
                )
        finally:
            self._flushing = False
            self.pending = bool(self._new_hashes)

    def _refuse(self, digest: bytes, key_id: str, reason: str, generation: int) -> NoReturn:
        self._verdicts.refuse(digest, reason, generation, tag=key_id)
        error = InvalidCredentials(reason=reason)
        error.credential_id = key_id
        raise error


def _describe(grant: Grant) -> str:
    return f"key_id={grant[0].key_id or ''}"


def _grant(record: KeyRecord, scope_sets: ScopeSets) -> Grant:
    """The grant of a verified key: its scopes shared, and the one empty metadata
    mapping for keys without metadata, so that a cached key stays small."""
    scopes, credentials = scope_sets.shared(record.scopes)
    principal = Principal(
        identity=record.key_id,
        kind="api_key",
        name=record.name,
        scopes=scopes,
        key_id=record.key_id,
        metadata=record.metadata or EMPTY_METADATA,
        claims=EMPTY_METADATA,
        rate_limit=record.rate_limit,
        quota=record.quota,
    )
    return principal, credentials
