"""Three uvicorn worker processes share one token cache in Redis, in front of the real
authorization server: a new opaque token is introspected once in all, however many
requests carry it to however many workers at the same moment. The calls are counted
by the authorization server itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.load_client import get, pipelined
from tests.servers import free_port

from .conftest import API, AuthorizationServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).parent.parent.parent
WORKERS = 3
REQUESTS = 999  # 333 to each worker
CONNECTIONS = 20  # to each worker: a bounded client; the requests queue for a connection
STARTUP_TIMEOUT = 60.0
OPAQUE = f"{API}/opaque"


class Worker:
    """One uvicorn process serving tests/token_cache_app.py on a port of its own."""

    def __init__(self, issuer: str, redis_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "APIGUARD_TEST_ISSUER": issuer, "APIGUARD_TEST_REDIS": redis_url}
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "uvicorn", "tests.token_cache_app:app",
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning", "--no-access-log"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung worker
                self.process.kill()
                self.process.wait(10)


@contextmanager
def workers(issuer: str, redis_url: str, tmp_path: Path) -> Iterator[list[Worker]]:
    started = [Worker(issuer, redis_url, tmp_path / f"worker-{n}.log") for n in range(WORKERS)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()
    for worker in started:  # a traceback in a worker fails the test
        assert "Traceback" not in worker.output(), worker.output()


async def wait_up(client: httpx.AsyncClient, started: list[Worker]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for worker in started:
        while True:
            try:
                if (await client.get(f"{worker.url}/health")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"worker on {worker.port} did not start:\n{worker.output()}")
            await asyncio.sleep(0.05)


async def burst(started: list[Worker], token: str) -> Counter[int]:
    """`REQUESTS` requests with `token`, all at once, spread evenly over the workers.

    `CONNECTIONS` kept-alive connections to each worker share the requests
    (`tests.load_client`), so that the burst costs the workers' time, not the client's.
    """
    request = get("/", [("Authorization", f"Bearer {token}")])
    answers = await asyncio.gather(
        *(
            pipelined(worker.port, [request] * (REQUESTS // WORKERS), connections=CONNECTIONS)
            for worker in started
        )
    )
    return Counter(answer.status for each in answers for answer in each)


async def test_three_workers_introspect_a_new_opaque_token_once(
    authorization_server: AuthorizationServer, redis_url: str, tmp_path: Path
) -> None:
    with workers(authorization_server.issuer, redis_url, tmp_path) as started:
        async with httpx.AsyncClient() as client:
            await wait_up(client, started)
            token = authorization_server.token(OPAQUE)
            before = authorization_server.introspections()
            assert await burst(started, token) == {200: REQUESTS}
            # Without the shared cache each worker would ask once: 3 calls.
            assert authorization_server.introspections() == before + 1

            # A revoked token: refused everywhere, also for one introspection in all.
            revoked = authorization_server.token(OPAQUE)
            authorization_server.revoke(revoked)
            before = authorization_server.introspections()
            assert await burst(started, revoked) == {401: REQUESTS}
            assert authorization_server.introspections() == before + 1
