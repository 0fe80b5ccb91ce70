"""DPoP: per-request cost of checking a proof, against the bare app and a bearer token.

    .venv/bin/python -m benchmarks.bench_dpop [--requests 2000] [--rounds 7]

Every DPoP request carries a new proof (each is accepted once), minted before the
clock starts. The token itself is cached after the first request, as for Bearer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from tests.dpop_support import CLIENT_KEY, ED_CLIENT_KEY, proof, thumbprint
from tests.token_support import TableIntrospector

from apiguard import AuthMiddleware, BearerAuth, DPoPAuth
from apiguard.tokens import TokenInfo
from apiguard.types import ASGIApp, Message, Scope
from benchmarks.bench_apikey import scope_for


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


async def run(app: ASGIApp, scopes: list[Scope]) -> float:
    """Seconds per request, one request per scope, in order."""
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    start = time.perf_counter()
    for scope in scopes:
        await app(scope, receive, send)
    elapsed = time.perf_counter() - start
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {set(statuses)}")
    return elapsed / len(scopes)


def dpop_scopes(token: str, key: Any, alg: str, count: int) -> list[Scope]:
    scopes = []
    for _ in range(count):
        scope = scope_for(token, b"authorization", "DPoP ")
        value = proof(token, htu="http://api.example/", key=key, alg=alg)
        scope["headers"] = [*scope["headers"], (b"dpop", value.encode())]
        scopes.append(scope)
    return scopes


async def main(args: argparse.Namespace) -> None:
    table = TableIntrospector()
    table.answers["plain"] = TokenInfo(active=True, subject="svc", scopes=frozenset({"a"}))
    table.answers["es"] = TokenInfo(active=True, subject="svc", cnf={"jkt": thumbprint(CLIENT_KEY)})
    table.answers["ed"] = TokenInfo(
        active=True, subject="svc", cnf={"jkt": thumbprint(ED_CLIENT_KEY)}
    )
    bearer = BearerAuth(table)
    dpop = DPoPAuth(bearer.verifier)
    guarded = AuthMiddleware(starlette_app(), authenticators=[bearer, dpop])
    n = args.requests
    variants: list[tuple[str, ASGIApp, Any]] = [
        ("bare Starlette app", starlette_app(), lambda: [scope_for("x")] * n),
        (
            "Bearer, cached token",
            guarded,
            lambda: [scope_for("plain", b"authorization", "Bearer ")] * n,
        ),
        (
            "DPoP ES256, cached token, new proof",
            guarded,
            lambda: dpop_scopes("es", CLIENT_KEY, "ES256", n),
        ),
        (
            "DPoP EdDSA, cached token, new proof",
            guarded,
            lambda: dpop_scopes("ed", ED_CLIENT_KEY, "EdDSA", n),
        ),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(args.rounds):
        for name, app, make in variants:
            scopes: list[Scope] = [dict(scope) for scope in make()]
            times[name].append(await run(app, scopes))
    # The floor: one ECDSA P-256 verification, what any DPoP check must pay.
    signature = CLIENT_KEY.sign(b"x" * 300, ec.ECDSA(hashes.SHA256()))
    public = CLIENT_KEY.public_key()
    floor = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(n):
            public.verify(signature, b"x" * 300, ec.ECDSA(hashes.SHA256()))
        floor.append((time.perf_counter() - start) / n)
    print(f"ES256 signature verification alone: {statistics.median(floor) * 1e6:.1f} µs")
    bare = statistics.median(times["bare Starlette app"])
    print("| variant | µs/request | overhead vs bare (µs) | ratio vs bare |")
    print("|---|---:|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"| {name} | {median * 1e6:.1f} | {(median - bare) * 1e6:+.1f} | {median / bare:.2f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    asyncio.run(main(parser.parse_args()))
