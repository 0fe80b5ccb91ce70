"""One Redis round trip per limit: hit and window read of the sliding window counter.

`limits`' public API takes two round trips to count a request and say how much is
left (`hit()`, then `get_window_stats()`), and redis-py's pipelines of `Script`
objects add a third (`SCRIPT EXISTS` before every execution). This sends `limits`'
own two Lua scripts for the strategy (acquire, then read the window) by their SHA in
one pipeline, on the same keys `limits` uses, and computes the window statistics as
`SlidingWindowCounterRateLimiter.get_window_stats` does. Counting stays `limits`';
only the transport is ours.
"""

from __future__ import annotations

import time
from math import floor, inf

import redis.asyncio as aioredis
from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.util import WindowStats
from redis.exceptions import NoScriptError

__all__ = ["SlidingWindowPipeline"]


class SlidingWindowPipeline:
    """Sliding-window-counter hits on a `limits` Redis storage, sent through `client`
    (a client on the same server: the `LimitStorage`'s)."""

    def __init__(self, storage: RedisStorage, client: aioredis.Redis) -> None:
        self._storage = storage
        self._bridge = storage.bridge
        self._client = client
        # limits registers these on its client; the SHA and source are all we use.
        self._acquire = self._bridge.lua_acquire_sliding_window  # type: ignore[attr-defined]
        self._window = self._bridge.lua_sliding_window  # type: ignore[attr-defined]
        self._loaded = False

    def _keys(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> tuple[str, str]:
        key = item.key_for(*identifiers)
        return (
            self._bridge.prefixed_key(self._storage._previous_window_key(key)),
            self._bridge.prefixed_key(self._storage._current_window_key(key)),
        )

    async def _load(self) -> None:
        # Both together, so that a server that lost one (a restart, SCRIPT FLUSH) lost
        # both, and the retry below never runs an acquire twice.
        for script in (self._acquire, self._window):
            script.sha = await self._client.script_load(script.script)
        self._loaded = True

    async def hit(self, item: RateLimitItem, *identifiers: str) -> tuple[bool, WindowStats]:
        """Count one request against `item`; whether it was allowed, and the window after."""
        previous, current = self._keys(item, identifiers)
        expiry = item.get_expiry()
        if not self._loaded:
            await self._load()
        try:
            acquired, window = await self._send(previous, current, item.amount, expiry)
        except NoScriptError:
            await self._load()
            acquired, window = await self._send(previous, current, item.amount, expiry)
        return bool(acquired), _stats(item, window)

    async def _send(
        self, previous: str, current: str, amount: int, expiry: int
    ) -> tuple[object, list[object]]:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._acquire.sha, 2, previous, current, amount, expiry, 1)
            pipe.evalsha(self._window.sha, 2, previous, current, expiry)
            acquired, window = await pipe.execute()
        return acquired, window


def _stats(item: RateLimitItem, window: list[object]) -> WindowStats:
    """`SlidingWindowCounterRateLimiter.get_window_stats` on a `sliding_window.lua` answer
    (previous count, previous TTL in ms, current count, current TTL in ms)."""
    previous_count = int(window[0] or 0)  # type: ignore[call-overload]
    previous_ttl = max(0.0, float(window[1] or 0)) / 1000  # type: ignore[arg-type]
    current_count = int(window[2] or 0)  # type: ignore[call-overload]
    current_ttl = max(0.0, float(window[3] or 0)) / 1000  # type: ignore[arg-type]
    expiry = item.get_expiry()
    weighted = previous_count * previous_ttl / expiry + current_count
    remaining = max(0, item.amount - floor(weighted))
    now = time.time()
    if not (previous_count or current_count):
        return WindowStats(now, remaining)
    previous_reset, current_reset = inf, inf
    if previous_count:
        previous_reset = previous_ttl % (expiry / previous_count)
    if current_count:
        current_reset = current_ttl % expiry
    return WindowStats(now + min(previous_reset, current_reset), remaining)
