"""The app tests/test_load.py serves with uvicorn, in a process of its own.

API keys from the SQLite store at `APIGUARD_LOAD_STORE`; JWTs checked against the
JWKS, and opaque tokens introspected, at the authorization server at
`APIGUARD_LOAD_ISSUER`. `/` answers with the caller's identity. Unguarded, for the
test: `/stats` (event-loop lag, cache sizes, store lookups), `/stats/reset`, and
`/admin/revoke/{key_id},...`, revokes made in this process (its cache forgets the key
before the answer is sent).

A ticker task measures the event loop's lag: every `TICK` seconds it sleeps for
`TICK` and records how much later than asked it woke up. It also samples the size
of every verification cache, so that `/stats` reports the largest each has been.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from apiguard import APIKeyAuth, AuthMiddleware, BearerAuth, CacheOptions
from apiguard.keys import KeyHasher, KeyManager, KeyRecord, open_store
from apiguard.tokens import (
    CompositeIntrospector,
    JWTIntrospector,
    RemoteIntrospector,
    TrustedIssuer,
)
from apiguard.types import ASGIApp

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

TICK = 0.005
MAX_SIZE = int(os.environ["APIGUARD_LOAD_MAX_SIZE"])
TOKEN_TTL = float(os.environ["APIGUARD_LOAD_TOKEN_TTL"])
ISSUER = os.environ["APIGUARD_LOAD_ISSUER"]
AUDIENCE = os.environ["APIGUARD_LOAD_AUDIENCE"]

store = open_store(os.environ["APIGUARD_LOAD_STORE"])
hasher = KeyHasher(os.environ["APIGUARD_LOAD_PEPPER"])
lookups = [0]
_get = store.get


async def counting_get(key_id: str) -> KeyRecord | None:
    lookups[0] += 1
    return await _get(key_id)


store.get = counting_get  # type: ignore[method-assign]

# Deadlines far above any wait on a loaded machine: a 503 here would be a slow
# moment, not an outage (outages are tests/test_faults.py's business).
keys = APIKeyAuth(
    store,
    hasher=hasher,
    cache=CacheOptions(max_size=MAX_SIZE, ttl=300, negative_ttl=300),
    deadline=60,
)
introspector = CompositeIntrospector(
    jwt=JWTIntrospector(TrustedIssuer(ISSUER, AUDIENCE, jwks_uri=f"{ISSUER}/jwks"), deadline=60),
    remote=RemoteIntrospector(
        f"{ISSUER}/introspect",
        client_id="api",
        client_secret="api-secret",
        audience=AUDIENCE,
        timeout=60,
        deadline=60,
    ),
)
bearer = BearerAuth(
    introspector, cache=CacheOptions(max_size=MAX_SIZE, ttl=TOKEN_TTL, negative_ttl=300)
)

lags: list[float] = []
largest: dict[str, int] = {}


def sizes() -> dict[str, int]:
    key_verdicts = keys.verifier._verdicts
    token_verdicts = bearer.verifier._verdicts
    return {
        "api_key_grants": len(key_verdicts.positive),
        "api_key_refusals": len(key_verdicts.negative),
        "token_grants": len(token_verdicts.positive),
        "token_refusals": len(token_verdicts.negative),
    }


async def tick() -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(TICK)
        lags.append(loop.time() - started - TICK)
        for name, size in sizes().items():
            largest[name] = max(largest.get(name, 0), size)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    ticker = asyncio.create_task(tick())
    yield
    ticker.cancel()
    await store.aclose()


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.user.identity)


def _ms(values: list[float], q: float) -> float:
    if len(values) < 2:
        return 0.0
    return 1000 * statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


async def stats(request: Request) -> JSONResponse:
    for name, size in sizes().items():
        largest[name] = max(largest.get(name, 0), size)
    report: dict[str, Any] = {
        "ticks": len(lags),
        "lag_p50_ms": _ms(lags, 0.5),
        "lag_p99_ms": _ms(lags, 0.99),
        "lag_max_ms": 1000 * max(lags, default=0.0),
        "largest": largest,
        "sizes": sizes(),
        "store_lookups": lookups[0],
    }
    return JSONResponse(report)


async def reset(request: Request) -> PlainTextResponse:
    lags.clear()
    largest.clear()
    return PlainTextResponse("reset")


async def revoke(request: Request) -> PlainTextResponse:
    manager = KeyManager(store, hasher)
    for key_id in request.path_params["key_ids"].split(","):
        await manager.revoke(key_id)
    return PlainTextResponse("revoked")


async def bare_hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("bare")


inner = Starlette(
    routes=[
        Route("/", bare_hello if os.environ.get("APIGUARD_LOAD_BARE") else hello),
        Route("/stats", stats),
        Route("/stats/reset", reset),
        Route("/admin/revoke/{key_ids}", revoke, methods=["POST"]),
    ],
    lifespan=lifespan,
)
# `APIGUARD_LOAD_BARE` set: the same app without apiguard, for benchmarks/bench_loop_lag.py.
app: ASGIApp = (
    inner
    if os.environ.get("APIGUARD_LOAD_BARE")
    else AuthMiddleware(
        inner,
        authenticators=[keys, bearer],
        exclude_paths=["/stats", "/stats/*", "/admin/*"],
    )
)
