"""Invalidation channels on real servers: delivery, reconnection, logging, configuration."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import redis.asyncio as aioredis

from apiguard.exceptions import ConfigurationError
from apiguard.keys import BaseKeyStore, RedisKeyStore, SQLKeyStore, open_store
from apiguard.keys.channel import (
    ALL_KEYS,
    InvalidationChannel,
    PostgresChannel,
    RedisChannel,
    channel_from_push,
    split_push,
)
from apiguard.keys.record import utcnow
from apiguard.testing import make_record
from tests.servers import PostgresServer, RedisServer, free_port

pytestmark = pytest.mark.anyio

WAIT = 15.0  # seconds anything here may take on a loaded machine


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        await anyio.sleep(0.01)


@asynccontextmanager
async def listening(url: str) -> AsyncIterator[tuple[SQLKeyStore | RedisKeyStore, list[str]]]:
    """A store whose channel listens, and what its listener has heard."""
    store = open_store(url)
    assert isinstance(store, (SQLKeyStore, RedisKeyStore))
    assert store.channel is not None
    heard: list[str] = []
    store.add_listener(heard.append)  # on a running loop: the subscriber starts now
    try:
        await until(lambda: store.channel is not None and store.channel.connected, "connected")
        yield store, heard
    finally:
        await store.aclose()


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def url(request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(f"{request.param}_url")
    return value


async def test_changes_reach_other_stores_once(url: str) -> None:
    """Revoke and rotate reach another store object; a store's own events are not echoed."""
    async with listening(url) as (store, heard), open_store(url) as other:  # type: ignore[attr-defined]
        assert heard == [ALL_KEYS]  # on connecting: anything may have changed meanwhile
        await other.add(make_record("A" * 12))
        await other.revoke("A" * 12, at=utcnow())
        await until(lambda: "A" * 12 in heard, "the revoke")
        await other.rotate("A" * 12, make_record("B" * 12), old_expires_at=utcnow())
        await until(lambda: heard.count("A" * 12) == 2, "the rotation")
        await store.add(make_record("C" * 12))
        await store.revoke("C" * 12, at=utcnow())  # heard at once, here
        await other.add(make_record("D" * 12))
        await other.revoke("D" * 12, at=utcnow())
        await until(lambda: "D" * 12 in heard, "the second revoke")
        # Our own event came before D's, and was skipped.
        assert heard == [ALL_KEYS, "A" * 12, "A" * 12, "C" * 12, "D" * 12]


@pytest.mark.postgres
async def test_a_postgres_channel_publishes_by_itself_too(postgres_url: str) -> None:
    """`PostgresChannel.publish()`, for stores that cannot NOTIFY in their own transaction."""
    async with listening(postgres_url) as (_, heard):
        channel = PostgresChannel(postgres_url)
        await channel.publish("Z" * 12)
        await channel.aclose()
        await until(lambda: "Z" * 12 in heard, "the event")


async def test_foreign_messages_are_ignored(redis_url: str, redis_server: RedisServer) -> None:
    """Only "<key id> <sender>" events are applied: anything else on the channel is not ours."""
    async with listening(redis_url) as (_, heard), open_store(redis_url) as other:  # type: ignore[attr-defined]
        with redis_server.client() as raw:
            for junk in ("", "no-sender", "a b c", "K" * 65 + " x", "*" + " abc"):
                raw.publish("apiguard:invalidations", junk)
        await other.add(make_record())
        await other.revoke("K" * 12, at=utcnow())
        await until(lambda: "K" * 12 in heard, "the revoke")
        assert heard == [ALL_KEYS, "K" * 12]


async def kill_listener(
    url: str, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    if url.startswith("redis"):
        with redis_server.client() as raw:
            assert raw.client_kill_filter(_type="pubsub") >= 1
    else:
        postgres_server.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'apiguard-invalidations'",
            url.rsplit("/", 1)[1],
        )


