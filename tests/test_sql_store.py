"""SQLKeyStore on SQLite and on a real PostgreSQL server: schema versions, URLs, outages."""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from apiguard import BackendUnavailableError, ConfigurationError, KeyStateError
from apiguard.keys import open_store
from apiguard.keys import sql as sql_module
from apiguard.keys._sql_usage import usage_metadata
from apiguard.keys.sql import SQLKeyStore, keys_table, schema_table
from apiguard.keys.usage import UsageBatch, UsageBucket, bucket_start
from apiguard.testing import make_record
from tests.servers import PostgresServer, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database on SQLite or on the PostgreSQL test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/keys.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def versions(url: str) -> list[tuple[str, int]]:
    """The rows of `apiguard_schema`, read with an engine of the test's own."""
    engine = SQLKeyStore.from_url(url)._engine
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.select(schema_table.c.component, schema_table.c.version))
            return sorted((row[0], row[1]) for row in result)
    finally:
        await engine.dispose()


async def run_sql(url: str, action: Callable[[sa.Connection], object]) -> None:
    engine = SQLKeyStore.from_url(url)._engine
    try:
        async with engine.begin() as conn:
            await conn.run_sync(action)
    finally:
        await engine.dispose()


# --- the schema and its version -------------------------------------------------


async def test_a_new_database_records_the_schema_version(sql_url: str) -> None:
    """The first use creates the tables and records the versions this apiguard makes."""
    async with SQLKeyStore.from_url(sql_url) as store:
        assert await store.list() == []
    assert await versions(sql_url) == [
        ("keys", sql_module.schema_version()),
        ("usage", sql_module.schema_version("usage")),
    ]


def version_1_keys_table() -> sa.Table:
    """The keys table as version 1 laid it out: without `rate_limit` and `quota`."""
    return sa.Table(
        keys_table.name,
        sa.MetaData(),
        *(c._copy() for c in keys_table.columns if c.name not in ("rate_limit", "quota")),
    )


def version_1_row() -> dict[str, object]:
    row = sql_module._to_row(make_record())
    del row["rate_limit"], row["quota"]
    return row


def make_version_1(conn: sa.Connection) -> None:
    """A database as version 1 left it: one key, and keys version 1 recorded."""
    v1 = version_1_keys_table()
    v1.create(conn)
    schema_table.create(conn)
    conn.execute(sa.insert(v1).values(version_1_row()))
    conn.execute(sa.insert(schema_table).values(component="keys", version=1))


async def test_a_keys_table_from_before_versions_is_version_1(sql_url: str) -> None:
    """A database made before the version table keeps its keys, is recorded as version 1
    and upgraded from there."""
    v1 = version_1_keys_table()
    await run_sql(sql_url, v1.create)
    await run_sql(sql_url, lambda conn: conn.execute(sa.insert(v1).values(version_1_row())))
    async with SQLKeyStore.from_url(sql_url) as store:
        assert await store.get("K" * 12) == make_record()
    assert await versions(sql_url) == [("keys", sql_module.schema_version()), ("usage", 1)]


async def test_version_1_is_upgraded_to_hold_rate_limits_and_quotas(sql_url: str) -> None:
    """Upgrade 1 -> 2 adds `rate_limit` and `quota`: old keys read back without them,
    and new limits can be stored on them."""
    await run_sql(sql_url, make_version_1)
    async with SQLKeyStore.from_url(sql_url) as store:
        old = await store.get("K" * 12)
        assert old == make_record()
        assert (old.rate_limit, old.quota) == (None, None)
        await store.update_limits("K" * 12, rate_limit="5/second", quota="100/day")
        got = await store.get("K" * 12)
        assert got is not None
        assert (got.rate_limit, got.quota) == ("5/second", "100/day")
    assert sql_module.schema_version() >= 2
    assert await versions(sql_url) == [("keys", sql_module.schema_version()), ("usage", 1)]


async def test_a_database_without_the_usage_table_gets_it_on_open(sql_url: str) -> None:
    """A database made before request counts (keys version 1 recorded, no usage table)
    gets the usage table, recorded as its own component, and counts at once."""
    await run_sql(sql_url, make_version_1)
    day = bucket_start(datetime.now(timezone.utc) - timedelta(days=2), "day")
    async with SQLKeyStore.from_url(sql_url) as store:
        assert await store.get("K" * 12) == make_record()
        await store.add_usage(UsageBatch(hours={"K" * 12: {day: 2}}, last_used={}))
        got = await store.usage(
            "K" * 12, since=day, until=day + timedelta(days=1), granularity="day"
        )
    assert got == [UsageBucket(day, 2)]
    assert await versions(sql_url) == [("keys", sql_module.schema_version()), ("usage", 1)]


