"""`FailedAuthLimit`: repeated failed authentication from one address is slowed down.

OWASP API2:2023 (broken authentication) asks for stricter limits on authentication
than on other requests: guessing keys or replaying stolen tokens must be slow. The
middleware asks this limit before a credential reaches the key store or the
authorization server, and counts each 401 for a bad credential against the client's
address. Once over the limit, requests with a credential from that address get 429
with `Retry-After` without being checked at all, good credentials included, until
the window has room again.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem
from limits import strategies as sync_strategies
from limits.aio import strategies as aio_strategies
from limits.util import WindowStats

from apiguard.exceptions import RateLimitExceeded
from apiguard.proxies import TrustedProxies
from apiguard.ratelimit.storage import LimitStorage, parse_limits
from apiguard.types import Scope

__all__ = ["FailedAuthLimit"]


class FailedAuthLimit:
    """How many failed authentications one client address may make.

    `AuthMiddleware(..., failed_auth_limit=FailedAuthLimit("10/minute"))`

    Args:
        limit: Failures allowed per address, in the `limits` notation
            (`"10/minute; 100/day"`).
        storage: `memory://`, a Redis URL shared by every worker, or a
            `LimitStorage` shared with the other limits.
        proxies: Your proxies, so that the address is the client's and not the
            proxy's (`TrustedProxies(["10.0.0.0/8"])`); by default the peer.

    Raises:
        ConfigurationError: The limit is not in the `limits` notation.
    """

    def __init__(
        self,
        limit: str = "10/minute",
        *,
        storage: str | LimitStorage = "memory://",
        proxies: TrustedProxies | None = None,
    ) -> None:
        self._items = parse_limits(limit)
        self._owns_storage = isinstance(storage, str)
        self.storage = LimitStorage(storage) if isinstance(storage, str) else storage
        self._memory: sync_strategies.SlidingWindowCounterRateLimiter | None = None
        self._redis: aio_strategies.SlidingWindowCounterRateLimiter | None = None
        if self.storage.memory is not None:
            self._memory = sync_strategies.SlidingWindowCounterRateLimiter(self.storage.memory)
        else:
            self._redis = aio_strategies.SlidingWindowCounterRateLimiter(self.storage.limits)  # type: ignore[arg-type]
        self.proxies = proxies or TrustedProxies()

    def _identifiers(self, scope: Scope) -> tuple[str, str]:
        return ("failed-auth", self.proxies.client_address(scope))

    async def check(self, scope: Scope) -> None:
        """Refuse with `RateLimitExceeded` if the client's address is over the limit."""
        identifiers = self._identifiers(scope)
        with self.storage.errors():
            for item in self._items:
                if not await self._test(item, identifiers):
                    stats = await self._stats(item, identifiers)
                    wait = max(1, math.ceil(stats.reset_time - time.time()))
                    raise RateLimitExceeded(wait, reason="too many failed authentications")

    async def _test(self, item: RateLimitItem, identifiers: tuple[str, str]) -> bool:
        if self._memory is not None:
            return self._memory.test(item, *identifiers)
        return await self._redis.test(item, *identifiers)  # type: ignore[union-attr]

    async def _stats(self, item: RateLimitItem, identifiers: tuple[str, str]) -> WindowStats:
        if self._memory is not None:
            return self._memory.get_window_stats(item, *identifiers)
        return await self._redis.get_window_stats(item, *identifiers)  # type: ignore[union-attr]

    async def failed(self, scope: Scope) -> None:
        """Count one failed authentication against the client's address."""
        identifiers = self._identifiers(scope)
        with self.storage.errors():
            for item in self._items:
                if self._memory is not None:
                    self._memory.hit(item, *identifiers)
                else:
                    await self._redis.hit(item, *identifiers)  # type: ignore[union-attr]

    async def aclose(self) -> None:
        """Close the storage's connections, if this limit opened the storage."""
        if self._owns_storage:
            await self.storage.aclose()
