"""Per-request cost of per-route scopes on FastAPI, against the middleware alone and the peers.

    .venv/bin/python -m benchmarks.bench_fastapi_scopes [--requests 10000] [--rounds 15]

Every variant is the same FastAPI app (one `GET /` route), driven straight through
ASGI (no server, no sockets) with the same request. Each round runs every variant
once, in a shuffled order, so that noise from a shared machine hits every variant
alike; times are the process's CPU time. Per variant: the median CPU time per
request over the rounds, the median of its
per-round ratio to the bare app, and the median of its per-round difference to the
middleware alone (the cost of the scope check):

- bare app: no authentication;
- `Depends(APIKeyHeader)` dict check: the dependency a team writes by hand;
- middleware alone: `install(app, APIKeyAuth(store))`, a memory store (warm);
- the middleware + `require_scopes` checked by `ScopedRoute`: the route's, or the
  router's through `include_router(dependencies=...)` (compared with the same
  included route without scopes, since FastAPI's included routers cost something
  of their own; that route's own row is compared with the middleware alone);
- the middleware + the dependency forms: `require_scopes` on a plain `APIRoute`,
  and `Security(current_principal, scopes=[...])`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from starlette.responses import PlainTextResponse

from apiguard import APIKeyAuth, Principal
from apiguard.fastapi import ScopedRoute, current_principal, install, require_scopes
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.types import ASGIApp, Scope
from benchmarks import bench_apikey
from benchmarks.bench_apikey import scope_for

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
HAND_WRITTEN_KEYS = {"k" * 40: "alice"}
SCOPE = "items:read"

api_key_header = APIKeyHeader(name="X-API-Key")


async def depends_check(key: str = Depends(api_key_header)) -> str:
    user = HAND_WRITTEN_KEYS.get(key)
    if user is None:
        raise HTTPException(401)
    return user


async def root() -> PlainTextResponse:
    return PlainTextResponse("hello")


async def root_with_caller(
    caller: Annotated[Principal, Security(current_principal, scopes=[SCOPE])],
) -> PlainTextResponse:
    return PlainTextResponse("hello")


def app_with(
    dependencies: Sequence[Any] = (),
    route_class: type[APIRoute] = APIRoute,
    endpoint: Any = root,
) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.router.add_api_route(
        "/", endpoint, dependencies=list(dependencies), route_class_override=route_class
    )
    return app


def included_app(dependencies: Sequence[Any] = ()) -> FastAPI:
    """The route in a router, its scopes (if any) from `include_router(dependencies=...)`."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    router = APIRouter(route_class=ScopedRoute)
    router.add_api_route("/", root)
    app.include_router(router, dependencies=list(dependencies))
    return app


async def run(app: ASGIApp, scope: Scope, requests: int) -> float:
    """CPU seconds per request for `requests` sequential requests.

    The process's CPU time, not the wall clock: on a shared machine the wall clock
    also counts the time other processes hold the core.
    """
    return await bench_apikey.run(app, scope, requests, clock=time.process_time)


BARE = "bare app"
MIDDLEWARE = "middleware alone"
INCLUDED = "middleware alone, the route in an included router"


async def build_variants() -> list[tuple[str, ASGIApp, Scope]]:
    hasher = KeyHasher(PEPPER)
    store = MemoryKeyStore()
    key = (await KeyManager(store, hasher).create("bench", scopes=[SCOPE])).key
    hand = scope_for("k" * 40)
    ours = scope_for(key)

    def guarded(app: FastAPI) -> FastAPI:
        install(app, APIKeyAuth(store, hasher=hasher))
        return app

    return [
        (BARE, app_with(), hand),
        ("`Depends(APIKeyHeader)` dict check (peer)", app_with([Depends(depends_check)]), hand),
        (MIDDLEWARE, guarded(app_with()), ours),
        (
            "middleware + `require_scopes`, `ScopedRoute`",
            guarded(app_with([require_scopes(SCOPE)], ScopedRoute)),
            ours,
        ),
        (INCLUDED, guarded(included_app()), ours),
        (
            "middleware + `include_router(dependencies=[require_scopes])`, `ScopedRoute`",
            guarded(included_app([require_scopes(SCOPE)])),
            ours,
        ),
        (
            "middleware + `require_scopes`, dependency (`APIRoute`)",
            guarded(app_with([require_scopes(SCOPE)])),
            ours,
        ),
        (
            "middleware + `Security(current_principal, scopes=[...])`",
            guarded(app_with(endpoint=root_with_caller)),
            ours,
        ),
    ]


def baseline_of(name: str) -> str:
    # A route in an included router is compared with the same route without scopes.
    return INCLUDED if "include_router" in name else MIDDLEWARE


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    variants = await build_variants()
    for _, app, scope in variants:  # warm up: caches, imports, code paths
        await run(app, scope, 2_000)
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    order = random.Random(14)  # noqa: S311 - the order of the variants, not a secret
    for _ in range(args.rounds):
        for name, app, scope in order.sample(variants, len(variants)):
            times[name].append(await run(app, scope, args.requests))

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{args.rounds} rounds x {args.requests} requests; load average {load}\n")
    print(
        "| variant | CPU µs/request | ratio vs bare | vs middleware alone (µs) |\n|---|---:|---:|---:|"
    )
    for name, samples in times.items():
        # Ratios and differences within each round, then their median: a slower
        # stretch of a shared machine weighs on both sides of each comparison.
        ratio = statistics.median(t / b for t, b in zip(samples, times[BARE], strict=True))
        extra = statistics.median(
            t - b for t, b in zip(samples, times[baseline_of(name)], strict=True)
        )
        shown = "—" if name in (MIDDLEWARE, BARE) else f"{extra * 1e6:+.2f}"
        print(f"| {name} | {statistics.median(samples) * 1e6:.2f} | {ratio:.3f} | {shown} |")


if __name__ == "__main__":
    asyncio.run(main())
