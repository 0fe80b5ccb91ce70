"""Request counts per key: counted in memory, added up by the store in batches.

`UsageRecorder` counts the requests each key authenticated, per hour (UTC), in a
dict; the middleware calls `count(key_id)` once per request it lets through, and
`flush()` after a response once `UsageOptions.flush_interval` has passed, and at
lifespan shutdown. A flush hands the store one `UsageBatch`, which a `UsageStore`
adds to its hourly and daily buckets with atomic increments, so that counts from
several processes add up. `usage(key_id, since, until, granularity)` reads them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

import anyio

from apiguard.exceptions import ApiGuardError, ConfigurationError
from apiguard.types import KeyStore, UsageStore

__all__ = [
    "Granularity",
    "UsageBatch",
    "UsageBucket",
    "UsageOptions",
    "UsageRecorder",
    "UsageRetention",
    "bucket_start",
]

logger = logging.getLogger("apiguard.keys")

Granularity = Literal["hour", "day"]
GRANULARITIES: tuple[Granularity, ...] = ("hour", "day")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HOUR = 3600


@dataclass(frozen=True, slots=True)
class UsageOptions:
    """How request counts are kept before they are written.

    Attributes:
        flush_interval: Seconds between two writes of the counts (each process
            writes one batch per interval at most, after a response). A write that
            fails is tried again one interval later, the counts kept meanwhile.
        max_pending: How many (key, hour) counts may wait in memory. At the bound a
            key not counted yet is not counted (its request still succeeds), a write
            is started after the response, and the number of requests left uncounted
            is logged at WARNING.
    """

    flush_interval: float = 10.0
    max_pending: int = 10_000

    def __post_init__(self) -> None:
        if self.flush_interval <= 0 or self.max_pending < 1:
            raise ConfigurationError(
                "usage flush_interval must be positive and max_pending at least 1"
            )


@dataclass(frozen=True, slots=True)
class UsageRetention:
    """How long a store keeps request counts.

    Attributes:
        hourly: How long hourly buckets are kept, from their start.
        daily: How long daily buckets are kept, from their start.
    """

    hourly: timedelta = timedelta(days=14)
    daily: timedelta = timedelta(days=400)

    def __post_init__(self) -> None:
        if self.hourly < timedelta(hours=1) or self.daily < timedelta(days=1):
            raise ConfigurationError("usage retention is at least an hour and a day")


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """The requests one key made in one hour or day (UTC).

    Attributes:
        start: The bucket's start: a whole hour, or midnight, UTC.
        count: Requests counted in it.
    """

    start: datetime
    count: int


@dataclass(frozen=True, slots=True)
class UsageBatch:
    """Counts to add to a store in one write.

    Attributes:
        hours: Per key id, requests per hour (the hour's start, UTC). A store adds
            each to that hour's bucket and to its day's bucket.
        last_used: Per key id, when it was last used (to within the flush
            interval); a store moves `last_used_at` forward to it, never back.
    """

    hours: Mapping[str, Mapping[datetime, int]]
    last_used: Mapping[str, datetime]


def bucket_start(at: datetime, granularity: Granularity) -> datetime:
    """The start (UTC) of the hour or day that `at` falls in."""
    at = at.astimezone(timezone.utc)
    if granularity == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def check_range(since: datetime, until: datetime, granularity: str) -> None:
    """Raise `ValueError` for a query a store should not answer."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity is 'hour' or 'day', not {granularity!r}")
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")


def day_totals(hours: Mapping[datetime, int]) -> dict[datetime, int]:
    """Hourly counts summed per day."""
    days: dict[datetime, int] = {}
    for hour, count in hours.items():
        day = bucket_start(hour, "day")
        days[day] = days.get(day, 0) + count
    return days


