"""RedisKeyStore on a real redis-server: layout, URLs, atomic writes, outages."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone

import pytest
import redis
import redis.asyncio as aioredis

from apiguard import BackendUnavailableError, ConfigurationError, KeyStateError
from apiguard.keys import RedisKeyStore, open_store
from apiguard.keys.record import utcnow
from apiguard.keys.usage import UsageBatch
from apiguard.testing import _recorder, make_record
from tests.servers import RedisServer, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisKeyStore]:
    async with RedisKeyStore.from_url(redis_url) as store:
        yield store


@pytest.fixture
def raw(redis_server: RedisServer) -> redis.Redis:
    """A plain client on the test server, to look at what the store wrote."""
    return redis_server.client()


def test_every_url_scheme_opens_a_redis_store() -> None:
    for url in (
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@cache.example:6380/2",
        "unix:///run/redis.sock?db=1",
    ):
        store = open_store(url)
        assert isinstance(store, RedisKeyStore)
        asyncio.run(store.aclose())


async def test_tcp_and_unix_socket_urls_reach_the_same_data(redis_server: RedisServer) -> None:
    redis_server.flush()
    async with open_store(redis_server.url()) as tcp, open_store(redis_server.unix_url()) as unix:  # type: ignore[attr-defined]
        assert "redis.sock" in repr(unix)
        assert f"127.0.0.1:{redis_server.port}" in repr(tcp)
        await tcp.add(make_record())
        assert await unix.get("K" * 12) == make_record()


async def test_a_record_is_one_hash_read_in_one_command(
    store: RedisKeyStore, raw: redis.Redis
) -> None:
    """The layout the README describes, and a lookup that costs the server one command."""
    at = utcnow().replace(microsecond=123456)
    await store.add(make_record(expires_at=at, scopes=frozenset({"b", "a"})))
    assert raw.smembers("apiguard:keys") == {b"K" * 12}
    assert raw.hgetall("apiguard:key:" + "K" * 12) == {
        b"name": b"alice",
        b"secret_hash": b"$hmac-sha256$" + b"0" * 64,
        b"scopes": b'["a", "b"]',
        b"metadata": b'{"team":"core"}',
        b"created_at": b"1735689600000000",
        b"expires_at": str(int(at.timestamp()) * 1_000_000 + 123456).encode(),
    }
    raw.config_resetstat()
    assert await store.get("K" * 12) is not None
    calls = {name: s["calls"] for name, s in raw.info("commandstats").items()}
    del calls["cmdstat_config|resetstat"]
    assert calls == {"cmdstat_hgetall": 1}


async def test_records_written_before_limits_existed_read_back_without_them(
    store: RedisKeyStore, raw: redis.Redis
) -> None:
    """A hash without `rate_limit` and `quota` (an older apiguard's) is a record without
    them; a record with them stores them as plain fields."""
    await store.add(make_record(rate_limit="5/second", quota="10/day"))
    stored = raw.hgetall("apiguard:key:" + "K" * 12)
    assert (stored[b"rate_limit"], stored[b"quota"]) == (b"5/second", b"10/day")
    raw.hdel("apiguard:key:" + "K" * 12, "rate_limit", "quota")
    assert await store.get("K" * 12) == make_record()


async def test_key_prefixes_keep_stores_apart(redis_url: str) -> None:
    async with (
        RedisKeyStore.from_url(redis_url, key_prefix="tenant-a:") as a,
        RedisKeyStore.from_url(redis_url, key_prefix="tenant-b:") as b,
    ):
        await a.add(make_record())
        assert await b.get("K" * 12) is None
        assert await b.list() == []
        await b.add(make_record(name="bob"))
        assert [r.name for r in await a.list()] == ["alice"]


async def test_a_client_with_decoded_responses_works_too(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = RedisKeyStore(client)
        await store.add(make_record())
        assert await store.get("K" * 12) == make_record()
        assert await store.list() == [make_record()]
        revoked = await store.revoke("K" * 12, at=utcnow())
        assert revoked.status() == "revoked"
        await store.aclose()
        assert await client.ping()  # a client given to the store stays open
    finally:
        await client.aclose()


async def test_list_reads_in_batches(store: RedisKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("apiguard.keys.redis._LIST_BATCH", 3)
    for i in range(8):
        await store.add(
            make_record(f"{i:012d}", created_at=make_record().created_at - timedelta(i))
        )
    assert [r.key_id for r in await store.list()] == [f"{i:012d}" for i in reversed(range(8))]


# --- atomic writes -------------------------------------------------------------


async def test_the_same_key_id_added_by_many_clients_is_stored_once(redis_url: str) -> None:
    """Twenty stores, each with its own connection, add the same key id at once: one wins."""
    stores = [RedisKeyStore.from_url(redis_url) for _ in range(20)]
    try:
        results = await asyncio.gather(
            *(s.add(make_record(name=f"owner-{i}")) for i, s in enumerate(stores)),
            return_exceptions=True,
        )
        assert results.count(None) == 1
        assert all(isinstance(r, KeyStateError) for r in results if r is not None)
        winner = results.index(None)
        got = await stores[0].get("K" * 12)
        assert got is not None
        assert got.name == f"owner-{winner}"
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


async def test_concurrent_revokes_keep_the_first_time(store: RedisKeyStore) -> None:
    await store.add(make_record())
    now = utcnow().replace(microsecond=0)
    times = [now + timedelta(seconds=i) for i in range(10)]
    results = await asyncio.gather(*(store.revoke("K" * 12, at=t) for t in times))
    assert len({r.revoked_at for r in results}) == 1
    stored = await store.get("K" * 12)
    assert stored is not None
    assert stored.revoked_at == results[0].revoked_at


async def test_concurrent_usage_keeps_the_latest_time(store: RedisKeyStore) -> None:
    await store.add(make_record())
    now = utcnow().replace(microsecond=0)
    times = [now + timedelta(milliseconds=i) for i in (5, 1, 9, 3, 7, 2)]
    await asyncio.gather(*(store.record_usage("K" * 12, at=t) for t in times))
    stored = await store.get("K" * 12)
    assert stored is not None
    assert stored.last_used_at == max(times)


async def test_rotating_to_a_taken_key_id_changes_nothing(store: RedisKeyStore) -> None:
    now = utcnow().replace(microsecond=0)
    await store.add(make_record(expires_at=now + timedelta(days=90)))
    await store.add(make_record("N" * 12, "bob"))
    seen: list[str] = []
    store.add_listener(_recorder(seen))
    with pytest.raises(KeyStateError):
        await store.rotate("K" * 12, make_record("N" * 12), old_expires_at=now)
    old = await store.get("K" * 12)
    assert old is not None
    assert old.expires_at == now + timedelta(days=90)
    new = await store.get("N" * 12)
    assert new is not None
    assert new.name == "bob"
    assert seen == []


# --- errors and outages ----------------------------------------------------------


async def test_wrong_password_is_unavailable_and_never_shown(redis_server: RedisServer) -> None:
    wrong = "Wr0ng-redis-Passw0rd"
    async with open_store(redis_server.url(password=wrong)) as store:  # type: ignore[attr-defined]
        with pytest.raises(BackendUnavailableError, match="AuthenticationError") as info:
            await store.get("K" * 12)
        assert wrong not in "".join(traceback.format_exception(info.value))
        assert wrong not in repr(store)


def test_a_malformed_url_is_a_configuration_error_without_the_password() -> None:
    password = "s3cret-Pa55"
    with pytest.raises(ConfigurationError) as info:
        open_store(f"redis://:{password}@cache.example:port/0")
    assert "redis://:***@cache.example:port/0" in str(info.value)
    assert password not in "".join(traceback.format_exception(info.value))


async def test_nothing_listening_is_unavailable() -> None:
    async with open_store(f"redis://127.0.0.1:{free_port()}/0") as store:  # type: ignore[attr-defined]
        with pytest.raises(BackendUnavailableError, match="ConnectionError"):
            await store.get("K" * 12)


async def test_a_wrong_answer_is_unavailable(store: RedisKeyStore, raw: redis.Redis) -> None:
    """A server whose answer makes no sense (here WRONGTYPE) is no store to rely on."""
    raw.set("apiguard:key:" + "K" * 12, "not a hash")
    with pytest.raises(BackendUnavailableError, match="ResponseError"):
        await store.get("K" * 12)


async def test_not_a_redis_server_is_unavailable(postgres_url: str) -> None:
    """A redis:// URL that reaches another server (PostgreSQL here) is a 503, not a crash."""
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    async with RedisKeyStore.from_url(
        f"redis://127.0.0.1:{port}/0", socket_timeout=1, socket_connect_timeout=1
    ) as store:
        with pytest.raises(BackendUnavailableError):
            await store.get("K" * 12)


async def test_paused_then_resumed(make_redis_server: Callable[[], RedisServer]) -> None:
    """A server that stops answering (SIGSTOP) is unavailable after the timeout, then back."""
    server = make_redis_server()
    async with RedisKeyStore.from_url(
        server.url(), socket_timeout=0.3, socket_connect_timeout=0.3
    ) as store:
        await store.add(make_record())
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="TimeoutError"):
                await store.get("K" * 12)
            assert time.monotonic() - started < 10
        finally:
            server.resume()
        assert await store.get("K" * 12) == make_record()


