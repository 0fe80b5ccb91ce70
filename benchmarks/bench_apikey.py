"""Per-request cost of API-key checks, in process, against the bare app and the peers.

    .venv/bin/python -m benchmarks.bench_apikey [--requests 20000] [--rounds 7]

Each variant is driven straight through ASGI (no server, no sockets) with the same
request, and the rounds are interleaved so that noise from a shared machine hits
every variant alike. Figures are the median of the rounds' per-request times;
overheads are relative to the bare app of the same framework in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import APIKeyHeader
from passlib.hash import pbkdf2_sha256
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from apiguard import APIKeyMiddleware
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, format_key, open_store
from apiguard.keys.verifier import KeyVerifier
from apiguard.testing import make_record
from apiguard.types import ASGIApp, Message, Receive, Scope, Send

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
HAND_WRITTEN_KEYS = {"k" * 40: "alice"}


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


def fastapi_app(dependencies: list[Any] | None = None) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/", dependencies=dependencies or [])
    async def root() -> PlainTextResponse:
        return PlainTextResponse("hello")

    return app


class HandWrittenASGI:
    """The pure ASGI dict check a team would write by hand."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-api-key":
                    user = HAND_WRITTEN_KEYS.get(value.decode())
                    if user is not None:
                        scope["user"] = user
                        await self.app(scope, receive, send)
                        return
            await PlainTextResponse("no", status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class DictBaseHTTPMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if HAND_WRITTEN_KEYS.get(request.headers.get("x-api-key", "")) is None:
            return PlainTextResponse("no", status_code=401)
        return await call_next(request)


class DictBackend(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        user = HAND_WRITTEN_KEYS.get(conn.headers.get("x-api-key", ""))
        if user is None:
            return None
        return AuthCredentials(["read"]), SimpleUser(user)


api_key_header = APIKeyHeader(name="X-API-Key")


async def depends_check(key: str = Depends(api_key_header)) -> str:
    user = HAND_WRITTEN_KEYS.get(key)
    if user is None:
        raise HTTPException(401)
    return user


def scope_for(key: str, header: bytes = b"x-api-key", prefix: str = "") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"api.example"),
            (b"user-agent", b"bench/1.0"),
            (b"accept", b"*/*"),
            (header, f"{prefix}{key}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def run(
    app: ASGIApp, scope: Scope, requests: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds per request for `requests` sequential requests, on `clock`."""
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = clock()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    elapsed = clock() - start
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {set(statuses)}")
    return elapsed / requests


Variant = tuple[str, str, ASGIApp, Scope]


async def build_variants(tmpdir: str) -> tuple[list[Variant], list[Callable[[], Awaitable[None]]]]:
    hasher = KeyHasher(PEPPER)
    memory = MemoryKeyStore()
    sqlite = open_store(f"sqlite:///{tmpdir}/bench.db")
    memory_key = (await KeyManager(memory, hasher).create("bench")).key
    sqlite_key = (await KeyManager(sqlite, hasher).create("bench")).key
    hand = "k" * 40
    variants: list[Variant] = []
    for framework, make in (("starlette", starlette_app), ("fastapi", fastapi_app)):
        variants.append((framework, "bare app", make(), scope_for(hand)))
        variants.append(
            (
                framework,
                "hand-written pure ASGI dict check",
                HandWrittenASGI(make()),
                scope_for(hand),
            )
        )
        base = make()
        base.add_middleware(DictBaseHTTPMiddleware)
        variants.append((framework, "BaseHTTPMiddleware dict check", base, scope_for(hand)))
        auth = make()
        auth.add_middleware(AuthenticationMiddleware, backend=DictBackend())
        variants.append(
            (framework, "AuthenticationMiddleware + dict backend", auth, scope_for(hand))
        )
        if framework == "fastapi":
            variants.append(
                (
                    framework,
                    "Depends(APIKeyHeader) dict check",
                    fastapi_app([Depends(depends_check)]),
                    scope_for(hand),
                )
            )
        variants.append(
            (
                framework,
                "APIKeyMiddleware, memory store (warm)",
                APIKeyMiddleware(make(), store=memory, hasher=hasher),
                scope_for(memory_key),
            )
        )
        variants.append(
            (
                framework,
                "APIKeyMiddleware, SQLite store (warm)",
                APIKeyMiddleware(make(), store=sqlite, hasher=hasher),
                scope_for(sqlite_key),
            )
        )
    return variants, [sqlite.aclose]


async def slow_hash_report(requests: int) -> str:
    """A key stored with pbkdf2_sha256 (an imported key): cost of the first and later requests."""
    hasher = KeyHasher(PEPPER)
    store = MemoryKeyStore()
    secret = "s" * 43
    await store.add(make_record("SLOWSLOWSLOW", secret_hash=pbkdf2_sha256.hash(secret)))
    verifier = KeyVerifier(store, hasher)
    calls = 0
    real = KeyHasher.verify

    def counting(self: KeyHasher, secret: str, stored: str) -> tuple[bool, str | None]:
        nonlocal calls
        calls += 1
        return real(self, secret, stored)

    KeyHasher.verify = counting  # type: ignore[method-assign, assignment]
    try:
        key = format_key("apg", "SLOWSLOWSLOW", secret).encode()
        start = time.perf_counter()
        await verifier.verify(key)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(requests):
            await verifier.verify(key)
        later = (time.perf_counter() - start) / requests
    finally:
        KeyHasher.verify = real  # type: ignore[method-assign]
    return (
        f"slow-hash (pbkdf2_sha256) key: first request {first * 1e3:.1f} ms (hash in a worker "
        f"thread, then migrated to HMAC-SHA256); next {requests} requests {later * 1e6:.2f} µs "
        f"each; hash verifications in all: {calls}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        variants, closers = await build_variants(tmpdir)
        for _, _, app, scope in variants:  # warm up: caches, imports, code paths
            await run(app, scope, 2_000)
        times: dict[tuple[str, str], list[float]] = {(f, n): [] for f, n, _, _ in variants}
        for _ in range(args.rounds):
            for framework, name, app, scope in variants:
                times[(framework, name)].append(await run(app, scope, args.requests))
        for close in closers:
            await close()

    print(f"{args.rounds} rounds x {args.requests} requests, median µs per request\n")
    print("| framework | variant | µs/request | overhead vs bare (µs) | ratio vs bare |")
    print("|---|---|---:|---:|---:|")
    for framework in ("starlette", "fastapi"):
        bare = statistics.median(times[(framework, "bare app")])
        for (f, name), samples in times.items():
            if f != framework:
                continue
            median = statistics.median(samples)
            print(
                f"| {framework} | {name} | {median * 1e6:.2f} | "
                f"{(median - bare) * 1e6:+.2f} | {median / bare:.3f} |"
            )
    print()
    print(await slow_hash_report(args.requests))


if __name__ == "__main__":
    asyncio.run(main())
