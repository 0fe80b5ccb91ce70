"""The shared token cache: a warm local hit, a Redis-tier hit, an introspection call.

    .venv/bin/python -m benchmarks.bench_token_cache [--requests 20000] [--rounds 7]

Starts its own redis-server and the interop authorization server (oidc-provider,
`scripts/install-interop`), both on loopback. Requests go straight through ASGI (no
HTTP server), one at a time, so each figure is the cost of one request's verification
path. "Local cache off" is `CacheOptions(ttl=0)`: every request misses in the process
and goes to the next tier, which is what a worker sees for a token it has not seen yet.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from tests.interop.conftest import API, INTROSPECTION_CLIENT, AuthorizationServer
from tests.servers import RedisServer

from apiguard import BearerTokenMiddleware, CacheOptions
from apiguard.tokens import RedisTokenCache, RemoteIntrospector
from apiguard.types import ASGIApp
from benchmarks.bench_apikey import run
from benchmarks.bench_bearer import scope_for, starlette_app

OPAQUE = f"{API}/opaque"
NO_LOCAL_CACHE = CacheOptions(ttl=0, negative_ttl=0)


async def per_request(
    args: argparse.Namespace, remote: RemoteIntrospector, redis_url: str, token: str
) -> list[str]:
    async with RedisTokenCache.from_url(redis_url) as shared:
        variants: list[tuple[str, ASGIApp, int]] = [
            ("bare Starlette app", starlette_app(), args.requests),
            (
                "warm local hit, no token_cache",
                BearerTokenMiddleware(starlette_app(), introspector=remote),
                args.requests,
            ),
            (
                "warm local hit, with RedisTokenCache",
                BearerTokenMiddleware(starlette_app(), introspector=remote, token_cache=shared),
                args.requests,
            ),
            (
                "local cache off, RedisTokenCache hit",
                BearerTokenMiddleware(
                    starlette_app(), introspector=remote, cache=NO_LOCAL_CACHE, token_cache=shared
                ),
                args.requests // 10,
            ),
            (
                "local cache off, no token_cache: introspection call",
                BearerTokenMiddleware(starlette_app(), introspector=remote, cache=NO_LOCAL_CACHE),
                args.requests // 100,
            ),
        ]
        for _, app, n in variants:
            await run(app, scope_for(token), min(n, 200))  # warm up, fill the caches
        times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, app, n in variants:
                times[name].append(await run(app, scope_for(token), n))
    bare = statistics.median(times["bare Starlette app"])
    lines = [
        "| variant | µs/request | overhead vs bare (µs) | ratio vs bare |",
        "|---|---:|---:|---:|",
    ]
    for name, samples in times.items():
        median = statistics.median(samples)
        lines.append(
            f"| {name} | {median * 1e6:.1f} | {(median - bare) * 1e6:+.1f} | {median / bare:.2f} |"
        )
    return lines


async def tiers(
    args: argparse.Namespace, remote: RemoteIntrospector, redis_url: str, token: str
) -> list[str]:
    """The two tiers on their own: `RedisTokenCache.introspect` (a hit) and the call."""
    digest = hashlib.sha256(token.encode()).digest()
    n = args.requests // 20
    redis_hit: list[float] = []
    call: list[float] = []
    async with RedisTokenCache.from_url(redis_url) as shared:
        await shared.introspect(digest, token, remote.introspect)  # stored
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(n):
                await shared.introspect(digest, token, remote.introspect)
            redis_hit.append((time.perf_counter() - start) / n)
            start = time.perf_counter()
            for _ in range(n // 5):
                await remote.introspect(token)
            call.append((time.perf_counter() - start) / (n // 5))
    hit, direct = statistics.median(redis_hit), statistics.median(call)
    return [
        "| tier | µs/lookup |",
        "|---|---:|",
        f"| RedisTokenCache hit (GET, JSON, TokenInfo) | {hit * 1e6:.1f} |",
        f"| RemoteIntrospector call to oidc-provider | {direct * 1e6:.1f} |",
        "",
        f"introspection call / Redis-tier hit: {direct / hit:.1f}x",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    redis = RedisServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = AuthorizationServer(Path(tmp))
            server.start()
            try:
                token = server.token(OPAQUE)
                client_id, secret = INTROSPECTION_CLIENT
                async with httpx.AsyncClient() as http:
                    remote = RemoteIntrospector.from_issuer(
                        server.issuer,
                        client_id=client_id,
                        client_secret=secret,
                        audience=OPAQUE,
                        http_client=http,
                    )
                    print(
                        f"## Per request through ASGI ({args.rounds} rounds, medians; "
                        f"{args.requests}, {args.requests // 10}, {args.requests // 100} requests"
                        " per round for local hits, Redis hits, calls)\n"
                    )
                    print("\n".join(await per_request(args, remote, redis.url(), token)))
                    print("\n## The tiers on their own\n")
                    print("\n".join(await tiers(args, remote, redis.url(), token)))
            finally:
                server.stop()
    finally:
        redis.remove()


if __name__ == "__main__":
    asyncio.run(main())