async def test_stopped_then_restarted(make_redis_server: Callable[[], RedisServer]) -> None:
    """A stopped server is unavailable; restarted (empty: no persistence), the store reconnects."""
    server = make_redis_server()
    async with RedisKeyStore.from_url(server.url(), socket_connect_timeout=1) as store:
        await store.add(make_record())
        server.stop()
        with pytest.raises(BackendUnavailableError, match="ConnectionError"):
            await store.get("K" * 12)
        server.start()
        assert await store.get("K" * 12) is None
        await store.add(make_record())  # the scripts are loaded again on the new server
        assert await store.get("K" * 12) == make_record()


# --- the optional dependency --------------------------------------------------------


def test_redis_is_imported_lazily() -> None:
    """Importing apiguard does not import redis-py; naming RedisKeyStore does."""
    code = (
        "import sys, apiguard, apiguard.keys;"
        "assert 'redis' not in sys.modules;"
        "apiguard.keys.RedisKeyStore;"
        "assert 'redis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "apiguard.keys.redis", raising=False)
    with pytest.raises(ConfigurationError, match=r"pip install 'apiguard-asgi\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")


async def test_usage_hashes_expire_with_their_retention(
    store: RedisKeyStore, raw: redis.Redis
) -> None:
    """Hourly counts sit in one hash per key and day, daily counts in one per key and
    month; each expires when its last bucket leaves the retention (14 and 400 days)."""
    hour = datetime(2026, 12, 31, 23, tzinfo=timezone.utc)
    await store.add_usage(UsageBatch(hours={"K" * 12: {hour: 3}}, last_used={}))
    by_hour, by_day = (
        "apiguard:usage:KKKKKKKKKKKK:hour:2026-12-31",
        "apiguard:usage:KKKKKKKKKKKK:day:2026-12",
    )
    assert raw.hgetall(by_hour) == {str(int(hour.timestamp())).encode(): b"3"}
    assert raw.hgetall(by_day) == {str(int(hour.replace(hour=0).timestamp())).encode(): b"3"}
    new_year = datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert raw.expiretime(by_hour) == int((new_year + timedelta(days=14)).timestamp())
    assert raw.expiretime(by_day) == int((new_year + timedelta(days=400)).timestamp())
