"""One Redis limit held across three uvicorn worker processes.

limits' sliding window counter on Redis counts in one Lua script per request, atomic
on the server, so within one window it lets through exactly the limit: the bound
asserted here is exact, not a tolerance, and nothing depends on timing (the window,
an hour, cannot roll over during the test).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import httpx
import pytest

from apiguard.keys import KeyHasher, KeyManager, open_store
from tests.processes import uvicorn_processes

from .conftest import PEPPER

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

WORKERS = 3
LIMIT = 20


async def test_one_limit_holds_across_three_workers(
    redis_url: str, hasher: KeyHasher, tmp_path: Path
) -> None:
    """60 requests spread over three workers, limit 20/hour: exactly 20 are served."""
    store_url = f"sqlite:///{tmp_path}/keys.db"
    store = open_store(store_url)
    try:
        issued = await KeyManager(store, hasher).create("shared")
    finally:
        await store.aclose()
    env = {
        "APIGUARD_TEST_STORE": store_url,
        "APIGUARD_TEST_LIMITS": redis_url,
        "APIGUARD_TEST_LIMIT": f"{LIMIT}/hour",
        "APIGUARD_PEPPER": PEPPER,
    }
    with uvicorn_processes("tests.ratelimit_app:app", env, tmp_path, WORKERS) as started:
        urls = [worker.url for worker in started]
        async with httpx.AsyncClient(timeout=30) as client:
            for worker in started:
                await worker.wait_until(client, "/ready")
            statuses: Counter[int] = Counter()

            async def burst(url: str) -> None:
                for _ in range(LIMIT):
                    answer = await client.get(url, headers={"X-API-Key": issued.key})
                    statuses[answer.status_code] += 1

            async with anyio.create_task_group() as group:
                for url in urls:  # all three workers at once
                    group.start_soon(burst, url)
    assert statuses == {200: LIMIT, 429: LIMIT * (WORKERS - 1)}
