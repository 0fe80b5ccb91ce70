"""Request counts add up across processes: separate uvicorn workers on one store.

Three workers run tests/usage_app.py against a shared SQLite file, a PostgreSQL
database and a Redis server. Each key gets a known number of requests, spread over
the workers and sent concurrently, while the workers write counts every 50 ms; then
the workers are stopped (SIGTERM: uvicorn's graceful shutdown runs the lifespan
shutdown, which writes what is left). The store's totals must equal what was sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from apiguard.keys import KeyHasher, KeyManager, open_store
from apiguard.keys.usage import bucket_start
from apiguard.types import UsageStore
from tests.servers import free_port

from .conftest import PEPPER

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
WORKERS = 3
SENT = {"alice": 41, "bob": 97, "carol": 160}  # requests per key
STARTUP_TIMEOUT = 60.0


class Worker:
    """One uvicorn process serving tests/usage_app.py."""

    def __init__(self, store_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "APIGUARD_TEST_STORE": store_url,
            "APIGUARD_TEST_FLUSH": "0.05",
            "APIGUARD_PEPPER": PEPPER,
        }
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "uvicorn", "tests.usage_app:app", "--host", "127.0.0.1",
                 "--port", str(self.port), "--lifespan", "on", "--log-level", "warning",
                 "--no-access-log"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        """SIGTERM, as a process manager stops a server; the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung worker
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


async def wait_serving(client: httpx.AsyncClient, workers: list[Worker]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for worker in workers:
        while True:
            try:
                if (await client.get(f"{worker.url}/health")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"worker on {worker.port} did not start:\n{worker.output()}")
            await asyncio.sleep(0.05)


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
        started = [Worker(shared_store_url, tmp_path / f"worker-{n}.log") for n in range(WORKERS)]
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                await wait_serving(client, started)
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
            exits = [worker.stop() for worker in started]
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