async def test_a_newer_usage_schema_is_refused(sql_url: str) -> None:
    """Each component's version is checked: a newer usage table is not written to."""
    async with SQLKeyStore.from_url(sql_url) as store:
        await store.list()
    await run_sql(
        sql_url,
        lambda conn: conn.execute(
            sa.update(schema_table).where(schema_table.c.component == "usage").values(version=7)
        ),
    )
    async with SQLKeyStore.from_url(sql_url) as store:
        with pytest.raises(ConfigurationError, match=r"usage schema is version 7, newer"):
            await store.get("K" * 12)


def test_schema_version_by_component() -> None:
    assert sql_module.schema_version("usage") == 1
    with pytest.raises(ValueError, match="no schema component"):
        sql_module.schema_version("nope")


async def test_expired_usage_is_pruned(sql_url: str) -> None:
    """`add_usage` deletes buckets past their retention (once an hour per store)."""
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    old, recent = now - timedelta(days=20), now - timedelta(hours=2)
    async with SQLKeyStore.from_url(sql_url) as store:
        # Pruned after adding: the old hour goes at once, its day stays.
        await store.add_usage(UsageBatch(hours={"K" * 12: {old: 1}}, last_used={}))
        await store.add_usage(UsageBatch(hours={"K" * 12: {recent: 1}}, last_used={}))
        since = now - timedelta(days=30)
        hours = await store.usage("K" * 12, since=since, until=now, granularity="hour")
        days = await store.usage("K" * 12, since=since, until=now, granularity="day")
    assert hours == [UsageBucket(recent, 1)]  # hourly: 14 days
    assert [d.count for d in days] == [1, 1]  # daily: 400 days


async def test_a_newer_schema_is_refused(sql_url: str) -> None:
    """An older apiguard does not write to tables laid out by a newer one."""
    async with SQLKeyStore.from_url(sql_url) as store:
        await store.list()
    await run_sql(sql_url, lambda conn: conn.execute(sa.update(schema_table).values(version=99)))
    async with SQLKeyStore.from_url(sql_url) as store:
        with pytest.raises(ConfigurationError, match=r"version 99, newer than .*upgrade apiguard"):
            await store.get("K" * 12)


