"""Request counts for people and scripts: the figures and the chart of `apiguard keys`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from apiguard.keys.usage import bucket_start
from apiguard.types import KeyStore, UsageStore

__all__ = ["DailyUsage", "daily_usage", "render_chart"]

SUMMARY_DAYS = 30  # "last 30 days" in `list` and `show`: today and the 29 days before
MAX_BAR = 40  # characters in the longest bar


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """Requests per UTC day, every day of the period, oldest first."""

    days: list[tuple[date, int]]

    @property
    def total(self) -> int:
        return sum(count for _, count in self.days)

    @property
    def today(self) -> int:
        return self.days[-1][1]

    def to_json(self) -> dict[str, Any]:
        return {
            "granularity": "day",
            "first_day": self.days[0][0].isoformat(),
            "last_day": self.days[-1][0].isoformat(),
            "total": self.total,
            "counts": [{"date": day.isoformat(), "requests": n} for day, n in self.days],
        }


async def daily_usage(
    store: KeyStore, key_id: str, days: int, now: datetime | None = None
) -> DailyUsage | None:
    """`key_id`'s requests on each of the last `days` UTC days, today last; `None`
    for a store that keeps no counts. One store query."""
    if not isinstance(store, UsageStore):
        return None
    today = bucket_start(now or datetime.now(timezone.utc), "day")
    since = today - timedelta(days=days - 1)
    found = await store.usage(
        key_id, since=since, until=today + timedelta(days=1), granularity="day"
    )
    counts = {bucket.start: bucket.count for bucket in found}
    return DailyUsage(
        [
            ((since + timedelta(days=n)).date(), counts.get(since + timedelta(days=n), 0))
            for n in range(days)
        ]
    )


def render_chart(usage: DailyUsage) -> list[str]:
    """One line per day: the date, a bar of `#` (at most `MAX_BAR` wide, at least one
    for any request), the count. Plain text: readable without colour or Unicode."""
    top = max((count for _, count in usage.days), default=0)
    width = len(f"{top:,}")
    lines = []
    for day, count in usage.days:
        bar = "" if not count else "#" * max(1, round(count * MAX_BAR / top))
        lines.append(f"{day.isoformat()}  {bar:<{MAX_BAR}}  {count:>{width},}")
    return lines
