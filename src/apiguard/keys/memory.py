"""`MemoryKeyStore`: keys in a dict, for tests and single-process apps."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from apiguard.exceptions import ConfigurationError, KeyNotFoundError, KeyStateError
from apiguard.keys._url import redact_url
from apiguard.keys.base import BaseKeyStore
from apiguard.keys.record import KeyRecord, utcnow
from apiguard.keys.usage import (
    Granularity,
    UsageBatch,
    UsageBucket,
    UsageRetention,
    check_range,
    day_totals,
    in_range,
)

__all__ = ["MemoryKeyStore"]


class MemoryKeyStore(BaseKeyStore):
    """A key store held in process memory; its keys are gone when the process ends.

    URL: `memory://`.

    Args:
        usage_retention: How long request counts are kept.
    """

    def __init__(self, *, usage_retention: UsageRetention | None = None) -> None:
        super().__init__()
        self._records: dict[str, KeyRecord] = {}
        self._retention = usage_retention or UsageRetention()
        # (key id, granularity) -> bucket start -> requests
        self._usage: dict[tuple[str, Granularity], dict[datetime, int]] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryKeyStore:
        """Open a new, empty store for `memory://`."""
        if url != "memory://":
            raise ConfigurationError(
                f"a memory store URL is just 'memory://', not {redact_url(url)!r}"
            )
        return cls()

    def __repr__(self) -> str:
        return f"MemoryKeyStore(keys={len(self._records)})"

    def _require(self, key_id: str) -> KeyRecord:
        try:
            return self._records[key_id]
        except KeyError:
            raise KeyNotFoundError(f"no key with id {key_id!r}") from None

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    async def add(self, record: KeyRecord) -> None:
        if record.key_id in self._records:
            raise KeyStateError(f"a key with id {record.key_id!r} already exists")
        self._records[record.key_id] = record

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        records = (r for r in self._records.values() if name is None or r.name == name)
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    async def revoke(self, key_id: str, *, at: datetime) -> KeyRecord:
        record = self._require(key_id)
        if record.revoked_at is None:
            record = self._records[key_id] = replace(record, revoked_at=at)
        self._changed(key_id)
        return record

    async def rotate(self, key_id: str, new: KeyRecord, *, old_expires_at: datetime) -> KeyRecord:
        old = self._require(key_id)
        await self.add(new)
        if old.expires_at is None or old.expires_at > old_expires_at:
            old = self._records[key_id] = replace(old, expires_at=old_expires_at)
        self._changed(key_id)
        return old

    async def update_hash(self, key_id: str, secret_hash: str) -> None:
        self._records[key_id] = replace(self._require(key_id), secret_hash=secret_hash)

    async def update_limits(
        self, key_id: str, *, rate_limit: str | None, quota: str | None
    ) -> KeyRecord:
        record = self._records[key_id] = replace(
            self._require(key_id), rate_limit=rate_limit, quota=quota
        )
        self._changed(key_id)
        return record

    async def record_usage(self, key_id: str, *, at: datetime) -> None:
        record = self._records.get(key_id)
        if record is not None and (record.last_used_at is None or record.last_used_at < at):
            self._records[key_id] = replace(record, last_used_at=at)

    async def add_usage(self, batch: UsageBatch) -> None:
        now = utcnow()
        for key_id, hours in batch.hours.items():
            self._add(key_id, "hour", hours, now - self._retention.hourly)
            self._add(key_id, "day", day_totals(hours), now - self._retention.daily)
        for key_id, at in batch.last_used.items():
            await self.record_usage(key_id, at=at)

    def _add(
        self, key_id: str, granularity: Granularity, counts: Mapping[datetime, int], keep: datetime
    ) -> None:
        buckets = self._usage.setdefault((key_id, granularity), {})
        for start, count in counts.items():
            buckets[start] = buckets.get(start, 0) + count
        for start in [start for start in buckets if start < keep]:
            del buckets[start]

    async def usage(
        self, key_id: str, *, since: datetime, until: datetime, granularity: Granularity
    ) -> builtins.list[UsageBucket]:
        check_range(since, until, granularity)
        return in_range(self._usage.get((key_id, granularity), {}), since, until)
