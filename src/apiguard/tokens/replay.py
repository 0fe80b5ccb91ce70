"""Replay stores: each DPoP proof (RFC 9449 §11.1) is accepted once.

A store remembers the proofs it has seen for as long as they could still be
accepted. `MemoryReplayStore` serves one process; `RedisReplayStore` is shared by
several workers (`SET NX PX`, one round trip). A store that cannot answer raises
`BackendUnavailableError`: the request gets 503, never a pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from apiguard._observe import backend_call
from apiguard.exceptions import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["MemoryReplayStore", "RedisReplayStore", "ReplayStore"]


@runtime_checkable
class ReplayStore(Protocol):
    """Where seen proof identifiers are kept, for DPoP replay detection."""

    async def first_use(self, key: bytes, ttl: float) -> bool:
        """Record `key` for `ttl` seconds; `True` if it was not recorded already.

        Raises `BackendUnavailableError` when the store cannot answer.
        """


class MemoryReplayStore:
    """Seen proofs in this process's memory, bounded.

    Entries expire after `ttl`; when `max_entries` unexpired entries are held, new
    proofs get 503 (`BackendUnavailableError`) rather than evicting entries that
    would let a proof be replayed. With several workers, use `RedisReplayStore`:
    each worker's memory sees only its own requests.

    Args:
        max_entries: The most proofs remembered at once (about 100 bytes each).
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ConfigurationError("max_entries must be at least 1")
        self._max = max_entries
        self._clock = clock
        # Insertion order is expiry order as long as the ttl does not change; a
        # shorter ttl later only keeps an entry a little longer, never less.
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    async def first_use(self, key: bytes, ttl: float) -> bool:
        now = self._clock()
        seen = self._seen
        while seen:
            oldest, expires = next(iter(seen.items()))
            if expires > now:
                break
            del seen[oldest]
        if key in seen:  # still there, so not expired
            return False
        if len(seen) >= self._max:
            raise BackendUnavailableError("DPoP replay store full")
        seen[key] = now + ttl
        return True


class RedisReplayStore:
    """Seen proofs in Redis, shared by every worker: one `SET key 1 NX PX ttl` each.

    Args:
        client: A `redis.asyncio.Redis` client (not closed by the store), or use
            `from_url()`.
        key_prefix: Put before every Redis key the store writes.
    """

    def __init__(self, client: aioredis.Redis, *, key_prefix: str = "apiguard:dpop:") -> None:
        self._client = client
        self._prefix = key_prefix.encode()
        self._owns_client = False

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str = "apiguard:dpop:", **client_options: Any
    ) -> RedisReplayStore:
        """A store at `url` (`redis://`, `rediss://`, `unix://`), owning its client.

        Connecting and each command give up after 2 s unless `client_options`
        (passed to `redis.asyncio.Redis.from_url`) say otherwise.

        Raises:
            ConfigurationError: redis-py is not installed, or the URL is malformed.
        """
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise ConfigurationError(
                "RedisReplayStore needs redis-py: pip install 'apiguard-asgi[redis]'"
            ) from exc
        client_options.setdefault("socket_connect_timeout", 2.0)
        client_options.setdefault("socket_timeout", 2.0)
        try:
            client = aioredis.Redis.from_url(url, **client_options)
        except ValueError:
            raise ConfigurationError("cannot open the DPoP replay store: bad URL") from None
        store = cls(client, key_prefix=key_prefix)
        store._owns_client = True
        return store

    async def first_use(self, key: bytes, ttl: float) -> bool:
        from redis import exceptions as redis_exceptions

        try:
            with backend_call("replay_store"):
                stored = await self._client.set(
                    self._prefix + key.hex().encode(), b"1", nx=True, px=max(1, int(ttl * 1000))
                )
        except (redis_exceptions.RedisError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            raise BackendUnavailableError(
                f"DPoP replay store unavailable: {type(exc).__name__}"
            ) from exc
        return bool(stored)

    async def aclose(self) -> None:
        """Close the client if the store opened it (`from_url`)."""
        if self._owns_client:
            await self._client.aclose()
