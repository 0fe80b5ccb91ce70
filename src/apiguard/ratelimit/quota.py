"""`Quotas`: requests per calendar month or day, for billing-style plans.

A quota (`"100000/month"`, `"1000/day"`) resets at the start of each calendar month
or day in UTC. The `limits` library cannot say that: its `month` is a fixed 30
days counted from a caller's first request (`RateLimitItemPerMonth.get_expiry()` is
2 592 000 s) and its windows are not aligned to the calendar. So the quota counter
is its own: one Redis key per caller and period, named by the period
(`apiguard:quota:api_key:<key id>:2026-11`), incremented with `INCR` and set to
expire with `EXPIREAT` a day after the period ends, both in one pipelined round
trip. In memory the same counter is a dict.

A refused request is not counted: the counter is decremented again, so `used` is
the number of requests the quota let through. Given to `RateLimits(quotas=...)`, the
same counter is tested and incremented in the rate limits' one Redis script instead
(`apiguard.ratelimit._pipeline`), all or nothing with them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from apiguard.exceptions import ConfigurationError, RateLimitExceeded
from apiguard.principal import Principal
from apiguard.proxies import TrustedProxies
from apiguard.ratelimit._fields import LimitState, rate_limit_fields
from apiguard.ratelimit.policy import ResponseHeaders, partition_key
from apiguard.ratelimit.storage import LimitStorage
from apiguard.types import Scope

__all__ = ["Quota", "QuotaUsage", "Quotas", "parse_quota"]

Period = Literal["month", "day"]
_QUOTA = re.compile(r"\s*(\d+)\s*(?:/|per)\s*(month|day)\s*", re.I)
# Counters outlive their period by a day: `keys show` can still read last period's.
_KEEP = 86400


@dataclass(frozen=True, slots=True)
class Quota:
    """A number of requests per calendar period (UTC)."""

    amount: int
    period: Period

    def bounds(self, now: float) -> tuple[datetime, datetime]:
        """The start and end of the period holding `now` (seconds since the epoch)."""
        moment = datetime.fromtimestamp(now, timezone.utc)
        if self.period == "day":
            start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            end = datetime.fromtimestamp(start.timestamp() + 86400, timezone.utc)
            return start, end
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if start.month == 12:
            return start, start.replace(year=start.year + 1, month=1)
        return start, start.replace(month=start.month + 1)

    def label(self, start: datetime) -> str:
        """The period's name in counter keys: `2026-11`, or `2026-11-30` for a day."""
        return start.strftime("%Y-%m" if self.period == "month" else "%Y-%m-%d")

    def __str__(self) -> str:
        return f"{self.amount}/{self.period}"


def parse_quota(text: str) -> Quota:
    """`"100000/month"` or `"1000/day"` (also `"1000 per day"`) as a `Quota`.

    Raises:
        ConfigurationError: Anything else, or an amount of 0.
    """
    match = _QUOTA.fullmatch(text)
    if match is None or int(match[1]) <= 0:
        raise ConfigurationError(f"not a quota: {text!r} (write e.g. '100000/month' or '1000/day')")
    period: Period = "month" if match[2].lower() == "month" else "day"
    return Quota(int(match[1]), period)


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """How much of a quota a caller used in the current period.

    Attributes:
        quota: The quota.
        used: Requests counted this period.
        remaining: Requests left this period.
        period_start: When the period began (UTC).
        resets_at: When the next period begins (UTC).
    """

    quota: Quota
    used: int
    remaining: int
    period_start: datetime
    resets_at: datetime


@dataclass(frozen=True, slots=True)
class _Pending:
    """A request's quota counter: the quota, the counter's key, when the counter
    expires (seconds since the epoch), and seconds until the next period."""

    quota: Quota
    key: str
    expire_at: int
    reset: int


