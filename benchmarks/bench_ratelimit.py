"""Per-request cost of the rate-limit policy, in memory and in Redis, in one run.

    .venv/bin/python -m benchmarks.bench_ratelimit [--requests 5000] [--rounds 5]

Variants, driven straight through ASGI with the same warm request (the key's
verification cached): the bare app; `APIKeyMiddleware` without policies; with
`RateLimits` (one limit) in memory (fields on and off), also with the
`fixed-window` strategy; the same in Redis (a
redis-server started for the run, on loopback; fields on and off); and, in memory
and in Redis, two limits and a monthly quota counted together
(`RateLimits(quotas=...)`: one round trip in Redis). The limits are never reached.
Rounds are interleaved; figures are medians of per-request times,
and overheads are against the middleware without policies in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from tests.servers import RedisServer

from apiguard import APIKeyMiddleware
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.ratelimit import LimitStorage, Quotas, RateLimits
from apiguard.types import ASGIApp
from benchmarks.bench_apikey import PEPPER, run, scope_for


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    store = MemoryKeyStore()
    issued = await KeyManager(store, KeyHasher(PEPPER)).create("bench")
    app = Starlette(routes=[Route("/", hello)])
    server = RedisServer()
    limit, two = "1000000000/minute", "1000000000/minute; 1000000000/day"
    memory, redis = LimitStorage(), LimitStorage(server.url())
    policies = {
        "memory": RateLimits(limit),
        "memory, no fields": RateLimits(limit, headers_on_success=False),
        "memory, fixed": RateLimits(limit, strategy="fixed-window"),
        "memory, fixed, no f.": RateLimits(
            limit, strategy="fixed-window", headers_on_success=False
        ),
        "memory, 2 + quota": RateLimits(
            two, storage=memory, quotas=Quotas("1000000000/month", storage=memory)
        ),
        "redis": RateLimits(limit, storage=server.url()),
        "redis, no fields": RateLimits(limit, storage=server.url(), headers_on_success=False),
        "redis, 2 + quota": RateLimits(
            two, storage=redis, quotas=Quotas("1000000000/month", storage=redis)
        ),
    }
    variants: dict[str, ASGIApp] = {
        "bare app": app,
        "no policy": APIKeyMiddleware(app, store=store, pepper=PEPPER),
    }
    for name, policy in policies.items():
        variants[name] = APIKeyMiddleware(app, store=store, pepper=PEPPER, policies=[policy])
    scope = scope_for(issued.key)
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for each in variants.values():  # warm: caches, connections, scripts loaded
            await run(each, scope, 50)
        for _ in range(args.rounds):
            for name, each in variants.items():
                times[name].append(await run(each, scope, args.requests) * 1e6)
    finally:
        for policy in policies.values():
            await policy.aclose()
        await redis.aclose()
        server.remove()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.rounds} rounds x {args.requests} requests, median µs per request\n")
    print(f"{'variant':<20}{'µs':>9}{'vs bare':>10}{'vs no policy':>15}")
    for name, value in medians.items():
        print(
            f"{name:<20}{value:>9.1f}{value / medians['bare app']:>9.2f}x"
            f"{value - medians['no policy']:>+14.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
