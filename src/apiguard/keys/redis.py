"""`RedisKeyStore`: keys in Redis, through redis-py's asyncio client.

Install with `pip install 'apiguard-asgi[redis]'`. URLs: `redis://[:password@]host:6379/0`,
`rediss://` for TLS, `unix://[:password@]/path/to/redis.sock?db=0`.

Each key is one hash, so a lookup is one `HGETALL`; a set of key ids serves `list()`.
Under the key prefix (`apiguard:` by default)::

    apiguard:key:<key id>   name, secret_hash, scopes (JSON list), metadata (JSON object),
                            created_at, expires_at, revoked_at, last_used_at
                            (microseconds since the Unix epoch, UTC; absent when None),
                            rate_limit, quota (absent when None: records written
                            before these fields existed read back without them)
    apiguard:keys           the set of every key id
    apiguard:usage:<key id>:hour:<YYYY-MM-DD>
                            requests per hour of that day (UTC): field the hour's start
                            (seconds since the Unix epoch), value the count
    apiguard:usage:<key id>:day:<YYYY-MM>
                            requests per day of that month, the same way

Counts are added with `HINCRBY` in one `MULTI`/`EXEC` per batch, so that processes
writing at once add up; each usage hash expires (`EXPIREAT`) when its last bucket
leaves the retention (`UsageRetention`).

Writes that depend on what is stored (a taken key id, an earlier expiry, a later last
use) are Lua scripts, so each is one atomic step on the server.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from apiguard.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    KeyNotFoundError,
    KeyStateError,
)
from apiguard.keys._batch import LookupBatcher
from apiguard.keys._url import hide_password, redact_url
from apiguard.keys.base import BaseKeyStore
from apiguard.keys.channel import InvalidationChannel, RedisChannel, channel_from_push, split_push
from apiguard.keys.record import EMPTY_METADATA, KeyRecord, utcnow
from apiguard.keys.usage import (
    Granularity,
    UsageBatch,
    UsageBucket,
    UsageRetention,
    check_range,
    day_totals,
)

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_exceptions
except ImportError as exc:
    raise ConfigurationError(
        "RedisKeyStore needs redis-py: pip install 'apiguard-asgi[redis]'"
    ) from exc

__all__ = ["RedisKeyStore", "describe", "redis_client"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_TIMES = ("expires_at", "revoked_at", "last_used_at")
_LIMITS = ("rate_limit", "quota")
# How many records `list()` asks for in one round trip.
_LIST_BATCH = 1000

# Lua numbers are doubles: times compare exactly to the microsecond up to the year 2255.

# KEYS: the record, the index. ARGV: the key id, then field, value, ...
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: the record. ARGV: the revocation time. Returns the record, or nil.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the old record, the new record, the index. ARGV: the old key's new expiry, the
# new key id, then its field, value, ... Returns the old record, 0 if there is no old
# record, 1 if the new key id is taken.
_ROTATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('SADD', KEYS[3], ARGV[2])
local expires = redis.call('HGET', KEYS[1], 'expires_at')
if not expires or tonumber(expires) > tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'expires_at', ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the record. ARGV: the new hash. Returns 0 if there is no record.
_UPDATE_HASH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'secret_hash', ARGV[1])
return 1
"""

