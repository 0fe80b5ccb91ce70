"""Hostile requests through the whole middleware: refused with the right status, never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apiguard import APIKeyAuth, AuthMiddleware, BearerAuth
from apiguard.keys import KeyHasher, MemoryKeyStore
from apiguard.tokens import JWTIntrospector
from apiguard.types import Message, Scope

from .token_support import AUDIENCE, ISSUER, RSA_KEY, FakeIssuer, claims, mint

pytestmark = pytest.mark.anyio


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
async def guarded(hasher: KeyHasher) -> AsyncIterator[AuthMiddleware]:
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        yield AuthMiddleware(
            Starlette(routes=[Route("/", ok)]),
            authenticators=[APIKeyAuth(MemoryKeyStore(), hasher=hasher), BearerAuth(introspector)],
        )


async def status_for(app: AuthMiddleware, headers: list[tuple[bytes, bytes]]) -> int:
    """Drive the middleware with raw header bytes, as a server would pass them."""
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "headers": headers,
        "query_string": b"",
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def id_token() -> str:
    """An OpenID Connect ID token: typ JWT, audience the client, nonce."""
    return mint(typ="JWT", aud="client-123", nonce="n-0S6_WzA2Mj")


ATTACKS: list[Any] = [
    pytest.param([(b"authorization", b"Bearer \xff\xfe\xfd")], 401, id="non-ascii-token"),
    pytest.param([(b"authorization", "Bearer tökén".encode())], 401, id="utf8-token"),
    pytest.param([(b"authorization", b"Bearer " + b"A" * 100_000)], 401, id="huge-token"),
    pytest.param([(b"authorization", b"Bearer a b c")], 401, id="spaces-in-token"),
    pytest.param([(b"authorization", b"\x00\x01")], 401, id="binary-header"),
    pytest.param([(b"authorization", b"Bearer")], 400, id="scheme-only"),
    pytest.param(
        [(b"authorization", b"Bearer x"), (b"authorization", b"Bearer y")], 400, id="two-tokens"
    ),
    pytest.param([(b"x-api-key", b"\xff" * 64)], 401, id="non-ascii-key"),
    pytest.param([(b"x-api-key", b"apg_" + b"A" * 100_000)], 401, id="huge-key"),
    pytest.param([(b"x-api-key", b"k"), (b"authorization", b"Bearer t")], 400, id="key-and-token"),
    pytest.param(
        [(b"authorization", f"Bearer {json.dumps({'payload': 'x', 'signatures': []})}".encode())],
        401,
        id="json-serialization",
    ),
    pytest.param([(b"authorization", f"Bearer {id_token()}".encode())], 401, id="id-token"),
    pytest.param(
        [
            (
                b"authorization",
                f"Bearer {mint(headers={'jku': 'http://169.254.169.254/'})}x".encode(),
            )
        ],
        401,
        id="jku-and-bad-signature",
    ),
    pytest.param(
        [(b"authorization", f"Bearer {b64(b'{}')}.{b64(json.dumps(claims()).encode())}.".encode())],
        401,
        id="no-alg-no-signature",
    ),
]


@pytest.mark.parametrize(("headers", "status"), ATTACKS)
async def test_hostile_headers(
    guarded: AuthMiddleware, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    assert await status_for(guarded, headers) == status


async def test_valid_credentials_still_pass(guarded: AuthMiddleware) -> None:
    """The table above is not refusing everything."""
    assert (
        await status_for(guarded, [(b"authorization", f"Bearer {mint(RSA_KEY)}".encode())]) == 200
    )