async def test_upgrades_run_once_when_workers_start_together(
    sql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six stores meet a version 1 database at once: the upgrade runs once, and all work."""
    async with SQLKeyStore.from_url(sql_url) as store:
        await store.add(make_record())
    ran: list[int] = []

    def add_a_column(conn: sa.Connection) -> None:
        ran.append(1)
        # Not idempotent: a second run fails (duplicate column).
        conn.execute(sa.text("ALTER TABLE apiguard_keys ADD COLUMN note VARCHAR(20)"))

    monkeypatch.setattr(sql_module, "_UPGRADES", [*sql_module._UPGRADES, add_a_column])
    stores = [SQLKeyStore.from_url(sql_url) for _ in range(6)]
    try:
        found = await asyncio.gather(*(s.get("K" * 12) for s in stores))
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))
    assert found == [make_record()] * 6
    assert ran == [1]
    assert await versions(sql_url) == [("keys", sql_module.schema_version()), ("usage", 1)]


async def test_schema_creation_by_many_workers_at_once(sql_url: str) -> None:
    """Eight stores with engines of their own create the schema on one new database at once.

    On PostgreSQL, concurrent CREATE TABLE IF NOT EXISTS can collide in the catalog;
    the schema check runs under an advisory lock.
    """
    for _ in range(3):
        stores = [SQLKeyStore.from_url(sql_url) for _ in range(8)]
        try:
            results = await asyncio.gather(*(s.list() for s in stores), return_exceptions=True)
        finally:
            await asyncio.gather(*(s.aclose() for s in stores))
        assert results == [[]] * 8
        assert await versions(sql_url) == [("keys", sql_module.schema_version()), ("usage", 1)]
        await run_sql(sql_url, lambda conn: sql_module._metadata.drop_all(conn))
        await run_sql(sql_url, lambda conn: usage_metadata.drop_all(conn))


async def test_times_in_other_zones_come_back_in_utc(sql_url: str) -> None:
    """A time given with an offset is stored as the same instant and read back in UTC."""
    paris = timezone(timedelta(hours=2))
    expires = datetime(2030, 6, 1, 14, 30, tzinfo=paris)
    async with SQLKeyStore.from_url(sql_url) as store:
        await store.add(make_record(expires_at=expires))
        got = await store.get("K" * 12)
    assert got is not None
    assert got.expires_at == expires
    assert got.expires_at is not None
    assert got.expires_at.utcoffset() == timedelta(0)
    assert got.expires_at.hour == 12


async def test_a_taken_key_id_never_shows_the_secret_hash(sql_url: str) -> None:
    """The driver's duplicate-key error reaches the traceback without statement parameters."""
    async with SQLKeyStore.from_url(sql_url) as store:
        await store.add(make_record())
        secret_hash = "$hmac-sha256$" + "7" * 64
        with pytest.raises(KeyStateError) as info:
            await store.add(make_record(secret_hash=secret_hash))
    assert secret_hash not in "".join(traceback.format_exception(info.value))


# --- PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
async def test_postgres_urls_open_a_working_store(postgres_url: str, scheme: str) -> None:
    url = postgres_url.replace("postgresql://", f"{scheme}://", 1)
    store = open_store(url)
    try:
        assert isinstance(store, SQLKeyStore)
        assert store._engine.dialect.driver == "asyncpg"
        assert store._engine.sync_engine.hide_parameters is True
        await store.add(make_record())
        assert await store.get("K" * 12) == make_record()
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_postgres_wrong_password_is_unavailable_and_never_shown(
    postgres_server: PostgresServer,
) -> None:
    """The server refuses the password: a 503 for requests, the password nowhere in sight."""
    wrong = "Wr0ng-pg-Passw0rd"
    store = open_store(postgres_server.url("postgres", password=wrong))
    try:
        with pytest.raises(BackendUnavailableError, match="InvalidPasswordError") as info:
            await store.get("K" * 12)
        assert wrong not in "".join(traceback.format_exception(info.value))
        assert wrong not in repr(store)
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_postgres_paused_then_resumed(
    make_postgres_server: Callable[[], PostgresServer],
) -> None:
    """A server that stops answering (SIGSTOP) is unavailable after the timeout, then back."""
    server = make_postgres_server()
    store = SQLKeyStore.from_url(
        server.url(), connect_args={"timeout": 0.5, "command_timeout": 0.5}
    )
    try:
        await store.add(make_record())
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="TimeoutError"):
                await store.get("K" * 12)
            assert time.monotonic() - started < 5
        finally:
            server.resume()
        assert await store.get("K" * 12) == make_record()
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_postgres_stopped_then_restarted(
    make_postgres_server: Callable[[], PostgresServer],
) -> None:
    """A stopped server is unavailable; once restarted, the same store recovers by itself."""
    server = make_postgres_server()
    store = SQLKeyStore.from_url(server.url(), connect_args={"timeout": 2})
    try:
        await store.add(make_record())
        server.stop()
        for _ in range(2):  # the pooled connection is gone, then connecting is refused
            with pytest.raises(BackendUnavailableError):
                await store.get("K" * 12)
        server.start()
        assert await store.get("K" * 12) == make_record()
    finally:
        await store.aclose()


async def test_unreachable_postgres_is_unavailable() -> None:
    """Nothing listening: connection refused is a BackendUnavailableError."""
    store = open_store(f"postgresql://app:pw@127.0.0.1:{free_port()}/keys")
    try:
        with pytest.raises(BackendUnavailableError, match="ConnectionRefusedError"):
            await store.get("K" * 12)
    finally:
        await store.aclose()


def test_missing_asyncpg_names_the_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'apiguard-asgi\[postgres\]'"):
        open_store("postgresql://app:pw@db.example/keys")


async def test_a_given_engine_is_left_open(tmp_path: Path) -> None:
    """A store made from an engine leaves the engine to its owner."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/keys.db")
    try:
        async with SQLKeyStore(engine) as store:
            await store.add(make_record())
        async with engine.connect() as conn:  # still usable
            count = sa.select(sa.func.count()).select_from(keys_table)
            assert (await conn.execute(count)).scalar() == 1
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_paused_lookup_is_cut_off_by_the_deadline_then_recovers(
    make_postgres_server: Callable[[], PostgresServer],
) -> None:
    """A lookup on a server that stopped answering ends at the verifier's deadline (503),
    long before the driver's own timeouts; once the server answers again, so do we."""
    from apiguard.keys import KeyHasher, KeyManager, KeyVerifier
    from apiguard.testing import FakeClock

    server = make_postgres_server()
    store = SQLKeyStore.from_url(server.url())  # driver timeouts: 10 s connect, 30 s statement
    hasher = KeyHasher("p" * 40)
    try:
        issued = await KeyManager(store, hasher).create("a")
        clock = FakeClock()
        verifier = KeyVerifier(store, hasher, deadline=0.5, clock=clock)
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="no answer within"):
                await verifier.verify(issued.key.encode())
            assert time.monotonic() - started < 3
        finally:
            server.resume()
        clock.now += 1.0  # past the backoff that follows a failed lookup (0.5-1 s)
        with anyio.fail_after(10):
            principal, _ = await verifier.verify(issued.key.encode())
        assert principal.key_id == issued.record.key_id
    finally:
        await store.aclose()