# KEYS: the record. ARGV: the rate limit, the quota ("" for none). Returns the record, or nil.
_UPDATE_LIMITS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
for i, name in ipairs({'rate_limit', 'quota'}) do
  if ARGV[i] == '' then
    redis.call('HDEL', KEYS[1], name)
  else
    redis.call('HSET', KEYS[1], name, ARGV[i])
  end
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the record. ARGV: the time of use. Only ever moves forward.
_RECORD_USAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = redis.call('HGET', KEYS[1], 'last_used_at')
if not last or tonumber(last) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
end
return 1
"""


def _micros(value: datetime) -> str:
    return str((value - _EPOCH) // _MICROSECOND)


def _time(value: str) -> datetime:
    return _EPOCH + int(value) * _MICROSECOND


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(record: KeyRecord) -> list[str]:
    """The record's hash as field, value, field, value, ..."""
    fields = {
        "name": record.name,
        "secret_hash": record.secret_hash,
        "scopes": json.dumps(sorted(record.scopes)),
        "metadata": json.dumps(dict(record.metadata), separators=(",", ":")),
        "created_at": _micros(record.created_at),
    }
    for name in _TIMES:
        value = getattr(record, name)
        if value is not None:
            fields[name] = _micros(value)
    for name in _LIMITS:
        value = getattr(record, name)
        if value is not None:
            fields[name] = value
    return [part for pair in fields.items() for part in pair]