class UsageRecorder:
    """Counts authenticated requests per key and hour, and writes them in batches.

    `count(key_id)` is the per-request part: one clock read and one dict update,
    no I/O. `flush()` writes what is pending and never raises; a write that fails
    or overruns `deadline` is logged at WARNING and tried again at the next flush,
    its counts kept. A store that is no `UsageStore` keeps only the last-use
    times (through `record_usage`); its counts are dropped, as logged once here.

    Args:
        store: Where the counts go.
        options: Flush interval and the bound on pending counts.
        deadline: Seconds one flush may take.
    """

    def __init__(
        self,
        store: KeyStore,
        options: UsageOptions | None = None,
        *,
        deadline: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        options = options or UsageOptions()
        self.store = store
        self._usage_store = store if isinstance(store, UsageStore) else None
        if self._usage_store is None:
            logger.warning(
                "%s keeps no request counts (it has no add_usage and usage methods,"
                " see apiguard.types.UsageStore): only last-use times are written",
                type(store).__name__,
            )
        self._interval = options.flush_interval
        self._max = options.max_pending
        self._deadline = deadline
        self._clock = clock
        self._wall = wall_clock
        now, wall = clock(), wall_clock()
        self._hour = int(wall // _HOUR)
        self._counts: dict[str, int] = {}
        # Counts of finished hours and of past flushes that failed: (key id, hour) -> n.
        self._pending: dict[tuple[str, int], int] = {}
        self._last_used: dict[str, float] = {}
        self._held = 0  # entries in _pending and in a write under way
        self._in_flight = 0
        self._dropped = 0
        self._flushing = False
        self._flush_at = now + self._interval
        self._next_tick = min(self._flush_at, now + _HOUR - wall % _HOUR)
        self.pending = False
        """Whether `flush()` is due."""
        before_close = getattr(store, "before_close", None)
        if before_close is not None:  # BaseKeyStore: a final flush in `aclose()`
            before_close(self.flush)

    def count(self, key_id: str) -> None:
        """Count one request authenticated by `key_id`."""
        now = self._clock()
        if now >= self._next_tick:
            self._tick(now)
        counts = self._counts
        seen = counts.get(key_id)
        if seen is not None:
            counts[key_id] = seen + 1
        elif len(counts) + self._held < self._max or (key_id, self._hour) in self._pending:
            counts[key_id] = 1  # a key whose counts wait already takes no more room
        else:
            self._dropped += 1
            self.pending = not self._flushing  # write early, to make room

    def _tick(self, now: float) -> None:
        """An hour ended (its counts are set aside) or a flush is due; rare."""
        wall = self._wall()
        if int(wall // _HOUR) != self._hour:
            # Everything counted so far was counted before the hour ended.
            self._set_aside(min(wall, (self._hour + 1) * _HOUR - 1e-6))
            self._hour = int(wall // _HOUR)
        if now >= self._flush_at:
            self.pending = True
            self._flush_at = now + self._interval
        self._next_tick = min(self._flush_at, now + _HOUR - wall % _HOUR)

    def _set_aside(self, wall: float) -> None:
        """Move the current hour's counts to the pending ones."""
        counts, self._counts = self._counts, {}
        pending, hour, last_used = self._pending, self._hour, self._last_used
        for key_id, count in counts.items():
            entry = (key_id, hour)
            pending[entry] = pending.get(entry, 0) + count
            last_used[key_id] = max(wall, last_used.get(key_id, wall))
        self._held = len(pending) + self._in_flight

    async def flush(self) -> None:
        """Write every pending count and last-use time; never raises.

        Concurrent calls while one runs return at once.
        """
        if self._flushing:
            return
        self._flushing = True
        self.pending = False
        wall = self._wall()
        if int(wall // _HOUR) != self._hour:
            self._set_aside(min(wall, (self._hour + 1) * _HOUR - 1e-6))
            self._hour = int(wall // _HOUR)
        else:
            self._set_aside(wall)
        counts, self._pending = self._pending, {}
        last_used, self._last_used = self._last_used, {}
        dropped, self._dropped = self._dropped, 0
        self._in_flight = len(counts)
        try:
            if dropped:
                logger.warning(
                    "%d requests not counted: %d key usage counts were waiting to be written"
                    " (UsageOptions.max_pending)",
                    dropped,
                    self._max,
                )
            if (counts or last_used) and not await self._write(counts, last_used):
                self._keep(counts, last_used)
        finally:
            self._in_flight = 0
            self._held = len(self._pending)
            self._flushing = False
            self._flush_at = self._clock() + self._interval
            self._next_tick = min(self._next_tick, self._flush_at)

    async def _write(self, counts: dict[tuple[str, int], int], last_used: dict[str, float]) -> bool:
        hours: dict[str, dict[datetime, int]] = {}
        for (key_id, hour), count in counts.items():
            hours.setdefault(key_id, {})[_EPOCH + timedelta(hours=hour)] = count
        used = {
            key_id: datetime.fromtimestamp(at, timezone.utc) for key_id, at in last_used.items()
        }
        failure = f"did not answer within {self._deadline:g} s"
        with anyio.move_on_after(self._deadline):
            try:
                if self._usage_store is not None:
                    await self._usage_store.add_usage(UsageBatch(hours=hours, last_used=used))
                else:
                    for key_id, at in used.items():
                        await self.store.record_usage(key_id, at=at)
            except ApiGuardError as exc:
                failure = type(exc).__name__
            except Exception as exc:
                logger.warning("key usage write failed", exc_info=exc)
                failure = type(exc).__name__
            else:
                return True
        logger.warning(
            "could not record key usage (%s): %d counts kept, tried again in %g s",
            failure,
            len(counts),
            self._interval,
        )
        return False

    def _keep(self, counts: dict[tuple[str, int], int], last_used: dict[str, float]) -> None:
        """Put the counts of a failed write back, for the next flush."""
        pending = self._pending
        for entry, count in counts.items():
            pending[entry] = pending.get(entry, 0) + count
        for key_id, at in last_used.items():
            self._last_used[key_id] = max(at, self._last_used.get(key_id, at))


def in_range(
    buckets: Mapping[datetime, int], since: datetime, until: datetime
) -> list[UsageBucket]:
    """The buckets that start in `[since, until)`, oldest first."""
    return [
        UsageBucket(start, count)
        for start, count in sorted(buckets.items())
        if since <= start < until and count
    ]
