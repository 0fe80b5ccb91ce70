"""Sliding window counters in `limits`' synchronous memory storage, all or nothing.

`SlidingWindowCounterRateLimiter.hit()` then `get_window_stats()` reads each window
twice and builds its key twice. This goes one level down, to the storage's own
sliding-window API (`get_sliding_window`, `acquire_sliding_window_entry`): it reads
every window of a request once, tests them all (as `test()` does), acquires them
only when all have room, and works out the statistics from the window it read plus
the request (as `get_window_stats()` does). Nothing is awaited in between, so on one
event loop no other request counts between the test and the hits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from math import ceil, floor, inf

from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.util import WindowStats

__all__ = ["MemoryWindows", "window_stats"]

Window = tuple[int, float, int, float]  # previous count, its TTL, current count, its TTL (s)
_UNREAD = WindowStats(0, 0)  # for the limits before the refusing one: not reported


def window_stats(item: RateLimitItem, window: Window, now: float) -> WindowStats:
    """`SlidingWindowCounterRateLimiter.get_window_stats` on a window already read."""
    previous_count, previous_ttl, current_count, current_ttl = window
    expiry = item.get_expiry()
    weighted = previous_count * previous_ttl / expiry + current_count
    remaining = max(0, item.amount - floor(weighted))
    if not (previous_count or current_count):
        return WindowStats(now, remaining)
    previous_reset, current_reset = inf, inf
    if previous_count:
        previous_reset = previous_ttl % (expiry / previous_count)
    if current_count:
        current_reset = current_ttl % expiry
    return WindowStats(now + min(previous_reset, current_reset), remaining)


def has_room(item: RateLimitItem, window: Window) -> bool:
    """Whether one more request fits (`acquire_sliding_window_entry`'s test)."""
    previous_count, previous_ttl, current_count, _ = window
    return floor(previous_count * previous_ttl / item.get_expiry() + current_count) < item.amount


class MemoryWindows:
    """A request's sliding window counters on `limits`' memory storage."""

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def hit_one(self, item: RateLimitItem, key: str) -> tuple[int, int] | None:
        """One limit, the usual case: count the request and return the requests left
        and the whole seconds until more are allowed, or `None` if it has no room
        (then nothing was counted). `hit()`'s work without its lists and objects."""
        storage = self._storage
        expiry = item.get_expiry()
        window = storage.get_sliding_window(key, expiry)
        previous_count, previous_ttl, current_count, current_ttl = window
        used = floor(previous_count * previous_ttl / expiry + current_count)
        if used >= item.amount or not storage.acquire_sliding_window_entry(
            key, item.amount, expiry
        ):
            return None
        # `get_window_stats` on the window with this request in it.
        reset = current_ttl % expiry
        if previous_count:
            reset = min(reset, previous_ttl % (expiry / previous_count))
        return max(0, item.amount - used - 1), ceil(reset)

    def hit(
        self,
        items: Sequence[RateLimitItem],
        keys: Sequence[str],
        *,
        refuse: bool = False,
        read: bool = True,
    ) -> tuple[int | None, list[WindowStats]]:
        """Count one request against every item (`keys`: their `key_for`), or none.

        Returns the index of the refusing item, or `None`, and the statistics: the
        refusing item's (after `None`s' place-holders), or, when `read`, every
        item's after the request. `refuse`: refuse (index `len(items)`) if every item
        has room, for a quota that has none.
        """
        storage = self._storage
        if len(items) == 1 and not refuse:  # the usual case, without lists
            item, key = items[0], keys[0]
            expiry = item.get_expiry()
            if read:
                window = storage.get_sliding_window(key, expiry)
                if has_room(item, window) and storage.acquire_sliding_window_entry(
                    key, item.amount, expiry
                ):
                    after = (window[0], window[1], window[2] + 1, window[3])
                    return None, [window_stats(item, after, time.time())]
            elif storage.acquire_sliding_window_entry(key, item.amount, expiry):
                return None, []
            window = storage.get_sliding_window(key, expiry)
            return 0, [window_stats(item, window, time.time())]
        windows = [
            storage.get_sliding_window(key, item.get_expiry())
            for item, key in zip(items, keys, strict=True)
        ]
        for number, item in enumerate(items):
            if not has_room(item, windows[number]):
                stats = window_stats(item, windows[number], time.time())
                return number, [_UNREAD] * number + [stats]
        if refuse:
            return len(items), []
        for number, item in enumerate(items):
            if not storage.acquire_sliding_window_entry(
                keys[number], item.amount, item.get_expiry()
            ):  # pragma: no cover - only if the window moved on since the read above
                window = storage.get_sliding_window(keys[number], item.get_expiry())
                return number, [_UNREAD] * number + [window_stats(item, window, time.time())]
        if not read:
            return None, []
        now = time.time()
        return None, [
            window_stats(item, (window[0], window[1], window[2] + 1, window[3]), now)
            for item, window in zip(items, windows, strict=True)
        ]
