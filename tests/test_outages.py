"""Real server outages with `CacheOptions.stale_if_error` on and off, and the recovery."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from apiguard import BackendUnavailableError, CacheOptions, InvalidCredentials
from apiguard.keys import KeyHasher, KeyManager, KeyVerifier, RedisKeyStore
from apiguard.keys.sql import SQLKeyStore
from apiguard.testing import FakeClock
from apiguard.types import KeyStore
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.anyio

TTL = 30.0
STALE_IF_ERROR = 300.0


async def outage_and_recovery(
    store: KeyStore,
    hasher: KeyHasher,
    down: Callable[[], None],
    up: Callable[[], None],
) -> None:
    """One key verified on two verifiers, stale-if-error on and off, across an outage."""
    clock = FakeClock()
    stale = KeyVerifier(
        store, hasher, cache=CacheOptions(ttl=TTL, stale_if_error=STALE_IF_ERROR), clock=clock
    )
    strict = KeyVerifier(store, hasher, cache=CacheOptions(ttl=TTL), clock=clock)
    manager = KeyManager(store, hasher)
    issued, other = await manager.create("a"), await manager.create("b")
    key = issued.key.encode()
    for verifier in (stale, strict):
        await verifier.verify(key)

    down()
    try:
        clock.now += TTL + 1
        principal, _ = await stale.verify(key)
        assert principal.key_id == issued.record.key_id
        with pytest.raises(BackendUnavailableError):
            await strict.verify(key)
        with pytest.raises(BackendUnavailableError):
            await stale.verify(other.key.encode())  # never verified here: nothing to serve
    finally:
        up()

    # Back without a restart: both verifiers ask the store again and see its answers.
    clock.now += TTL + STALE_IF_ERROR
    for verifier in (stale, strict):
        principal, _ = await verifier.verify(key)
        assert principal.key_id == issued.record.key_id
        await verifier.verify(other.key.encode())
    await manager.revoke(issued.record.key_id)
    for verifier in (stale, strict):
        with pytest.raises(InvalidCredentials):
            await verifier.verify(key)


@pytest.mark.redis
async def test_redis_paused_then_resumed(
    make_redis_server: Callable[[], RedisServer],
    hasher: KeyHasher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis frozen (SIGSTOP): a grant past its ttl is served stale only when opted in."""
    server = make_redis_server()
    async with RedisKeyStore.from_url(
        server.url(), socket_timeout=0.5, socket_connect_timeout=0.5
    ) as store:
        await outage_and_recovery(store, hasher, server.pause, server.resume)
    assert "under stale_if_error (key_id=" in caplog.text


@pytest.mark.postgres
async def test_postgres_stopped_then_restarted(
    make_postgres_server: Callable[[], PostgresServer],
    hasher: KeyHasher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stopped: a grant past its ttl is served stale only when opted in."""
    server = make_postgres_server()
    store = SQLKeyStore.from_url(server.url(), connect_args={"timeout": 2})
    try:
        await outage_and_recovery(store, hasher, server.stop, server.start)
    finally:
        await store.aclose()
    assert "under stale_if_error (key_id=" in caplog.text