class Quotas:
    """A policy (`AuthMiddleware(policies=[...])`) enforcing per-caller request quotas.

    `Quotas("100000/month", storage="redis://localhost:6379/0")`

    The quota of an API key is its record's `quota` when it has one, else
    `default`. Over it, 429 with `Retry-After` to the start of the next period.

    Args:
        default: The quota of callers without their own (`"100000/month"`,
            `"1000/day"`), or `None` for none.
        storage: `memory://`, a Redis URL shared by every worker, or a
            `LimitStorage` shared with `RateLimits`.
        headers: Send `RateLimit-Policy`/`RateLimit` fields for the quota
            (draft-ietf-httpapi-ratelimit-headers-10; no `w`, since a month has
            no fixed length), on allowed responses and refusals.
        proxies: Who the client is behind your proxies, for anonymous callers.
        clock: Seconds since the epoch; replace it in tests.
    """

    def __init__(
        self,
        default: str | None = None,
        *,
        storage: str | LimitStorage = "memory://",
        headers: bool = True,
        proxies: TrustedProxies | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._default = None if default is None else parse_quota(default)
        self._owns_storage = isinstance(storage, str)
        self.storage = LimitStorage(storage) if isinstance(storage, str) else storage
        self._headers = headers
        self._proxies = proxies or TrustedProxies()
        self._clock = clock
        self._memory: dict[str, tuple[int, float]] = {}  # key -> (count, expires at)
        # Period -> (start, end, label) of the current one.
        self._periods: dict[Period, tuple[float, float, str]] = {}

    def _quota(self, principal: Principal) -> Quota | None:
        if principal.quota:
            return parse_quota(principal.quota)
        return self._default

    def _key(self, partition: str, quota: Quota, start: datetime) -> str:
        return f"{self.storage.key_prefix}quota:{partition}:{quota.label(start)}"

    async def _add(self, key: str, amount: int, expire_at: int) -> int:
        with self.storage.errors():
            async with self.storage.redis.pipeline(transaction=True) as pipe:  # type: ignore[union-attr]
                pipe.incrby(key, amount)
                pipe.expireat(key, expire_at)
                count, _ = await pipe.execute()
        return int(count)

    def _pending(self, principal: Principal, scope: Scope) -> _Pending | None:
        """The caller's quota counter for this request, or `None` without a quota."""
        quota = self._quota(principal)
        if quota is None:
            return None
        now = self._clock()
        period = self._periods.get(quota.period)
        if period is None or not period[0] <= now < period[1]:
            # Worked out once a period, not per request (datetime is not cheap).
            start, end = quota.bounds(now)
            period = (start.timestamp(), end.timestamp(), quota.label(start))
            self._periods[quota.period] = period
        partition = partition_key(principal, scope, self._proxies)
        key = f"{self.storage.key_prefix}quota:{partition}:{period[2]}"
        reset = max(1, math.ceil(period[1] - now))
        return _Pending(quota, key, int(period[1]) + _KEEP, reset)

    def _answer(self, pending: _Pending, used: int, refused: bool) -> ResponseHeaders | None:
        """The fields for a counted request, or `RateLimitExceeded` for a refused one
        (`used`: the count after the request, or before it when refused)."""
        quota = pending.quota
        remaining = 0 if refused else quota.amount - min(used, quota.amount)
        state = LimitState("quota", quota.amount, None, remaining, pending.reset)
        if refused:
            fields = rate_limit_fields([state], "draft" if self._headers else "none")
            raise RateLimitExceeded(pending.reset, tuple(fields), reason="quota")
        if not self._headers:
            return None
        return [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in rate_limit_fields([state], "draft")
        ]

    def _memory_room(self, pending: _Pending) -> bool:
        """Whether an in-memory quota has room for one more request."""
        return self._memory.get(pending.key, (0, 0.0))[0] < pending.quota.amount

    def _memory_count(self, pending: _Pending) -> int:
        """Count a request in memory (after `_memory_room`); the count after."""
        count = self._memory.get(pending.key, (0, 0.0))[0] + 1
        self._memory[pending.key] = (count, pending.expire_at)
        if count == 1:  # a new period: forget the ended ones
            now = self._clock()
            self._memory = {k: v for k, v in self._memory.items() if v[1] > now}
        return count

    async def check(self, principal: Principal, scope: Scope) -> ResponseHeaders | None:
        """Count the request against the caller's quota; refuse it past the quota."""
        pending = self._pending(principal, scope)
        if pending is None:
            return None
        if self.storage.redis is None:
            if not self._memory_room(pending):
                return self._answer(pending, pending.quota.amount, refused=True)
            return self._answer(pending, self._memory_count(pending), refused=False)
        used = await self._add(pending.key, 1, pending.expire_at)
        if used > pending.quota.amount:
            await self._add(pending.key, -1, pending.expire_at)  # refused: not counted
            return self._answer(pending, used - 1, refused=True)
        return self._answer(pending, used, refused=False)

    async def usage(self, key_id: str, quota: str | Quota | None = None) -> QuotaUsage | None:
        """The current period's usage of API key `key_id`: under `quota` (its
        record's), else the default; `None` if neither is set."""
        chosen = parse_quota(quota) if isinstance(quota, str) else quota or self._default
        if chosen is None:
            return None
        start, end = chosen.bounds(self._clock())
        key = self._key(f"api_key:{key_id}", chosen, start)
        if self.storage.redis is None:
            used = self._memory.get(key, (0, 0.0))[0]
        else:
            with self.storage.errors():
                used = int(await self.storage.redis.get(key) or 0)
        return QuotaUsage(chosen, used, max(0, chosen.amount - used), start, end)

    async def aclose(self) -> None:
        """Close the storage's connections, if this policy opened the storage."""
        if self._owns_storage:
            await self.storage.aclose()
