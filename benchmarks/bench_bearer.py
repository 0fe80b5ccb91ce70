"""Bearer tokens: per-request cost, first sight, introspection, single-flight, memory.

    .venv/bin/python -m benchmarks.bench_bearer [--requests 20000] [--rounds 7]
        [--tokens 2000] [--only first-sight]

Needs the interop authorization server installed (`scripts/install` runs `npm ci`):
the introspection figures are measured against oidc-provider on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from tests.interop.conftest import API, INTROSPECTION_CLIENT, AuthorizationServer
from tests.token_support import AUDIENCE, EC_KEY, ISSUER, RSA_KEY, FakeIssuer, mint

from apiguard import BearerTokenMiddleware
from apiguard.tokens import JWTIntrospector, RemoteIntrospector, TokenInfo, TokenVerifier
from apiguard.tokens.jwks import DEFAULT_REQUIRED_CLAIMS
from apiguard.types import ASGIApp, Message, Receive, Scope, Send
from benchmarks.bench_apikey import run
from benchmarks.bench_apikey import scope_for as request_scope

LEEWAY = 30.0  # JWTIntrospector's default


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/", hello)])


def scope_for(token: str) -> Scope:
    return request_scope(token, b"authorization", "Bearer ")


def pyjwt_decode(token: str | bytes, key: Any, alg: str) -> dict[str, Any]:
    """A bare PyJWT decode making the checks `JWTIntrospector` asks of PyJWT."""
    return jwt.decode(
        token,
        key,
        algorithms=[alg],
        audience=(AUDIENCE,),
        issuer=ISSUER,
        leeway=LEEWAY,
        options={"require": list(DEFAULT_REQUIRED_CLAIMS)},
    )


class PyJWTPerRequest:
    """The peer: PyJWT decode of every request, key loaded once."""

    def __init__(self, app: ASGIApp, key: Any, alg: str) -> None:
        self.app, self.key, self.alg = app, key, alg

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scope["user"] = pyjwt_decode(value[7:], self.key, self.alg)["sub"]
        await self.app(scope, receive, send)


class IntrospectPerRequest:
    """The peer: one httpx introspection call per request."""

    def __init__(self, app: ASGIApp, client: httpx.AsyncClient, endpoint: str) -> None:
        self.app, self.client, self.endpoint = app, client, endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = dict(scope["headers"])[b"authorization"][7:].decode()
        # RFC 6749 §2.3.1: client id and secret are form-encoded inside Basic auth.
        client_id, secret = (quote_plus(part, safe="") for part in INTROSPECTION_CLIENT)
        response = await self.client.post(
            self.endpoint, data={"token": token}, auth=(client_id, secret)
        )
        if not response.json()["active"]:
            raise RuntimeError("inactive")
        await self.app(scope, receive, send)


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def per_request(args: argparse.Namespace) -> list[str]:
    idp = FakeIssuer()
    lines = [
        "| variant | µs/request | overhead vs bare (µs) | ratio vs bare |",
        "|---|---:|---:|---:|",
    ]
    async with idp.client() as http:
        variants: list[tuple[str, ASGIApp, Scope]] = [
            ("bare Starlette app", starlette_app(), scope_for("x"))
        ]
        for key, alg, kid in ((RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")):
            token = mint(key, alg, kid)
            variants.append(
                (
                    f"PyJWT decode per request ({alg})",
                    PyJWTPerRequest(starlette_app(), key.public_key(), alg),
                    scope_for(token),
                )
            )
            introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
            variants.append(
                (
                    f"BearerTokenMiddleware, repeated {alg} token",
                    BearerTokenMiddleware(starlette_app(), introspector=introspector),
                    scope_for(token),
                )
            )
        for _, app, scope in variants:
            await run(app, scope, 2_000)
        times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, app, scope in variants:
                times[name].append(await run(app, scope, args.requests))
    bare = statistics.median(times["bare Starlette app"])
    for name, samples in times.items():
        median = statistics.median(samples)
        lines.append(
            f"| {name} | {median * 1e6:.2f} | {(median - bare) * 1e6:+.2f} | {median / bare:.3f} |"
        )
    return lines


async def run_each(app: ASGIApp, scopes: list[Scope], *, apart: bool = False) -> float:
    """Seconds per request, one request per scope (each with its own token).

    `apart`: each request in its own pass of the event loop, as requests arriving
    one at a time are (the loop is let go between two requests).
    """
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    elapsed = 0.0
    for scope in scopes:
        if apart:
            await asyncio.sleep(0)
        start = time.perf_counter()
        await app(dict(scope), receive, send)
        elapsed += time.perf_counter() - start
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {set(statuses)}")
    return elapsed / len(scopes)


CHUNK = 100  # tokens per turn of each variant: the variants alternate finely


async def first_sight(args: argparse.Namespace) -> list[str]:
    """Tokens never seen before (keys fetched), side by side: a bare PyJWT decode with
    the checks `JWTIntrospector` asks of PyJWT, the introspector alone, and whole
    requests: the bare app, the app behind a PyJWT decode per request, and the app
    behind `BearerTokenMiddleware` on a cache miss (middleware, cache miss,
    single-flight, introspection, TokenInfo, Principal). The variants alternate every
    `CHUNK` tokens, and each chunk is one sample (medians over all chunks of all
    rounds); each request comes in its own pass of the event loop."""
    idp = FakeIssuer()
    lines = [
        "| algorithm | PyJWT decode µs | JWTIntrospector µs | ratio | bare app µs "
        "| app + PyJWT decode µs | app + apiguard, cache miss µs "
        "| miss path: apiguard's µs over the bare app / PyJWT decode "
        "| request vs app + PyJWT decode |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    async with idp.client() as http:
        for key, alg, kid in ((RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")):
            introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
            tokens = [mint(key, alg, kid, jti=f"j{i}") for i in range(args.tokens)]
            scopes = [scope_for(token) for token in tokens]
            await introspector.introspect(tokens[0])  # keys fetched
            public = key.public_key()
            peer = PyJWTPerRequest(starlette_app(), public, alg)
            bare_app = starlette_app()
            names = ("decode", "introspect", "bare", "peer", "apiguard")
            times: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(args.rounds):
                # A new middleware each round: every request of the round is a cache miss.
                guarded = BearerTokenMiddleware(starlette_app(), introspector=introspector)
                for at in range(0, len(tokens), CHUNK):
                    chunk, chunk_scopes = tokens[at : at + CHUNK], scopes[at : at + CHUNK]
                    spent = dict.fromkeys(names, 0.0)
                    for token in chunk:
                        await asyncio.sleep(0)
                        start = time.perf_counter()
                        pyjwt_decode(token, public, alg)
                        spent["decode"] += time.perf_counter() - start
                    for token in chunk:
                        await asyncio.sleep(0)
                        start = time.perf_counter()
                        await introspector.introspect(token)
                        spent["introspect"] += time.perf_counter() - start
                    for name, app in (("bare", bare_app), ("peer", peer), ("apiguard", guarded)):
                        spent[name] += len(chunk) * await run_each(app, chunk_scopes, apart=True)
                    for name in names:  # one sample per chunk: medians over them all
                        times[name].append(spent[name] / len(chunk))
            med = {name: statistics.median(samples) for name, samples in times.items()}
            lines.append(
                f"| {alg} | {med['decode'] * 1e6:.1f} | {med['introspect'] * 1e6:.1f} "
                f"| {med['introspect'] / med['decode']:.3f} | {med['bare'] * 1e6:.1f} "
                f"| {med['peer'] * 1e6:.1f} | {med['apiguard'] * 1e6:.1f} "
                f"| {(med['apiguard'] - med['bare']) / med['decode']:.3f} "
                f"| {med['apiguard'] / med['peer']:.3f} |"
            )
    return lines


async def introspection(args: argparse.Namespace, server: AuthorizationServer) -> list[str]:
    token = server.token(f"{API}/opaque")
    client_id, secret = INTROSPECTION_CLIENT
    lines = ["| variant | µs/request | ratio vs bare |", "|---|---:|---:|"]
    async with httpx.AsyncClient() as http:
        remote = RemoteIntrospector.from_issuer(
            server.issuer,
            client_id=client_id,
            client_secret=secret,
            audience=f"{API}/opaque",
            http_client=http,
        )
        cached = BearerTokenMiddleware(starlette_app(), introspector=remote)
        peer = IntrospectPerRequest(starlette_app(), http, f"{server.issuer}/token/introspection")
        variants: list[tuple[str, ASGIApp, int]] = [
            ("bare Starlette app", starlette_app(), 5_000),
            ("httpx introspection per request", peer, 300),
            ("BearerTokenMiddleware + RemoteIntrospector (cached)", cached, 5_000),
        ]
        for _, app, n in variants:
            await run(app, scope_for(token), min(n, 200))
        results = {}
        for name, app, n in variants:
            results[name] = statistics.median(
                [await run(app, scope_for(token), n) for _ in range(args.rounds)]
            )
        bare = results["bare Starlette app"]
        for name, value in results.items():
            lines.append(f"| {name} | {value * 1e6:.1f} | {value / bare:.1f} |")

        # Single-flight: 1,000 concurrent requests with one new opaque token.
        fresh = server.token(f"{API}/opaque")
        remote.calls = 0
        guarded = BearerTokenMiddleware(starlette_app(), introspector=remote)
        statuses: list[int] = []

        async def one() -> None:
            sent: list[Message] = []

            async def receive() -> Message:
                return {"type": "http.request", "body": b""}

            async def send(message: Message) -> None:
                sent.append(message)

            await guarded(scope_for(fresh), receive, send)
            statuses.append(sent[0]["status"])

        await asyncio.gather(*(one() for _ in range(1_000)))
        lines.append("")
        lines.append(
            f"1,000 concurrent requests with one new opaque token: {statuses.count(200)} answered 200, "
            f"introspection calls made: {remote.calls}"
        )
    return lines


async def memory_per_token() -> str:
    """Bytes held by the cache per token, from tracemalloc, for 10,000 distinct JWTs."""

    class Fixed:
        def __init__(self) -> None:
            self.info = TokenInfo.from_claims(
                {
                    "iss": ISSUER,
                    "sub": "client-123",
                    "aud": AUDIENCE,
                    "client_id": "client-123",
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 300,
                    "jti": "x",
                    "scope": "items:read items:write",
                },
                token_type="at+jwt",  # noqa: S106 - a type name
            )

        async def introspect(self, token: str) -> TokenInfo:
            claims = dict(self.info.claims) | {
                "jti": token[-12:]
            }  # distinct claims per token, as real tokens have
            return TokenInfo.from_claims(claims, token_type="at+jwt")  # noqa: S106

        async def aclose(self) -> None:
            pass

    verifier = TokenVerifier(Fixed())
    tokens = [mint(jti=f"jti-{i:08d}").encode() for i in range(10_000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for token in tokens:
        await verifier.verify(token)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return f"memory per cached token (10,000 distinct RS256 tokens, tracemalloc): {grown / len(tokens):.0f} bytes"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=2_000, help="new tokens a round")
    parser.add_argument(
        "--only", choices=["first-sight"], help="run only the first-sight comparison"
    )
    args = parser.parse_args()
    if args.only == "first-sight":
        print(
            f"## First sight of a JWT ({args.rounds} rounds x {args.tokens} tokens, "
            f"medians of {CHUNK}-token chunks)\n"
        )
        print("\n".join(await first_sight(args)))
        return

    print(
        f"## In-process per-request cost ({args.rounds} rounds x {args.requests} requests, medians)\n"
    )
    print("\n".join(await per_request(args)))
    print("\n## First sight of a JWT (keys already fetched)\n")
    print("\n".join(await first_sight(args)))
    with tempfile.TemporaryDirectory() as tmp:
        server = AuthorizationServer(Path(tmp))
        server.start()
        try:
            print("\n## Opaque tokens, introspected at oidc-provider on loopback\n")
            print("\n".join(await introspection(args, server)))
        finally:
            server.stop()
    print()
    print(await memory_per_token())


if __name__ == "__main__":
    asyncio.run(main())
