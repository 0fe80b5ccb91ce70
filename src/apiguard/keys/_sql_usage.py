"""The request-count table of `SQLKeyStore`: one statement set for SQLite and PostgreSQL.

    apiguard_usage   key_id, granularity ('hour' or 'day'), bucket_start (seconds since
                     the Unix epoch, UTC), requests; primary key the first three

A batch is added with `INSERT ... ON CONFLICT DO UPDATE SET requests = requests +
excluded.requests`, an atomic increment on both databases, so that workers writing
the same bucket at once add up. The table is the schema component `"usage"`,
versioned apart from the keys table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from apiguard.keys.usage import (
    Granularity,
    UsageBatch,
    UsageBucket,
    UsageRetention,
    day_totals,
)

__all__ = ["USAGE_UPGRADES", "add_counts", "prune", "read_buckets", "usage_metadata"]

usage_metadata = sa.MetaData()
usage_table = sa.Table(
    "apiguard_usage",
    usage_metadata,
    sa.Column(
        "key_id",
        sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql"),
        primary_key=True,
    ),
    sa.Column("granularity", sa.String(8), primary_key=True),
    sa.Column("bucket_start", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    # For pruning by age, across keys.
    sa.Index("apiguard_usage_by_start", "granularity", "bucket_start"),
)

# Upgrades of the "usage" component, as `sql._UPGRADES` for "keys".
USAGE_UPGRADES: list[Callable[[sa.Connection], None]] = []


def _seconds(at: datetime) -> int:
    return int(at.timestamp())


def _rows(batch: UsageBatch) -> list[dict[str, Any]]:
    rows = []
    for key_id, hours in batch.hours.items():
        granularity: Granularity
        for granularity, counts in (("hour", hours), ("day", day_totals(hours))):
            rows += [
                {
                    "key_id": key_id,
                    "granularity": granularity,
                    "bucket_start": _seconds(start),
                    "requests": count,
                }
                for start, count in counts.items()
            ]
    # One order in every process: concurrent batches lock rows in the same order on
    # PostgreSQL, and cannot deadlock each other.
    rows.sort(key=lambda row: (row["key_id"], row["granularity"], row["bucket_start"]))
    return rows


async def add_counts(conn: Any, batch: UsageBatch) -> None:
    """Add the batch's counts on `conn` (an `AsyncConnection`), in its transaction."""
    rows = _rows(batch)
    if not rows:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(usage_table)
    statement = statement.on_conflict_do_update(
        index_elements=["key_id", "granularity", "bucket_start"],
        set_={"requests": usage_table.c.requests + statement.excluded.requests},
    )
    await conn.execute(statement, rows)


async def prune(conn: Any, retention: UsageRetention, now: datetime) -> None:
    """Delete the buckets past their retention."""
    for granularity, keep in (("hour", retention.hourly), ("day", retention.daily)):
        await conn.execute(
            sa.delete(usage_table).where(
                usage_table.c.granularity == granularity,
                usage_table.c.bucket_start < _seconds(now - keep),
            )
        )


async def read_buckets(
    conn: Any, key_id: str, since: datetime, until: datetime, granularity: Granularity
) -> list[UsageBucket]:
    """The key's non-empty buckets that start in `[since, until)`, oldest first."""
    result = await conn.execute(
        sa.select(usage_table.c.bucket_start, usage_table.c.requests)
        .where(
            usage_table.c.key_id == key_id,
            usage_table.c.granularity == granularity,
            usage_table.c.bucket_start >= math.ceil(since.timestamp()),
            usage_table.c.bucket_start < math.ceil(until.timestamp()),
        )
        .order_by(usage_table.c.bucket_start)
    )
    return [
        UsageBucket(datetime.fromtimestamp(start, timezone.utc), count)
        for start, count in result
        if count
    ]
