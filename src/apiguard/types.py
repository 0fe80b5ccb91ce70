"""Type aliases and the protocols apiguard is extended through."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from apiguard.keys.record import KeyRecord
    from apiguard.keys.usage import Granularity, UsageBatch, UsageBucket
    from apiguard.tokens.info import TokenInfo

__all__ = [
    "ASGIApp",
    "KeyStore",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "TokenIntrospector",
    "UsageStore",
]


@runtime_checkable
class KeyStore(Protocol):
    """Where API key records live.

    A store holds `KeyRecord`s by key id. It never sees a full key or a secret, only
    the hash of the secret. Every method may raise `BackendUnavailableError` when the
    backing service cannot be reached; the middleware turns that into a 503.

    `apiguard.keys.BaseKeyStore` implements the listener part; `apiguard.testing`
    holds a contract test suite that any implementation can run.

    Optional: `async update_limits(key_id, *, rate_limit, quota) -> KeyRecord` sets a
    key's `rate_limit` and `quota` (`None` clears one), tells the listeners as a
    revoke does, and raises `KeyNotFoundError` for an unknown key. The stores that
    ship have it; `KeyManager.update_limits` and `apiguard keys update` need it.
    """

    async def get(self, key_id: str) -> KeyRecord | None:
        """Return the record with `key_id`, or `None` if there is none."""

    async def add(self, record: KeyRecord) -> None:
        """Store a new record. Raises `KeyStateError` if its key id is taken."""

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        """Return every record (or those with `name`), oldest first."""

    async def revoke(self, key_id: str, *, at: datetime) -> KeyRecord:
        """Mark the key revoked at `at` (kept if already revoked) and return the record.

        Raises `KeyNotFoundError` if there is no such key.
        """

    async def rotate(self, key_id: str, new: KeyRecord, *, old_expires_at: datetime) -> KeyRecord:
        """Add `new` and make the old key expire at `old_expires_at`, in one step.

        The old key keeps an earlier expiry if it has one. Returns the old record as
        updated. Raises `KeyNotFoundError` if there is no such key.
        """

    async def update_hash(self, key_id: str, secret_hash: str) -> None:
        """Replace the stored secret hash (used to migrate a key to the default scheme)."""

    async def record_usage(self, key_id: str, *, at: datetime) -> None:
        """Set the key's `last_used_at` to `at` if that is later."""

    def add_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(key_id)` whenever a key is revoked or its expiry changes.

        Verification caches subscribe here so that a revoke in this process takes
        effect at once. Returns a function that removes the listener.
        """

    async def aclose(self) -> None:
        """Release connections held by the store."""


@runtime_checkable
class UsageStore(Protocol):
    """A key store that also keeps request counts per key, hour and day (UTC).

    Every store that ships with apiguard is one. It is a protocol of its own so
    that a `KeyStore` written before it still works: with such a store the
    middleware keeps only `last_used_at` (through `record_usage`), and
    `apiguard keys usage` says that the store keeps no counts.
    """

    async def add_usage(self, batch: UsageBatch) -> None:
        """Add the batch's counts to the hourly and daily buckets; move `last_used_at` on.

        Additions must add up when several processes write at once (an atomic
        increment, never read-then-write). Buckets past the store's retention
        may be dropped.
        """

    async def usage(
        self, key_id: str, *, since: datetime, until: datetime, granularity: Granularity
    ) -> list[UsageBucket]:
        """The non-empty buckets of `key_id` that start in `[since, until)`, oldest first."""


@runtime_checkable
class TokenIntrospector(Protocol):
    """Turns a bearer token into a `TokenInfo`.

    `apiguard.tokens.JWTIntrospector` validates JWTs locally against the issuer's
    keys; `apiguard.tokens.RemoteIntrospector` asks the authorization server
    (RFC 7662). The two outcomes a caller must tell apart are distinct:

    - the token is not valid here: return `TokenInfo(active=False)` or raise
      `InvalidToken` (the client gets 401 `invalid_token`);
    - the answer cannot be had (the authorization server or its keys cannot be
      reached): raise `BackendUnavailableError` (the client gets 503).
    """

    async def introspect(self, token: str) -> TokenInfo:
        """Verify `token` and describe it."""

    async def aclose(self) -> None:
        """Release HTTP clients the introspector owns."""
