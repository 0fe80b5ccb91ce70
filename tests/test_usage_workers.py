"""Request counts add up across processes: separate uvicorn workers on one store.

Three workers run tests/usage_app.py against a shared SQLite file, a PostgreSQL
database and a Redis server. Each key gets a known number of requests, spread over
the workers and sent concurrently, while the workers write counts every 50 ms; then
the workers are stopped (SIGTERM: uvicorn's graceful shutdown runs the lifespan
shutdown, which writes what is left). The store's totals must equal what was sent.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from apiguard.keys import KeyHasher, KeyManager, open_store
from apiguard.keys.usage import bucket_start
from apiguard.types import UsageStore
from tests.processes import UvicornProcess

from .conftest import PEPPER

pytestmark = pytest.mark.anyio

WORKERS = 3
SENT = {"alice": 41, "bob": 97, "carol": 160}  # requests per key


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/keys.db"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_counts_from_several_workers_add_up(
    shared_store_url: str, hasher: KeyHasher, tmp_path: Path
) -> None:
    """Three workers count every request; the store's totals are exactly what was sent."""
    store = open_store(shared_store_url)
    try:
        manager = KeyManager(store, hasher)
        issued = {name: await manager.create(name) for name in SENT}  # creates the schema
        env = {
            "APIGUARD_TEST_STORE": shared_store_url,
            "APIGUARD_TEST_FLUSH": "0.05",
            "APIGUARD_PEPPER": PEPPER,
        }
        started = [
            UvicornProcess(
                "tests.usage_app:app", env, tmp_path / f"worker-{n}.log", "--lifespan", "on"
            )
            for n in range(WORKERS)
        ]
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                for worker in started:
                    await worker.wait_until(client, "/health")
                requests = [
                    (started[n % WORKERS].url, issued[name].key)
                    for name, count in SENT.items()
                    for n in range(count)
                ]
                semaphore = asyncio.Semaphore(16)

                async def send(url: str, key: str) -> int:
                    async with semaphore:
                        return (await client.get(url, headers={"X-API-Key": key})).status_code

                statuses = await asyncio.gather(*(send(url, key) for url, key in requests))
                assert statuses == [200] * len(requests)
        finally:
            exits = [worker.stop(timeout=30) for worker in started]
        for worker in started:
            assert "Traceback" not in worker.output(), worker.output()
            assert "could not record key usage" not in worker.output(), worker.output()
        # uvicorn ends a graceful shutdown on SIGTERM by re-raising the signal.
        assert set(exits) <= {0, -signal.SIGTERM}, exits

        assert isinstance(store, UsageStore)
        now = datetime.now(timezone.utc)
        since = bucket_start(now, "day") - timedelta(days=1)
        until = now + timedelta(days=1)
        for name, count in SENT.items():
            key_id = issued[name].record.key_id
            days = await store.usage(key_id, since=since, until=until, granularity="day")
            hours = await store.usage(key_id, since=since, until=until, granularity="hour")
            assert sum(bucket.count for bucket in days) == count, name
            assert sum(bucket.count for bucket in hours) == count, name
            record = await store.get(key_id)
            assert record is not None
            assert record.last_used_at is not None
    finally:
        await store.aclose()
