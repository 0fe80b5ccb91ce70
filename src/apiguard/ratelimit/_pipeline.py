"""All of a request's limits in one Redis round trip: one Lua script, all or nothing.

`limits`' public API takes a round trip per limit (`hit()`), and one more to say
how much is left (`get_window_stats()`); a refusal by the second limit of a request
leaves it counted by the first. This sends one script for every sliding window
counter of the request (and the caller's quota, when `RateLimits` holds `Quotas`):
it moves each window on as `limits`' `acquire_sliding_window.lua` does, tests them
all, and increments them only when every one has room, then answers with each
window as `limits`' `sliding_window.lua` reads it. The keys, counters and expiries
are `limits`' own (`SlidingWindowCounterRateLimiter` on the same storage reads and
moves the same windows); only the transport and the all-or-nothing are ours. The
window statistics are computed as `SlidingWindowCounterRateLimiter.get_window_stats`
does (`apiguard.ratelimit._windows.window_stats`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.util import WindowStats

from apiguard.ratelimit._windows import window_stats

__all__ = ["Counted", "RedisWindows"]

# KEYS: previous and current window of each limit, then the quota counter (if any).
# ARGV: the number of limits; per limit its amount and expiry (s); then the quota's
# amount and the second its counter expires at (if any).
# Answer: the 1-based number of the refusing limit (the quota is number n + 1) or 0,
# the quota's count after (or -1), then per limit: previous count, previous TTL (ms),
# current count, current TTL (ms).
_SCRIPT = """
local n = tonumber(ARGV[1])
local refused = 0
local windows = {}
for i = 1, n do
    local previous, current = KEYS[2 * i - 1], KEYS[2 * i]
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1]) * 1000
    local current_ttl = tonumber(redis.call('pttl', current))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', current, previous)
        redis.call('set', current, 0, 'PX', current_ttl + expiry)
    end
    local previous_count = tonumber(redis.call('get', previous)) or 0
    local previous_ttl = tonumber(redis.call('pttl', previous)) or 0
    local current_count = tonumber(redis.call('get', current)) or 0
    current_ttl = tonumber(redis.call('pttl', current)) or 0
    if previous_ttl < 0 then previous_ttl = 0 end
    if current_ttl < 0 then current_ttl = 0 end
    local weighted = math.floor(previous_count * previous_ttl / expiry) + current_count
    if refused == 0 and weighted + 1 > limit then
        refused = i
    end
    windows[i] = {previous_count, previous_ttl, current_count, current_ttl, expiry}
end
local used = -1
local quota = KEYS[2 * n + 1]
if quota then
    used = tonumber(redis.call('get', quota)) or 0
    if refused == 0 and used + 1 > tonumber(ARGV[2 * n + 2]) then
        refused = n + 1
    end
end
if refused == 0 then
    for i = 1, n do
        local current = KEYS[2 * i]
        if redis.call('exists', current) == 1 then
            redis.call('incrby', current, 1)
        else
            redis.call('set', current, 1, 'PX', windows[i][5] * 2)
            windows[i][4] = windows[i][5] * 2
        end
        windows[i][3] = windows[i][3] + 1
    end
    if quota then
        used = redis.call('incrby', quota, 1)
        redis.call('expireat', quota, ARGV[2 * n + 3])
    end
end
local answer = {refused, used}
for i = 1, n do
    for j = 1, 4 do
        answer[#answer + 1] = windows[i][j]
    end
end
return answer
"""


class Counted:
    """What the script said: `refused` is the index of the refusing check (the
    quota's is `len(checks)`), or `None`; `stats` are the windows after, per check;
    `used` the quota's count after (or before, when refused), `-1` without a quota."""

    __slots__ = ("refused", "stats", "used")

    def __init__(self, refused: int | None, stats: list[WindowStats], used: int) -> None:
        self.refused = refused
        self.stats = stats
        self.used = used


class RedisWindows:
    """Sliding-window-counter hits on a `limits` Redis storage, sent through `client`
    (a client on the same server: the `LimitStorage`'s)."""

    def __init__(self, storage: RedisStorage, client: aioredis.Redis) -> None:
        self._storage = storage
        self._bridge = storage.bridge
        # EVALSHA; on NOSCRIPT (a restart, SCRIPT FLUSH) SCRIPT LOAD and EVALSHA again.
        self._script = client.register_script(_SCRIPT)

    def _keys(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> tuple[str, str]:
        key = item.key_for(*identifiers)
        return (
            self._bridge.prefixed_key(self._storage._previous_window_key(key)),
            self._bridge.prefixed_key(self._storage._current_window_key(key)),
        )

    async def hit(
        self,
        checks: Sequence[tuple[RateLimitItem, tuple[str, ...]]],
        quota: tuple[str, int, int] | None = None,
    ) -> Counted:
        """Count one request against every check and `quota` (its counter's key,
        amount and expiry second), or against none if one of them has no room."""
        keys: list[str] = []
        args: list[int] = [len(checks)]
        for item, identifiers in checks:
            keys += self._keys(item, identifiers)
            args += (item.amount, item.get_expiry())
        if quota is not None:
            keys.append(quota[0])
            args += (quota[1], quota[2])
        answer = await self._script(keys, args)
        now = time.time()
        stats = [
            _stats(item, answer[2 + 4 * number : 6 + 4 * number], now)
            for number, (item, _) in enumerate(checks)
        ]
        refused = int(answer[0])
        return Counted(refused - 1 if refused else None, stats, int(answer[1]))


def _stats(item: RateLimitItem, window: list[int], now: float) -> WindowStats:
    """The statistics of a window as the script answers it (TTLs in ms)."""
    counts = (int(window[0]), int(window[1]) / 1000, int(window[2]), int(window[3]) / 1000)
    return window_stats(item, counts, now)