def _metadata(value: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(value) if value else EMPTY_METADATA


def _record(key_id: str, stored: Mapping[Any, Any]) -> KeyRecord:
    fields = {_text(name): _text(value) for name, value in stored.items()}
    times = {name: _time(fields[name]) if name in fields else None for name in _TIMES}
    return KeyRecord(
        key_id=key_id,
        name=fields["name"],
        secret_hash=fields["secret_hash"],
        scopes=frozenset(json.loads(fields["scopes"])),
        created_at=_time(fields["created_at"]),
        metadata=_metadata(json.loads(fields["metadata"])),
        rate_limit=fields.get("rate_limit"),
        quota=fields.get("quota"),
        **times,
    )


def _day_after(at: datetime) -> datetime:
    return at.astimezone(timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0
    ) + timedelta(days=1)


def _month_after(at: datetime) -> datetime:
    at = at.astimezone(timezone.utc)
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    return datetime(year, month, 1, tzinfo=timezone.utc)


def redis_client(url: str, what: str, **client_options: Any) -> aioredis.Redis:
    """A client for `url` (`redis://`, `rediss://`, `unix://`), for `what` (in errors).

    `client_options` go to `redis.asyncio.Redis.from_url` (options in the URL's query
    win); connecting and each command give up after 5 s unless
    `socket_connect_timeout` and `socket_timeout` say otherwise.

    Raises:
        ConfigurationError: The URL is malformed (its password never in the message).
    """
    client_options.setdefault("socket_connect_timeout", 5.0)
    client_options.setdefault("socket_timeout", 5.0)
    try:
        return aioredis.Redis.from_url(url, **client_options)
    except ValueError as exc:
        # Not chained: the original may quote the URL, password and all.
        raise ConfigurationError(
            f"cannot open {what} {redact_url(url)!r}: {hide_password(str(exc), url)}"
        ) from None


def describe(client: aioredis.Redis) -> str:
    """Where `client` connects, for reprs: host and port or socket path, and db."""
    options = client.connection_pool.connection_kwargs
    where = options.get("path") or f"{options.get('host')}:{options.get('port')}"
    return f"{where}, db={options.get('db', 0)}"


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    """A Lua script's `HGETALL` answer, a flat list, as a mapping."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisKeyStore(BaseKeyStore):
    """A key store in Redis: one hash per key, read in one round trip.

    Args:
        client: A `redis.asyncio.Redis` client. The store does not close a client it
            was given; `from_url()` makes one the store owns.
        key_prefix: Put before every Redis key the store uses, so that several stores
            (or other data) can share a database.
        channel: Pushes key changes to other processes (`apiguard.keys.channel`);
            `from_url()` uses Redis pub/sub on the same server, channel
            `<key_prefix>invalidations`.
        usage_retention: How long request counts are kept (Redis expires them).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "apiguard:",
        channel: InvalidationChannel | None = None,
        usage_retention: UsageRetention | None = None,
        _owns_client: bool = False,
    ) -> None:
        super().__init__(channel=channel)
        self._retention = usage_retention or UsageRetention()
        self._client = client
        self._owns_client = _owns_client
        self._key_prefix = key_prefix
        self._index = f"{key_prefix}keys"
        self._add = client.register_script(_ADD)
        self._revoke = client.register_script(_REVOKE)
        self._rotate = client.register_script(_ROTATE)
        self._update_hash = client.register_script(_UPDATE_HASH)
        self._record_usage = client.register_script(_RECORD_USAGE)
        self._update_limits = client.register_script(_UPDATE_LIMITS)
        # Concurrent lookups of different keys share one round trip (`_batch.py`).
        self._lookups: LookupBatcher[KeyRecord] = LookupBatcher(self._get_many)

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str = "apiguard:", **client_options: Any
    ) -> RedisKeyStore:
        """Open a store at `url`: `redis://`, `rediss://` or `unix://`.

        `client_options` go to `redis.asyncio.Redis.from_url` (options in the URL's
        query win). Connecting and each command give up after 5 s unless
        `socket_connect_timeout` and `socket_timeout` say otherwise.

        Key changes reach other processes through pub/sub on the same server
        (channel `<key_prefix>invalidations`); `?push=off` turns that off, and
        `?push=redis://…` (URL-encoded) uses another server.

        Raises:
            ConfigurationError: The URL is malformed.
        """
        url, push = split_push(url)
        client = redis_client(url, "key store", **client_options)
        channel: InvalidationChannel | None
        if push is None:
            channel = RedisChannel(client, name=f"{key_prefix}invalidations")
        else:
            channel = channel_from_push(push)
        return cls(client, key_prefix=key_prefix, channel=channel, _owns_client=True)

    def __repr__(self) -> str:
        return f"RedisKeyStore({describe(self._client)}, key_prefix={self._key_prefix!r})"

    def _key(self, key_id: str) -> str:
        return f"{self._key_prefix}key:{key_id}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Redis errors become `BackendUnavailableError`."""
        try:
            yield
        # A ResponseError too: a server that answers wrongly is no store to rely on.
        except (redis_exceptions.RedisError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            raise BackendUnavailableError(f"key store unavailable: {type(exc).__name__}") from exc

    async def get(self, key_id: str) -> KeyRecord | None:
        self._watch()
        return await self._lookups.get(key_id)

    async def _get_many(self, ids: builtins.list[str]) -> dict[str, KeyRecord]:
        """One `HGETALL`, or one pipeline of them for concurrent lookups."""
        with self._errors():
            if len(ids) == 1:
                found = [await self._client.hgetall(self._key(ids[0]))]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key_id in ids:
                        pipe.hgetall(self._key(key_id))
                    found = await pipe.execute()
        return {
            key_id: _record(key_id, stored)
            for key_id, stored in zip(ids, found, strict=True)
            if stored
        }

    async def add(self, record: KeyRecord) -> None:
        with self._errors():
            added = await self._add(
                keys=[self._key(record.key_id), self._index],
                args=[record.key_id, *_fields(record)],
            )
        if not added:
            raise KeyStateError(f"a key with id {record.key_id!r} already exists")

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        records = []
        with self._errors():
            key_ids = sorted(_text(key_id) for key_id in await self._client.smembers(self._index))
            for start in range(0, len(key_ids), _LIST_BATCH):
                batch = key_ids[start : start + _LIST_BATCH]
                async with self._client.pipeline(transaction=False) as pipe:
                    for key_id in batch:
                        pipe.hgetall(self._key(key_id))
                    found = await pipe.execute()
                records += [
                    _record(k, stored) for k, stored in zip(batch, found, strict=True) if stored
                ]
        if name is not None:
            records = [r for r in records if r.name == name]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    async def revoke(self, key_id: str, *, at: datetime) -> KeyRecord:
        with self._errors():
            stored = await self._revoke(keys=[self._key(key_id)], args=[_micros(at)])
        if stored is None:
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        await self._announce(key_id)
        return _record(key_id, _pairs(stored))

    async def rotate(self, key_id: str, new: KeyRecord, *, old_expires_at: datetime) -> KeyRecord:
        with self._errors():
            stored = await self._rotate(
                keys=[self._key(key_id), self._key(new.key_id), self._index],
                args=[_micros(old_expires_at), new.key_id, *_fields(new)],
            )
        if stored == 0:
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        if stored == 1:
            raise KeyStateError(f"a key with id {new.key_id!r} already exists")
        await self._announce(key_id)
        return _record(key_id, _pairs(stored))

    async def update_hash(self, key_id: str, secret_hash: str) -> None:
        with self._errors():
            updated = await self._update_hash(keys=[self._key(key_id)], args=[secret_hash])
        if not updated:
            raise KeyNotFoundError(f"no key with id {key_id!r}")

    async def update_limits(
        self, key_id: str, *, rate_limit: str | None, quota: str | None
    ) -> KeyRecord:
        with self._errors():
            stored = await self._update_limits(
                keys=[self._key(key_id)], args=[rate_limit or "", quota or ""]
            )
        if stored is None:
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        await self._announce(key_id)
        return _record(key_id, _pairs(stored))

    async def record_usage(self, key_id: str, *, at: datetime) -> None:
        with self._errors():
            await self._record_usage(keys=[self._key(key_id)], args=[_micros(at)])

    def _usage_key(self, key_id: str, granularity: Granularity, start: datetime) -> tuple[str, int]:
        """The hash a bucket is in, and when that hash may go (epoch seconds)."""
        start = start.astimezone(timezone.utc)
        if granularity == "hour":
            period, ends = f"{start:%Y-%m-%d}", _day_after(start)
            keep = self._retention.hourly
        else:
            period, ends = f"{start:%Y-%m}", _month_after(start)
            keep = self._retention.daily
        return f"{self._key_prefix}usage:{key_id}:{granularity}:{period}", int(
            (ends + keep).timestamp()
        )

    async def add_usage(self, batch: UsageBatch) -> None:
        with self._errors():
            # MULTI/EXEC: the batch is added whole or not at all, and retried whole.
            async with self._client.pipeline(transaction=True) as pipe:
                for key_id, hours in batch.hours.items():
                    granularity: Granularity
                    for granularity, counts in (("hour", hours), ("day", day_totals(hours))):
                        for start, count in counts.items():
                            key, expires = self._usage_key(key_id, granularity, start)
                            pipe.hincrby(key, str(int(start.timestamp())), count)
                            pipe.expireat(key, expires)
                for key_id, at in batch.last_used.items():
                    await self._record_usage(
                        keys=[self._key(key_id)], args=[_micros(at)], client=pipe
                    )
                await pipe.execute()

    async def usage(
        self, key_id: str, *, since: datetime, until: datetime, granularity: Granularity
    ) -> builtins.list[UsageBucket]:
        check_range(since, until, granularity)
        keep = self._retention.hourly if granularity == "hour" else self._retention.daily
        # Only hashes that can still exist: never more than the retention's worth.
        start = max(since, utcnow() - keep - timedelta(days=31))
        periods = []
        while start < until:
            key, _ = self._usage_key(key_id, granularity, start)
            periods.append(key)
            start = _day_after(start) if granularity == "hour" else _month_after(start)
        with self._errors():
            async with self._client.pipeline(transaction=False) as pipe:
                for key in periods:
                    pipe.hgetall(key)
                found = await pipe.execute()
        buckets = {
            datetime.fromtimestamp(int(field), timezone.utc): int(count)
            for stored in found
            for field, count in stored.items()
        }
        return [
            UsageBucket(at, count)
            for at, count in sorted(buckets.items())
            if since <= at < until and count
        ]

    async def aclose(self) -> None:
        await super().aclose()
        await self._lookups.aclose()
        if self._owns_client:
            await self._client.aclose()
