"""Rate limits, quotas and failed-authentication limits (`pip install 'apiguard-asgi[ratelimit]'`).

- `RateLimits`: requests per caller per window (`"100/minute; 5000/day"`), per key
  and per route, in memory or shared through Redis; 429 with `Retry-After` and the
  RateLimit header fields.
- `Quotas`: requests per caller per calendar month or day.
- `FailedAuthLimit`: failed authentications per client address, checked before the
  credential reaches the key store or the authorization server.
- `LimitStorage`: where the counters live (`memory://`, `redis://`), shared by all three.

Counting goes through the `limits` library (asyncio only: run on asyncio, not trio).
"""

from __future__ import annotations

from apiguard.ratelimit._fields import HeaderStyle
from apiguard.ratelimit.failures import FailedAuthLimit
from apiguard.ratelimit.policy import RateLimits, RouteLimit, Strategy
from apiguard.ratelimit.quota import Quota, Quotas, QuotaUsage, parse_quota
from apiguard.ratelimit.storage import LimitStorage, parse_limits

__all__ = [
    "FailedAuthLimit",
    "HeaderStyle",
    "LimitStorage",
    "Quota",
    "QuotaUsage",
    "Quotas",
    "RateLimits",
    "RouteLimit",
    "Strategy",
    "parse_limits",
    "parse_quota",
]
