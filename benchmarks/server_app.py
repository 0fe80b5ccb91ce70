"""The app bench_server serves: hello world, bare or behind one middleware.

`BENCH_VARIANT` picks it:

- `bare`: the Starlette app alone;
- `control`: behind an empty pure ASGI middleware (what any middleware costs);
- `peer`: behind the check a team would write by hand, a pure ASGI middleware that
  looks up the SHA-256 digest of the `X-API-Key` header in a dict;
- `apikey`: behind `APIKeyMiddleware` over the SQLite store at `BENCH_STORE`
  (pepper from `APIGUARD_PEPPER`);
- `bearer`: behind `BearerTokenMiddleware` with a `JWTIntrospector` trusting a
  `FakeIssuer` that signs with the RSA key in the PEM file `BENCH_JWT_KEY`.

`BENCH_KEY` is the API key the peer accepts. Every middleware is added the same
way, inside Starlette's own stack.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware, BearerTokenMiddleware
from apiguard.testing import FakeIssuer
from apiguard.types import ASGIApp, Receive, Scope, Send

__all__ = ["app", "build", "issuer"]


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


class Empty:
    """A pure ASGI middleware that does nothing: the cost of being a middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class HandWrittenSHA256:
    """The peer: SHA-256 of the `X-API-Key` header, looked up in a dict of digests."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.users = {hashlib.sha256(key.encode()).digest(): "bench"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            user = None
            for name, value in scope["headers"]:
                if name == b"x-api-key":
                    user = self.users.get(hashlib.sha256(value).digest())
                    break
            if user is None:
                await PlainTextResponse("no", status_code=401)(scope, receive, send)
                return
            scope["user"] = user
        await self.app(scope, receive, send)


def issuer(pem: bytes) -> FakeIssuer:
    """The issuer whose tokens the bearer variant accepts, signing with this RSA key."""
    return FakeIssuer(signing_keys={"rsa-1": load_pem_private_key(pem, password=None)})


def _middleware(variant: str) -> list[Middleware]:
    if variant == "bare":
        return []
    if variant == "control":
        return [Middleware(Empty)]
    if variant == "peer":
        return [Middleware(HandWrittenSHA256, key=os.environ["BENCH_KEY"])]
    if variant == "apikey":
        return [Middleware(APIKeyMiddleware, store=os.environ["BENCH_STORE"])]
    if variant == "bearer":
        idp = issuer(Path(os.environ["BENCH_JWT_KEY"]).read_bytes())
        return [Middleware(BearerTokenMiddleware, introspector=idp.jwt_introspector())]
    raise ValueError(f"unknown BENCH_VARIANT {variant!r}")


def build(variant: str) -> Starlette:
    """The app of `variant`, configured from the environment as above."""
    return Starlette(routes=[Route("/", hello)], middleware=_middleware(variant))


app = build(os.environ.get("BENCH_VARIANT", "bare"))
