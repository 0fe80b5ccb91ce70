"""Request counts: what is counted, when it is written, and what happens when it cannot be."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from apiguard import (
    APIKeyMiddleware,
    BackendUnavailableError,
    ConfigurationError,
    ScopeRule,
    ScopeRules,
)
from apiguard.keys import (
    KeyHasher,
    KeyManager,
    KeyRecord,
    MemoryKeyStore,
    UsageBatch,
    UsageBucket,
    UsageOptions,
    UsageRecorder,
    UsageRetention,
)
from apiguard.keys.usage import bucket_start
from apiguard.testing import FakeClock, _counting
from tests.conftest import MakeClient

pytestmark = pytest.mark.anyio

# 2026-03-01 10:59:50 UTC: ten seconds before an hour ends.
T0 = datetime(2026, 3, 1, 10, 59, 50, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


class WallClock:
    """`time.time()` that moves only when a test says so."""

    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


class FlakyStore(MemoryKeyStore):
    """A memory store whose usage writes fail while `down`, or hang while `hang`."""

    def __init__(self) -> None:
        super().__init__(usage_retention=UsageRetention(hourly=timedelta(days=36500)))
        self.down = False
        self.hang = False
        self.batches: list[UsageBatch] = []

    async def add_usage(self, batch: UsageBatch) -> None:
        if self.down:
            raise BackendUnavailableError("store down")
        if self.hang:
            await anyio.sleep(60)
        self.batches.append(batch)
        await super().add_usage(batch)


async def hours(store: MemoryKeyStore, key_id: str) -> list[UsageBucket]:
    since = datetime(2000, 1, 1, tzinfo=timezone.utc)
    return await store.usage(
        key_id, since=since, until=since.replace(year=2100), granularity="hour"
    )


def due(usage: UsageRecorder) -> bool:
    return usage.pending  # read through a call: mypy would narrow the attribute


def recorder(
    store: MemoryKeyStore,
    clock: FakeClock,
    wall: WallClock,
    *,
    flush_interval: float = 10.0,
    max_pending: int = 100,
) -> UsageRecorder:
    options = UsageOptions(flush_interval=flush_interval, max_pending=max_pending)
    return UsageRecorder(store, options, deadline=0.2, clock=clock, wall_clock=wall)


# --- the recorder ------------------------------------------------------------------


async def test_counts_wait_for_the_interval_then_go_in_one_batch() -> None:
    """Counting writes nothing; once `flush_interval` has passed a flush is due, and
    one batch carries every key's counts and last use."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    usage = recorder(store, clock, wall, flush_interval=10)
    for key_id in ["A" * 12, "A" * 12, "B" * 12]:
        usage.count(key_id)
    assert not due(usage)
    clock.now += 10
    wall.now += 10
    usage.count("A" * 12)
    assert due(usage)
    await usage.flush()
    assert not due(usage)
    assert len(store.batches) == 1
    hour = bucket_start(T0, "hour")
    assert store.batches[0].hours == {"A" * 12: {hour: 3}, "B" * 12: {hour: 1}}
    assert store.batches[0].last_used["A" * 12] == datetime.fromtimestamp(wall.now, timezone.utc)


async def test_an_hour_that_ends_between_flushes_keeps_its_counts() -> None:
    """Requests before and after an hour's end land in their own hourly buckets."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0)
    usage = recorder(store, clock, wall, flush_interval=60)
    usage.count("A" * 12)
    usage.count("A" * 12)
    clock.now += 20  # 11:00:10, before the flush is due
    wall.now += 20
    usage.count("A" * 12)
    assert not due(usage)
    await usage.flush()
    start = bucket_start(T0, "hour")
    assert await hours(store, "A" * 12) == [UsageBucket(start, 2), UsageBucket(start + HOUR, 1)]
    assert store.batches[0].last_used["A" * 12] == datetime.fromtimestamp(wall.now, timezone.utc)


async def test_a_flush_after_the_hour_ended_files_counts_under_their_hour() -> None:
    """A quiet process that flushes (at shutdown, say) after the hour has ended, with no
    request since, writes the counts under the hour they were made in."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0)
    usage = recorder(store, clock, wall)
    usage.count("A" * 12)
    wall.now += 3600
    clock.now += 3600
    await usage.flush()
    assert await hours(store, "A" * 12) == [UsageBucket(bucket_start(T0, "hour"), 1)]
    last_used = store.batches[0].last_used["A" * 12]
    assert last_used < bucket_start(T0, "hour") + HOUR  # inside that hour


