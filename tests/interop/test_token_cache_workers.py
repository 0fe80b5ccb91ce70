"""Three uvicorn worker processes share one token cache in Redis, in front of the real
authorization server: a new opaque token is introspected once in all, however many
requests carry it to however many workers at the same moment. The calls are counted
by the authorization server itself."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.load_client import get, pipelined
from tests.processes import UvicornProcess, uvicorn_processes

from .conftest import API, AuthorizationServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

WORKERS = 3
REQUESTS = 999  # 333 to each worker
CONNECTIONS = 20  # to each worker: a bounded client; the requests queue for a connection
OPAQUE = f"{API}/opaque"


async def burst(started: list[UvicornProcess], token: str) -> Counter[int]:
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
    env = {"APIGUARD_TEST_ISSUER": authorization_server.issuer, "APIGUARD_TEST_REDIS": redis_url}
    app = "tests.token_cache_app:app"
    with uvicorn_processes(app, env, tmp_path, WORKERS) as started:
        async with httpx.AsyncClient() as client:
            for worker in started:
                await worker.wait_until(client, "/health")
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