async def test_a_lost_connection_is_logged_and_comes_back(
    url: str, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> None:
    """Killed on the server, the subscription is logged lost, reconnects, and delivers again."""
    server = "postgres_server" if url.startswith("postgres") else "redis_server"
    postgres_server = request.getfixturevalue("postgres_server") if "postgres" in server else None
    redis_server = request.getfixturevalue("redis_server") if "redis" in server else None
    caplog.set_level(logging.INFO, "apiguard.keys")
    async with listening(url) as (store, heard), open_store(url) as other:  # type: ignore[attr-defined]
        await kill_listener(url, postgres_server, redis_server)  # type: ignore[arg-type]
        await until(lambda: "invalidation channel back after" in caplog.text, "reconnection")
        assert "invalidation channel lost" in caplog.text
        lost = [r for r in caplog.records if "channel lost" in r.getMessage()]
        assert [r.levelno for r in lost] == [logging.WARNING]
        assert heard == [ALL_KEYS, ALL_KEYS]  # the caches are cleared again
        await other.add(make_record())
        await other.revoke("K" * 12, at=utcnow())
        await until(lambda: "K" * 12 in heard, "a revoke after reconnecting")
        assert store.channel is not None
        assert store.channel.connected


@pytest.mark.redis
async def test_a_paused_server_is_noticed_and_recovered(
    make_redis_server: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stops answering closes nothing: the heartbeat notices, then it reconnects."""
    server = make_redis_server()
    client = aioredis.Redis.from_url(server.url(), socket_timeout=0.5)
    channel = RedisChannel(client, heartbeat=0.2, max_backoff=0.5)
    try:
        async with RedisKeyStore(client, channel=channel) as store:
            heard: list[str] = []
            store.add_listener(heard.append)
            await until(lambda: channel.connected, "connected")
            server.pause()
            try:
                await until(lambda: not channel.connected, "the pause noticed")
                assert "invalidation channel lost (TimeoutError)" in caplog.text
            finally:
                server.resume()
            await until(lambda: channel.connected, "reconnected")
            assert "invalidation channel back after" in caplog.text
            assert heard == [ALL_KEYS, ALL_KEYS]
        assert not channel.running  # aclose() stopped it
    finally:
        await client.aclose()


async def test_a_failed_publish_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The write is done: a channel that cannot take the event costs a WARNING, not the revoke."""
    push = quote(f"redis://127.0.0.1:{free_port()}/0", safe="")
    async with SQLKeyStore.from_url(f"sqlite:///{tmp_path}/keys.db?push={push}") as store:
        assert isinstance(store.channel, RedisChannel)
        await store.add(make_record())
        record = await store.revoke("K" * 12, at=utcnow())
        assert record.status() == "revoked"
    assert "could not publish the change of key KKKKKKKKKKKK (ConnectionError)" in caplog.text


def test_push_parameter() -> None:
    """`?push=` is taken out of the store URL; `off` and Redis URLs are understood."""
    assert split_push("sqlite:///keys.db") == ("sqlite:///keys.db", None)
    assert split_push("sqlite:////abs/keys.db?push=off") == ("sqlite:////abs/keys.db", "off")
    assert split_push("redis://h/0?db=1#x") == ("redis://h/0?db=1#x", None)
    assert split_push("postgresql://h/db?ssl=require") == ("postgresql://h/db?ssl=require", None)
    assert split_push("postgresql://h/db?ssl=require&push=off") == (
        "postgresql://h/db?ssl=require",
        "off",
    )
    assert split_push("redis://h/0?push=redis%3A%2F%2Fother%3A6379%2F1") == (
        "redis://h/0",
        "redis://other:6379/1",
    )
    assert channel_from_push("off") is None
    assert isinstance(channel_from_push("rediss://:pw@h:6380/0"), RedisChannel)
    with pytest.raises(ConfigurationError, match="push= takes") as info:
        channel_from_push("amqp://user:s3cret@h/")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="cannot open channel"):
        channel_from_push("redis://h:port/0")
    with pytest.raises(ConfigurationError, match="must be positive"):
        RedisChannel(aioredis.Redis(), heartbeat=0)


async def test_which_store_gets_which_channel(tmp_path: Path) -> None:
    """SQLite and memory: none; PostgreSQL: LISTEN/NOTIFY; Redis: pub/sub; `off`: none."""
    sqlite = f"sqlite:///{tmp_path}/keys.db"
    cases: list[tuple[str, type]] = [
        (sqlite, type(None)),
        (f"{sqlite}?push=redis%3A%2F%2F127.0.0.1%2F0", RedisChannel),
        ("postgresql://u:pw@127.0.0.1:1/db", PostgresChannel),
        ("postgresql://u:pw@127.0.0.1:1/db?push=off", type(None)),
        ("redis://127.0.0.1:1/0", RedisChannel),
        ("redis://127.0.0.1:1/0?push=off", type(None)),
    ]
    for store_url, kind in cases:
        store = open_store(store_url)
        assert isinstance(store, BaseKeyStore)
        assert isinstance(store.channel, kind), store_url
        if isinstance(store.channel, PostgresChannel):
            assert "pw" not in repr(store.channel)
        await store.aclose()
    assert getattr(open_store("memory://"), "channel", None) is None


class IdleChannel(InvalidationChannel):
    """Connects at once, then hears nothing: for the subscriber's life cycle alone."""

    async def publish(self, key_id: str) -> None:
        pass

    async def _listen(self, connected: Callable[[], None], deliver: Callable[[str], None]) -> None:
        connected()
        await anyio.sleep_forever()


def test_a_subscriber_follows_its_store_to_a_new_event_loop() -> None:
    """A store used from one event loop after another has a subscriber on each in turn."""
    channel = IdleChannel()
    store = BaseKeyStore(channel=channel)
    heard: list[str] = []
    store.add_listener(heard.append)  # no loop runs: nothing starts
    assert not channel.running

    async def use() -> None:
        store._watch()
        store._watch()  # one subscriber, however often asked
        await anyio.sleep(0.01)
        assert channel.connected

    asyncio.run(use())  # which cancels the subscriber as the loop ends
    assert not channel.connected
    asyncio.run(use())
    assert heard == [ALL_KEYS, ALL_KEYS]
    asyncio.run(store.aclose())
    assert not channel.running