async def test_a_second_flush_while_one_runs_returns_at_once() -> None:
    """Requests finishing while a write is under way do not wait for it or write twice."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    usage = recorder(store, clock, wall)
    gate = anyio.Event()
    real_add = store.add_usage

    async def slow(batch: UsageBatch) -> None:
        await gate.wait()
        await real_add(batch)

    store.add_usage = slow  # type: ignore[method-assign]
    usage.count("A" * 12)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(usage.flush)
        await anyio.wait_all_tasks_blocked()
        usage.count("A" * 12)
        with anyio.fail_after(1):
            await usage.flush()  # returns at once: one write at a time
        assert store.batches == []
        gate.set()
    await usage.flush()
    assert len(store.batches) == 2
    assert await hours(store, "A" * 12) == [UsageBucket(bucket_start(T0, "hour"), 2)]


async def test_a_failed_write_is_retried_with_its_counts(caplog: pytest.LogCaptureFixture) -> None:
    """Counts of a write that fails are kept and written, added to later ones, next time."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    usage = recorder(store, clock, wall)
    store.down = True
    for _ in range(3):
        usage.count("A" * 12)
    await usage.flush()  # never raises
    assert "could not record key usage (BackendUnavailableError): 1 counts kept" in caplog.text
    assert await hours(store, "A" * 12) == []
    usage.count("A" * 12)
    store.down = False
    await usage.flush()
    assert await hours(store, "A" * 12) == [UsageBucket(bucket_start(T0, "hour"), 4)]


async def test_a_hanging_write_is_cut_off_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A store that does not answer holds a flush up for `deadline` only."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    usage = recorder(store, clock, wall)
    store.hang = True
    usage.count("A" * 12)
    with anyio.fail_after(5):
        await usage.flush()
    assert "did not answer within 0.2 s" in caplog.text
    store.hang = False
    await usage.flush()
    assert await hours(store, "A" * 12) == [UsageBucket(bucket_start(T0, "hour"), 1)]


async def test_pending_counts_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """At `max_pending` a new key is not counted, an early flush is asked for, and the
    loss is logged; keys already counted keep counting, also while the store is down."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    usage = recorder(store, clock, wall, max_pending=2)
    usage.count("A" * 12)
    usage.count("B" * 12)
    assert not due(usage)
    usage.count("C" * 12)  # over the bound
    assert due(usage)  # flush early, to make room
    store.down = True
    await usage.flush()
    assert "1 requests not counted: 2 key usage counts were waiting" in caplog.text
    usage.count("A" * 12)  # kept counts: still counted
    usage.count("D" * 12)  # no room while the failed batch waits
    store.down = False
    await usage.flush()
    assert {key: dict(h) for key, h in store.batches[0].hours.items()} == {
        "A" * 12: {bucket_start(T0, "hour"): 2},
        "B" * 12: {bucket_start(T0, "hour"): 1},
    }
    assert caplog.text.count("1 requests not counted") == 2  # C, then D


async def test_closing_the_store_flushes_first() -> None:
    """`aclose()` on a `BaseKeyStore` writes the pending counts before it closes."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    usage = recorder(store, clock, wall)
    usage.count("A" * 12)
    await store.aclose()
    assert await hours(store, "A" * 12) == [UsageBucket(bucket_start(T0, "hour"), 1)]


