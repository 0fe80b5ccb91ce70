"""Helpers for testing apps and stores that use apiguard.

`KeyStoreContract` is the test suite every `KeyStore` must pass. Run it against
your own store by subclassing it in a test module and providing a `store` fixture::

    import pytest
    from apiguard.testing import KeyStoreContract

    class TestMyStore(KeyStoreContract):
        @pytest.fixture
        async def store(self):
            store = MyStore(...)
            yield store
            await store.aclose()

It needs pytest and the anyio pytest plugin (installed with anyio). It runs on
the asyncio backend even where trio is installed; override the `anyio_backend`
fixture in your subclass to choose another. `make_record()` builds records with
fixed times, so two calls with the same arguments give equal records.

The `test_usage_*` tests check request counts (`apiguard.types.UsageStore`); they
are skipped, saying so, for a store that keeps none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

import pytest

from apiguard._testkit.helpers import (
    TEST_PEPPER,
    FakeClock,
    KeySpec,
    make_keys,
    override_authentication,
)
from apiguard._testkit.issuer import FakeIssuer, make_signing_key, public_jwk
from apiguard.exceptions import KeyNotFoundError, KeyStateError
from apiguard.keys.channel import ALL_KEYS
from apiguard.keys.record import KeyRecord, utcnow
from apiguard.keys.usage import UsageBatch, UsageBucket, bucket_start
from apiguard.types import KeyStore, UsageStore

__all__ = [
    "TEST_PEPPER",
    "FakeClock",
    "FakeIssuer",
    "KeySpec",
    "KeyStoreContract",
    "make_keys",
    "make_record",
    "make_signing_key",
    "override_authentication",
    "public_jwk",
]


# Fixed, not the current time: two records made a moment apart must compare equal.
CREATED_AT = datetime(2025, 1, 1, tzinfo=timezone.utc)


def make_record(key_id: str = "K" * 12, name: str = "alice", **changes: object) -> KeyRecord:
    """A `KeyRecord` with plausible values; `changes` override any field.

    The same arguments always make an equal record: `created_at` defaults to the
    fixed `CREATED_AT`, never to the current time.
    """
    fields: dict[str, object] = {
        "key_id": key_id,
        "name": name,
        "secret_hash": "$hmac-sha256$" + "0" * 64,
        "scopes": frozenset({"items:read"}),
        "created_at": CREATED_AT,
        "metadata": MappingProxyType({"team": "core"}),
    }
    fields.update(changes)
    return KeyRecord(**fields)  # type: ignore[arg-type]


def _counting(store: KeyStore) -> UsageStore:
    if not isinstance(store, UsageStore):
        pytest.skip("the store keeps no request counts (no add_usage/usage: UsageStore)")
    return store


def _batch(key_id: str, hours: dict[datetime, int], used: datetime | None = None) -> UsageBatch:
    return UsageBatch(hours={key_id: hours}, last_used={} if used is None else {key_id: used})


def _recorder(seen: list[str]) -> Callable[[str], None]:
    """A listener that records key ids; `ALL_KEYS`, sent when a store's invalidation
    channel (re)connects, at any time, is not a change of one key and is left out."""

    def record(key_id: str) -> None:
        if key_id != ALL_KEYS:
            seen.append(key_id)

    return record


@pytest.mark.anyio
class KeyStoreContract:
    """What every key store must do. Subclass it and provide a `store` fixture.

    The tests run on anyio's asyncio backend, whatever other backends (trio) are
    installed. To run them on another, override `anyio_backend` in your subclass.
    """

    @pytest.fixture
    def anyio_backend(self) -> str:
        """The event loop the contract runs on: asyncio."""
        return "asyncio"

    async def test_get_returns_what_add_stored(self, store: KeyStore) -> None:
        """A record reads back equal, timezone-aware, metadata included."""
        record = make_record(expires_at=utcnow().replace(microsecond=0) + timedelta(days=1))
        await store.add(record)
        got = await store.get(record.key_id)
        assert got == record
        assert got is not None
        assert got.created_at.utcoffset() == timedelta(0)
        assert dict(got.metadata) == {"team": "core"}

    async def test_get_unknown_is_none(self, store: KeyStore) -> None:
        """An unknown key id is not an error, just no record."""
        assert await store.get("unknown00000") is None

    async def test_add_refuses_a_taken_key_id(self, store: KeyStore) -> None:
        """Key ids are unique."""
        await store.add(make_record())
        with pytest.raises(KeyStateError):
            await store.add(make_record(name="mallory"))
        got = await store.get("K" * 12)
        assert got is not None
        assert got.name == "alice"

    async def test_list_oldest_first_and_by_name(self, store: KeyStore) -> None:
        """`list` orders by creation and filters by name."""
        now = utcnow().replace(microsecond=0)
        await store.add(make_record("B" * 12, "bob", created_at=now))
        await store.add(make_record("A" * 12, "alice", created_at=now - timedelta(hours=1)))
        await store.add(make_record("C" * 12, "alice", created_at=now + timedelta(hours=1)))
        assert [r.key_id for r in await store.list()] == ["A" * 12, "B" * 12, "C" * 12]
        assert [r.key_id for r in await store.list(name="alice")] == ["A" * 12, "C" * 12]
        assert await store.list(name="nobody") == []

    async def test_revoke_marks_and_notifies(self, store: KeyStore) -> None:
        """Revoking sets `revoked_at` once and tells listeners."""
        seen: list[str] = []
        remove = store.add_listener(_recorder(seen))
        await store.add(make_record())
        at = utcnow().replace(microsecond=0)
        revoked = await store.revoke("K" * 12, at=at)
        assert revoked.revoked_at == at
        assert revoked.status() == "revoked"
        again = await store.revoke("K" * 12, at=at + timedelta(hours=1))
        assert again.revoked_at == at
        assert seen == ["K" * 12, "K" * 12]
        remove()
        await store.revoke("K" * 12, at=at)
        assert len(seen) == 2

    async def test_revoke_unknown_raises(self, store: KeyStore) -> None:
        """Revoking a key that does not exist is an error, not a silent no-op."""
        with pytest.raises(KeyNotFoundError):
            await store.revoke("unknown00000", at=utcnow())

    async def test_rotate_adds_new_and_shortens_old(self, store: KeyStore) -> None:
        """Rotation stores the new key and moves the old key's expiry forward, not back."""
        seen: list[str] = []
        store.add_listener(_recorder(seen))
        now = utcnow().replace(microsecond=0)
        await store.add(make_record(expires_at=now + timedelta(days=90)))
        old = await store.rotate(
            "K" * 12, make_record("N" * 12), old_expires_at=now + timedelta(hours=24)
        )
        assert old.expires_at == now + timedelta(hours=24)
        assert await store.get("N" * 12) == make_record("N" * 12)
        assert seen == ["K" * 12]
        # A later grace end never extends an earlier expiry.
        old = await store.rotate(
            "K" * 12, make_record("M" * 12), old_expires_at=now + timedelta(days=365)
        )
        assert old.expires_at == now + timedelta(hours=24)

    async def test_rotate_unknown_raises_and_adds_nothing(self, store: KeyStore) -> None:
        """Rotating a missing key fails without storing the new one."""
        with pytest.raises(KeyNotFoundError):
            await store.rotate("unknown00000", make_record("N" * 12), old_expires_at=utcnow())
        assert await store.get("N" * 12) is None

    async def test_update_hash(self, store: KeyStore) -> None:
        """The secret hash can be replaced (hash migration); nothing else changes."""
        record = make_record()
        await store.add(record)
        await store.update_hash(record.key_id, "$hmac-sha256$" + "1" * 64)
        got = await store.get(record.key_id)
        assert got is not None
        assert got.secret_hash == "$hmac-sha256$" + "1" * 64
        assert got.scopes == record.scopes

    async def test_record_usage_only_moves_forward(self, store: KeyStore) -> None:
        """`last_used_at` keeps the latest time it was given."""
        await store.add(make_record())
        now = utcnow().replace(microsecond=0)
        await store.record_usage("K" * 12, at=now)
        await store.record_usage("K" * 12, at=now - timedelta(minutes=5))
        got = await store.get("K" * 12)
        assert got is not None
        assert got.last_used_at == now
        await store.record_usage("unknown00000", at=now)  # no error for a vanished key

    async def test_rate_limit_and_quota_read_back(self, store: KeyStore) -> None:
        """A key's own rate limit and quota are stored with the rest of its record."""
        record = make_record(rate_limit="100/minute; 5000/day", quota="100000/month")
        await store.add(record)
        assert await store.get(record.key_id) == record

    async def test_update_limits_replaces_clears_and_announces(self, store: KeyStore) -> None:
        """`update_limits` (optional in the protocol) changes only the limits, and tells
        the listeners; skipped for a store without it."""
        update = getattr(store, "update_limits", None)
        if update is None:
            pytest.skip("the store has no update_limits(): limits are set at creation only")
        seen: list[str] = []
        store.add_listener(_recorder(seen))
        record = make_record(rate_limit="100/minute", quota="100000/month")
        await store.add(record)
        updated = await update(record.key_id, rate_limit="5/second", quota=None)
        assert (updated.rate_limit, updated.quota) == ("5/second", None)
        assert await store.get(record.key_id) == updated
        assert updated.scopes == record.scopes
        assert seen == [record.key_id]
        cleared = await update(record.key_id, rate_limit=None, quota="10/day")
        assert (cleared.rate_limit, cleared.quota) == (None, "10/day")
        with pytest.raises(KeyNotFoundError):
            await update("unknown00000", rate_limit=None, quota=None)

    # --- request counts (UsageStore) ---------------------------------------------

    @pytest.fixture
    def day(self) -> datetime:
        """Midnight UTC two days ago: inside any retention, whatever the time now."""
        return bucket_start(utcnow() - timedelta(days=2), "day")

    async def test_usage_adds_hours_and_days(self, store: KeyStore, day: datetime) -> None:
        """Counts land in their hour and in that hour's day; batches add up."""
        counting = _counting(store)
        hour = timedelta(hours=1)
        await store.add(make_record())
        await counting.add_usage(_batch("K" * 12, {day + hour: 3, day + 23 * hour: 4}))
        await counting.add_usage(_batch("K" * 12, {day + hour: 2, day + 25 * hour: 1}))
        await counting.add_usage(_batch("N" * 12, {day + hour: 100}))  # another key
        until = day + timedelta(days=3)
        assert await counting.usage("K" * 12, since=day, until=until, granularity="hour") == [
            UsageBucket(day + hour, 5),
            UsageBucket(day + 23 * hour, 4),
            UsageBucket(day + 25 * hour, 1),
        ]
        assert await counting.usage("K" * 12, since=day, until=until, granularity="day") == [
            UsageBucket(day, 9),
            UsageBucket(day + timedelta(days=1), 1),
        ]
        got = await counting.usage("K" * 12, since=day, until=until, granularity="day")
        assert all(b.start.utcoffset() == timedelta(0) for b in got)

    async def test_usage_range_is_half_open(self, store: KeyStore, day: datetime) -> None:
        """`usage` returns buckets starting in `[since, until)`; a day or month total is
        one query (what a quota per day or month reads)."""
        counting = _counting(store)
        hour = timedelta(hours=1)
        await counting.add_usage(_batch("K" * 12, {day + n * hour: n + 1 for n in range(30)}))
        hours = await counting.usage(
            "K" * 12, since=day + 2 * hour, until=day + 5 * hour, granularity="hour"
        )
        assert [b.count for b in hours] == [3, 4, 5]
        today = await counting.usage(
            "K" * 12, since=day, until=day + timedelta(days=1), granularity="day"
        )
        assert today == [UsageBucket(day, sum(range(1, 25)))]
        assert (
            await counting.usage("unknown00000", since=day, until=day + hour, granularity="day")
            == []
        )
        naive = day.replace(tzinfo=None)
        with pytest.raises(ValueError, match="timezone-aware"):
            await counting.usage("K" * 12, since=naive, until=day, granularity="day")
        with pytest.raises(ValueError, match="granularity"):
            await counting.usage("K" * 12, since=day, until=day, granularity="week")  # type: ignore[arg-type]

    async def test_usage_concurrent_batches_add_up(self, store: KeyStore, day: datetime) -> None:
        """Batches written at once (as by several processes) lose no count."""
        counting = _counting(store)
        hour = day + timedelta(hours=3)
        await asyncio.gather(*(counting.add_usage(_batch("K" * 12, {hour: 1})) for _ in range(20)))
        got = await counting.usage(
            "K" * 12, since=day, until=day + timedelta(days=1), granularity="day"
        )
        assert got == [UsageBucket(day, 20)]

    async def test_usage_moves_last_used_forward(self, store: KeyStore, day: datetime) -> None:
        """A batch's last use sets `last_used_at` when later, never earlier."""
        counting = _counting(store)
        await store.add(make_record())
        later = day + timedelta(hours=5, minutes=7)
        await counting.add_usage(_batch("K" * 12, {day: 1}, used=later))
        await counting.add_usage(_batch("K" * 12, {}, used=later - timedelta(hours=1)))
        got = await store.get("K" * 12)
        assert got is not None
        assert got.last_used_at == later
        await counting.add_usage(_batch("unknown00000", {day: 1}, used=later))  # no error
