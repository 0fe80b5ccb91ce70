"""`KeyManager`: the key lifecycle (create, list, show, update, revoke, rotate), for the CLI and apps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from apiguard.exceptions import ConfigurationError, KeyNotFoundError, KeyStateError
from apiguard.keys.format import DEFAULT_PREFIX, generate_key, validate_prefix
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.record import KeyRecord, utcnow
from apiguard.policies import validate_scopes
from apiguard.types import KeyStore

__all__ = ["IssuedKey", "KeyManager"]

MAX_NAME_LENGTH = 255
MAX_LIMIT_LENGTH = 255  # the SQL store's column width


def validate_limits(rate_limit: str | None, quota: str | None) -> None:
    """Refuse a rate limit or a quota that `apiguard.ratelimit` could not read.

    Raises:
        ConfigurationError: Either is malformed or too long, or the `ratelimit`
            extra is not installed.
    """
    for value in (rate_limit, quota):
        if value is not None and len(value) > MAX_LIMIT_LENGTH:
            raise ConfigurationError(f"at most {MAX_LIMIT_LENGTH} characters: {value[:20]!r}...")
    if rate_limit is not None:
        from apiguard.ratelimit.storage import parse_limits

        parse_limits(rate_limit)
    if quota is not None:
        from apiguard.ratelimit.quota import parse_quota

        parse_quota(quota)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created or rotated: `key` is the full key, shown this once and never again."""

    key: str = field(repr=False)
    record: KeyRecord


class KeyManager:
    """Creates, lists, revokes and rotates API keys in a store.

    A revoke or rotate made through a manager reaches every verification cache
    subscribed to the same store object at once (same process); other processes
    see it within their cache TTL.

    Args:
        store: The key store.
        hasher: Hashes new secrets; it must use the pepper the middleware uses.
            Defaults to a `KeyHasher()` reading `APIGUARD_PEPPER`, made when a key
            is first created or rotated (listing and revoking need no pepper).
        prefix: The prefix of generated keys.
    """

    def __init__(
        self, store: KeyStore, hasher: KeyHasher | None = None, *, prefix: str = DEFAULT_PREFIX
    ) -> None:
        self.store = store
        self._hasher = hasher
        self._prefix = validate_prefix(prefix)

    def _new_record(
        self,
        name: str,
        scopes: Iterable[str],
        expires_in: timedelta | None,
        metadata: Mapping[str, Any] | None,
        rate_limit: str | None = None,
        quota: str | None = None,
    ) -> tuple[str, KeyRecord]:
        if not name or len(name) > MAX_NAME_LENGTH:
            raise ConfigurationError(f"a key name must be 1 to {MAX_NAME_LENGTH} characters")
        if expires_in is not None and expires_in <= timedelta(0):
            raise ConfigurationError("expires_in must be positive")
        validate_limits(rate_limit, quota)
        if self._hasher is None:
            self._hasher = KeyHasher()
        generated = generate_key(self._prefix)
        now = utcnow()
        record = KeyRecord(
            key_id=generated.key_id,
            name=name,
            secret_hash=self._hasher.hash(generated.secret),
            scopes=validate_scopes(scopes),
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            metadata=MappingProxyType(dict(metadata or {})),
            rate_limit=rate_limit,
            quota=quota,
        )
        return generated.value, record

    async def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] = (),
        expires_in: timedelta | None = None,
        metadata: Mapping[str, Any] | None = None,
        rate_limit: str | None = None,
        quota: str | None = None,
    ) -> IssuedKey:
        """Create a key for `name` (an owner may hold several) and return it, once.

        `rate_limit` (`"100/minute; 5000/day"`) and `quota` (`"100000/month"`) are
        the key's own limits, read by `apiguard.ratelimit.RateLimits` and `Quotas`.
        """
        key, record = self._new_record(name, scopes, expires_in, metadata, rate_limit, quota)
        await self.store.add(record)
        return IssuedKey(key, record)

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        """Every key record, or those of `name`, oldest first."""
        return await self.store.list(name=name)

    async def get(self, key_id: str) -> KeyRecord:
        """The record of `key_id`. Raises `KeyNotFoundError` if there is none."""
        record = await self.store.get(key_id)
        if record is None:
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        return record

    async def update_limits(
        self, key_id: str, *, rate_limit: str | None, quota: str | None
    ) -> KeyRecord:
        """Set the key's own rate limit and quota (`None` clears one: the policy's
        default applies again). Servers pick the change up within their cache TTL,
        at once in this process and where the store pushes changes."""
        validate_limits(rate_limit, quota)
        # Optional in the KeyStore protocol: stores written before it lack it.
        update = getattr(self.store, "update_limits", None)
        if update is None:
            raise ConfigurationError(
                f"{type(self.store).__name__} cannot change a key's limits: it has no"
                " update_limits() (see apiguard.types.KeyStore)"
            )
        record: KeyRecord = await update(key_id, rate_limit=rate_limit, quota=quota)
        return record

    async def revoke(self, key_id: str) -> KeyRecord:
        """Revoke `key_id` now; it is refused from the next request on."""
        return await self.store.revoke(key_id, at=utcnow())

    async def rotate(self, key_id: str, *, grace: timedelta = timedelta(hours=24)) -> IssuedKey:
        """Issue a new key with the same name, scopes, expiry period and metadata.

        The old key keeps working until `grace` has passed (or its own expiry, if
        sooner), then it is refused. `grace=timedelta(0)` retires it at once.
        """
        if grace < timedelta(0):
            raise ConfigurationError("grace cannot be negative")
        old = await self.get(key_id)
        status = old.status()
        if status != "active":
            raise KeyStateError(f"key {key_id!r} is {status}; only an active key can be rotated")
        lifetime = None if old.expires_at is None else old.expires_at - old.created_at
        key, new = self._new_record(
            old.name, old.scopes, lifetime, old.metadata, old.rate_limit, old.quota
        )
        await self.store.rotate(key_id, new, old_expires_at=new.created_at + grace)
        return IssuedKey(key, new)
