"""Revocation pushed to every process: separate uvicorn processes on real servers.

Each worker runs tests/push_app.py on a port of its own, so the test knows which
worker answered. Delays are measured from the return of the revoke to each worker's
first 401. The pass mark is well under the cache ttl, with room for a loaded machine;
the figures themselves are printed (`pytest -s`) and recorded in benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest

from apiguard.keys import KeyHasher, KeyManager, open_store
from apiguard.types import KeyStore
from tests.processes import UvicornProcess, uvicorn_processes
from tests.servers import RedisServer

from .conftest import PEPPER

pytestmark = pytest.mark.anyio

WORKERS = 3
# Revocations measured per store; raise it (to 100, say) to record figures by hand.
REVOCATIONS = int(os.environ.get("APIGUARD_TEST_REVOCATIONS", "5"))


@contextmanager
def workers(store_url: str, tmp_path: Path, *, ttl: float = 30.0) -> Iterator[list[UvicornProcess]]:
    """`WORKERS` processes serving tests/push_app.py on `store_url`."""
    env = {
        "APIGUARD_TEST_STORE": store_url,
        "APIGUARD_TEST_TTL": str(ttl),
        "APIGUARD_PEPPER": PEPPER,
    }
    with uvicorn_processes("tests.push_app:app", env, tmp_path, WORKERS) as started:
        yield started


async def wait_connected(client: httpx.AsyncClient, workers: list[UvicornProcess]) -> None:
    """Wait until every worker answers and its invalidation channel listens."""
    for worker in workers:
        await worker.wait_until(client, "/channel", lambda answer: answer.json()["connected"])


async def warm(client: httpx.AsyncClient, workers: list[UvicornProcess], key: str) -> None:
    """Each worker verifies `key` and caches the verification."""
    for worker in workers:
        for _ in range(2):
            answer = await client.get(worker.url, headers={"X-API-Key": key})
            assert answer.status_code == 200, worker.output()


async def refusal_delays(
    client: httpx.AsyncClient, workers: list[UvicornProcess], key: str, since: float, limit: float
) -> list[float]:
    """Seconds from `since` to each worker's first 401 for `key`, polling all at once."""

    async def poll(worker: UvicornProcess) -> float:
        while True:
            answer = await client.get(worker.url, headers={"X-API-Key": key})
            now = time.perf_counter()
            if answer.status_code == 401:
                return now - since
            assert answer.status_code == 200
            if now - since > limit:
                pytest.fail(f"worker on {worker.port} still accepts the key after {limit} s")

    return list(await asyncio.gather(*(poll(worker) for worker in workers)))


@asynccontextmanager
async def open_shared(url: str) -> AsyncIterator[KeyStore]:
    """The store the workers use, opened in this process: the revoker."""
    store = open_store(url)
    try:
        yield store
    finally:
        await store.aclose()


def report(what: str, delays: list[float]) -> None:
    ordered = sorted(delays)
    p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
    print(  # noqa: T201
        f"\n{what}: {len(delays)} refusals, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
        f" max {ordered[-1] * 1000:.1f} ms"
    )


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("postgres", marks=pytest.mark.postgres)])  # fmt: skip
def shared_store_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_a_revoke_reaches_every_worker(
    shared_store_url: str, hasher: KeyHasher, tmp_path: Path
) -> None:
    """Three workers with warm caches (ttl 30 s) refuse a key revoked elsewhere at once."""
    async with open_shared(shared_store_url) as store, httpx.AsyncClient(timeout=10) as client:
        manager = KeyManager(store, hasher)
        await manager.list()  # creates the schema before the workers race to
        with workers(shared_store_url, tmp_path) as started:
            await wait_connected(client, started)
            all_delays = []
            for _ in range(REVOCATIONS):
                issued = await manager.create("alice")
                await warm(client, started, issued.key)
                await manager.revoke(issued.record.key_id)
                since = time.perf_counter()
                delays = await refusal_delays(client, started, issued.key, since, limit=10.0)
                all_delays += delays
                # The pass mark: far under the 30 s ttl (the target, 100 ms, is
                # measured, not asserted: see benchmarks/README.md).
                assert max(delays) < 2.0
            report(f"revoke -> 401 in {WORKERS} workers ({shared_store_url[:5]})", all_delays)

            # Rotation ends the old key's life at once when there is no grace.
            issued = await manager.create("bob")
            await warm(client, started, issued.key)
            await manager.rotate(issued.record.key_id, grace=timedelta(0))
            since = time.perf_counter()
            assert max(await refusal_delays(client, started, issued.key, since, 10.0)) < 2.0


async def test_a_cli_revoke_reaches_every_worker(
    postgres_url: str, hasher: KeyHasher, tmp_path: Path
) -> None:
    """`apiguard keys revoke`, in a process of its own, reaches every worker."""
    async with open_shared(postgres_url) as store, httpx.AsyncClient(timeout=10) as client:
        manager = KeyManager(store, hasher)
        issued = await manager.create("alice")
        with workers(postgres_url, tmp_path) as started:
            await wait_connected(client, started)
            await warm(client, started, issued.key)
            command = [str(Path(sys.executable).parent / "apiguard"), "keys", "revoke",
                       "--store", postgres_url, issued.record.key_id]  # fmt: skip
            result = await anyio.run_process(command, check=False)
            since = time.perf_counter()
            assert result.returncode == 0, result.stderr.decode()
            delays = await refusal_delays(client, started, issued.key, since, limit=10.0)
            report(f"CLI revoke -> 401 in {WORKERS} workers", delays)
            assert max(delays) < 2.0


async def test_without_the_channel_the_ttl_bounds_the_delay_and_it_reconnects(
    postgres_url: str,
    make_redis_server: Callable[[], RedisServer],
    hasher: KeyHasher,
    tmp_path: Path,
) -> None:
    """Channel down: the key is refused within the ttl; back: pushes work again, logged."""
    channel_server: RedisServer = make_redis_server()
    # The keys in PostgreSQL, the channel on a Redis server of its own: stopping that
    # server takes the channel down and leaves the store up.
    url = f"{postgres_url}?push={quote(channel_server.url(), safe='')}"
    ttl = 3.0
    async with open_shared(url) as store, httpx.AsyncClient(timeout=10) as client:
        manager = KeyManager(store, hasher)
        await manager.list()
        with workers(url, tmp_path, ttl=ttl) as started:
            await wait_connected(client, started)

            channel_server.stop()
            issued = await manager.create("alice")
            await warm(client, started, issued.key)
            await manager.revoke(issued.record.key_id)  # publishing fails: logged, not raised
            since = time.perf_counter()
            delays = await refusal_delays(client, started, issued.key, since, limit=ttl + 5)
            report(f"channel down, ttl {ttl:g} s: revoke -> 401", delays)
            assert max(delays) < ttl + 2.0  # (scheduling margin)
            for worker in started:
                assert "WARNING apiguard.keys invalidation channel lost" in worker.output()

            channel_server.start()
            await wait_connected(client, started)  # by itself, after its backoff
            for worker in started:
                assert "invalidation channel back after" in worker.output()
            issued = await manager.create("bob")
            await warm(client, started, issued.key)
            await manager.revoke(issued.record.key_id)
            since = time.perf_counter()
            delays = await refusal_delays(client, started, issued.key, since, limit=ttl + 5)
            report("channel back: revoke -> 401", delays)
            # Pushed, not expired: the verifications were made just now, for `ttl`.
            assert max(delays) < ttl / 2
