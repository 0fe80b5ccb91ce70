"""One Redis limit held across three uvicorn worker processes.

limits' sliding window counter on Redis counts in one Lua script per request, atomic
on the server, so within one window it lets through exactly the limit: the bound
asserted here is exact, not a tolerance, and nothing depends on timing (the window,
an hour, cannot roll over during the test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest

from apiguard.keys import KeyHasher, KeyManager, open_store
from tests.servers import free_port

from .conftest import PEPPER

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).parent.parent
WORKERS = 3
LIMIT = 20
STARTUP_TIMEOUT = 60.0


@contextmanager
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[str]]:
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    urls = []
    try:
        for n in range(WORKERS):
            port = free_port()
            log = tmp_path / f"worker-{n}.log"
            with log.open("wb") as out:
                processes.append((
                    subprocess.Popen(  # noqa: S603
                        [sys.executable, "-m", "uvicorn", "tests.ratelimit_app:app",
                         "--host", "127.0.0.1", "--port", str(port),
                         "--log-level", "warning", "--no-access-log"],
                        cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                    ),
                    log,
                ))  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for process, _ in processes:
            process.terminate()
            process.wait(10)
    for _, log in processes:
        assert "Traceback" not in log.read_text(), log.read_text()


async def wait_ready(client: httpx.AsyncClient, urls: list[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for url in urls:
        while True:
            try:
                if (await client.get(f"{url}/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} did not start"
            await anyio.sleep(0.05)


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
    with workers(env, tmp_path) as urls:
        async with httpx.AsyncClient(timeout=30) as client:
            await wait_ready(client, urls)
            statuses: Counter[int] = Counter()

            async def burst(url: str) -> None:
                for _ in range(LIMIT):
                    answer = await client.get(url, headers={"X-API-Key": issued.key})
                    statuses[answer.status_code] += 1

            async with anyio.create_task_group() as group:
                for url in urls:  # all three workers at once
                    group.start_soon(burst, url)
    assert statuses == {200: LIMIT, 429: LIMIT * (WORKERS - 1)}