class OldStore:
    """A store written before request counts: a `KeyStore` without `add_usage`."""

    def __init__(self) -> None:
        self.inner = MemoryKeyStore()
        self.used: list[tuple[str, datetime]] = []

    def __getattr__(self, name: str) -> object:
        if name in ("add_usage", "usage"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def record_usage(self, key_id: str, *, at: datetime) -> None:
        self.used.append((key_id, at))


async def test_a_store_without_counts_keeps_last_use(caplog: pytest.LogCaptureFixture) -> None:
    """A store that is no `UsageStore` still gets last-use times; the missing counts are
    said once, at start."""
    old, clock, wall = OldStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    with caplog.at_level(logging.WARNING, "apiguard.keys"):
        usage = UsageRecorder(old, clock=clock, wall_clock=wall)  # type: ignore[arg-type]
    assert "OldStore keeps no request counts" in caplog.text
    usage.count("A" * 12)
    await usage.flush()
    assert old.used == [("A" * 12, datetime.fromtimestamp(wall.now, timezone.utc))]


def test_the_contract_skips_usage_tests_for_a_store_without_counts() -> None:
    """`KeyStoreContract`'s usage tests say why they do not run, rather than fail."""
    with pytest.raises(pytest.skip.Exception, match="keeps no request counts"):
        _counting(OldStore())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [{"flush_interval": 0}, {"max_pending": 0}, {"flush_interval": -1.0}],
)
def test_bad_usage_options(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        UsageOptions(**options)  # type: ignore[arg-type]


def test_bad_retention() -> None:
    with pytest.raises(ConfigurationError):
        UsageRetention(hourly=timedelta(minutes=5))


# --- through the middleware ----------------------------------------------------------


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hi")


async def today(store: MemoryKeyStore, record: KeyRecord) -> int:
    day = bucket_start(datetime.now(timezone.utc), "day")
    found = await store.usage(
        record.key_id,
        since=day - timedelta(days=1),
        until=day + timedelta(days=2),
        granularity="day",
    )
    return sum(bucket.count for bucket in found)


async def test_only_requests_let_through_are_counted(
    hasher: KeyHasher, make_client: MakeClient
) -> None:
    """Counted: requests a key authenticated and every policy admitted. Not counted:
    a wrong or missing key, a scope refusal (403), an excluded path."""
    store = MemoryKeyStore()
    manager = KeyManager(store, hasher)
    reader, other = await manager.create("r", scopes=["read"]), await manager.create("o")
    app = APIKeyMiddleware(
        Starlette(routes=[Route("/", hello), Route("/admin", hello), Route("/health", hello)]),
        store=store,
        hasher=hasher,
        exclude_paths=["/health"],
        policies=[ScopeRules([ScopeRule("/admin", "admin")])],
    )
    async with make_client(app) as client:
        for _ in range(3):
            assert (await client.get("/", headers={"X-API-Key": reader.key})).status_code == 200
        assert (await client.get("/admin", headers={"X-API-Key": reader.key})).status_code == 403
        assert (await client.get("/health", headers={"X-API-Key": reader.key})).status_code == 200
        assert (await client.get("/", headers={"X-API-Key": reader.key + "x"})).status_code == 401
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/", headers={"X-API-Key": other.key})).status_code == 200
    assert app.auth.usage is not None
    await app.auth.usage.flush()
    assert await today(store, reader.record) == 3
    assert await today(store, other.record) == 1


def test_counts_are_written_at_lifespan_shutdown(hasher: KeyHasher) -> None:
    """Counts still waiting for the interval are written when the server shuts down."""
    store = MemoryKeyStore()
    issued = anyio.run(lambda: KeyManager(store, hasher).create("a"))
    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(
        APIKeyMiddleware, store=store, hasher=hasher, usage=UsageOptions(flush_interval=3600)
    )
    with TestClient(app) as client:
        for _ in range(5):
            assert client.get("/", headers={"X-API-Key": issued.key}).status_code == 200
        assert anyio.run(today, store, issued.record) == 0  # not due yet
    assert anyio.run(today, store, issued.record) == 5
    record = anyio.run(store.get, issued.record.key_id)
    assert record is not None
    assert record.last_used_at is not None


async def test_a_failing_store_write_never_fails_a_request(
    hasher: KeyHasher, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store refuses usage writes, requests succeed and counts wait; the next
    flush after it recovers writes them all."""
    store = FlakyStore()
    issued = await KeyManager(store, hasher).create("a")
    app = APIKeyMiddleware(
        Starlette(routes=[Route("/", hello)]),
        store=store,
        hasher=hasher,
        usage=UsageOptions(flush_interval=0.001),  # a flush after nearly every response
    )
    store.down = True
    async with make_client(app) as client:
        for _ in range(4):
            await anyio.sleep(0.002)
            assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
        assert "could not record key usage" in caplog.text
        assert store.batches == []
        store.down = False
        await anyio.sleep(0.002)
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
    assert await today(store, issued.record) == 5


async def test_a_refusal_also_writes_counts_that_are_due(
    hasher: KeyHasher, make_client: MakeClient
) -> None:
    """Counts due for writing go after any response, a 401 included."""
    store = FlakyStore()
    issued = await KeyManager(store, hasher).create("a")
    app = APIKeyMiddleware(
        Starlette(routes=[Route("/", hello)]),
        store=store,
        hasher=hasher,
        usage=UsageOptions(flush_interval=0.001),
    )
    async with make_client(app) as client:
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
        store.batches.clear()  # written after that response
        await anyio.sleep(0.002)
        app.auth.usage.count(issued.record.key_id)  # type: ignore[union-attr]
        assert (await client.get("/")).status_code == 401
    assert len(store.batches) == 1


async def test_usage_off_writes_nothing(hasher: KeyHasher, make_client: MakeClient) -> None:
    """`usage=False`: neither counts nor last use."""
    store = FlakyStore()
    issued = await KeyManager(store, hasher).create("a")
    app = APIKeyMiddleware(
        Starlette(routes=[Route("/", hello)]), store=store, hasher=hasher, usage=False
    )
    assert app.auth.usage is None
    async with make_client(app) as client:
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
    await store.aclose()
    assert store.batches == []
    assert (await store.get(issued.record.key_id)) == issued.record


async def test_memory_store_drops_counts_past_retention() -> None:
    """Buckets older than the retention are dropped as new counts arrive."""
    store = MemoryKeyStore(usage_retention=UsageRetention(hourly=timedelta(days=2)))
    now = bucket_start(datetime.now(timezone.utc), "hour")
    old, recent = now - timedelta(days=3), now - timedelta(hours=1)
    await store.add_usage(UsageBatch(hours={"A" * 12: {old: 1, recent: 1}}, last_used={}))
    found = await store.usage("A" * 12, since=old - HOUR, until=now + HOUR, granularity="hour")
    assert found == [UsageBucket(recent, 1)]


async def test_an_unexpected_store_error_is_logged_and_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any exception from a store's write (a bug, a driver's own error) is logged with its
    traceback and the counts kept, as for an outage."""
    store, clock, wall = FlakyStore(), FakeClock(), WallClock(T0 - HOUR / 2)
    usage = recorder(store, clock, wall)
    real_add = store.add_usage

    async def broken(batch: UsageBatch) -> None:
        raise RuntimeError("a bug")

    store.add_usage = broken  # type: ignore[method-assign]
    usage.count("A" * 12)
    await usage.flush()
    assert "key usage write failed" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    assert "could not record key usage (RuntimeError): 1 counts kept" in caplog.text
    store.add_usage = real_add  # type: ignore[method-assign]
    await usage.flush()
    assert await hours(store, "A" * 12) == [UsageBucket(bucket_start(T0, "hour"), 1)]
