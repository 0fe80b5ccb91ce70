"""`KeyRecord`: what a key store holds for one API key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["EMPTY_METADATA", "KeyRecord", "KeyStatus", "utcnow"]

KeyStatus = Literal["active", "expired", "revoked"]

EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})
"""The metadata of every key without any: one shared read-only empty mapping."""


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored: everything but the key itself.

    Attributes:
        key_id: The non-secret identifier embedded in the key, used for lookup and display.
        name: The key's name or owner. An owner may hold several keys.
        secret_hash: The hash of the key's secret, in a passlib format. Never shown.
        scopes: The scopes the key grants.
        created_at: When the key was created (UTC).
        expires_at: When the key stops working, or `None` for never.
        revoked_at: When the key was revoked, or `None`.
        last_used_at: When the key last authenticated a request, to the verification
            cache's precision (its positive TTL), or `None`.
        metadata: JSON-serializable data handed to the app in `Principal.metadata`.
        rate_limit: The key's own rate limits, in the `limits` notation
            (`"100/minute; 5000/day"`), instead of the `RateLimits` policy's
            default; `None` for the default.
        quota: The key's request quota per calendar period (`"100000/month"`,
            `"1000/day"`), enforced by the `Quotas` policy; `None` for none.
    """

    key_id: str
    name: str
    secret_hash: str = field(repr=False)
    scopes: frozenset[str] = frozenset()
    created_at: datetime = field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: EMPTY_METADATA)
    rate_limit: str | None = None
    quota: str | None = None

    def status(self, now: datetime | None = None) -> KeyStatus:
        """Whether the key is `"active"`, `"expired"` or `"revoked"` at `now`."""
        now = now or utcnow()
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"
