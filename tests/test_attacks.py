"""Hostile requests through the whole middleware: refused with the right status, never a 500."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from apiguard import (
    APIKeyAuth,
    APIKeyMiddleware,
    AuthMiddleware,
    BearerAuth,
    ScopeRule,
    ScopeRules,
)
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.tokens import JWTIntrospector
from apiguard.types import Message, Scope

from .server_support import raw_request, serve
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
    pytest.param(
        [(b"authorization", b"Bearer x"), (b"authorization", b"Bearer x")], 400, id="token-twice"
    ),
    pytest.param([(b"x-api-key", b"k"), (b"x-api-key", b"k")], 400, id="key-twice"),
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


# --- paths that dodge exclusions and scope rules, over a real server --------------


async def public(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"public handler ran with {request.path_params['rest']!r}")


async def private(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"private handler ran with {request.path_params['rest']!r}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, hasher: KeyHasher) -> Iterator[tuple[int, str]]:
    """StaticFiles at /static and a sub-app at /api, each with a public and a private part.

    Yields the port of a uvicorn server and a valid key without the `admin` scope.
    """
    tmp_path = tmp_path_factory.mktemp("site")
    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "a.txt").write_text("public file")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.txt").write_text("SECRET")
    api = Starlette(
        routes=[Route("/public/{rest:path}", public), Route("/private/{rest:path}", private)]
    )
    app = Starlette(routes=[Mount("/static", StaticFiles(directory=tmp_path)), Mount("/api", api)])
    store = MemoryKeyStore()
    key = anyio.run(lambda: KeyManager(store, hasher).create("reader", scopes=["read"])).key
    guarded = APIKeyMiddleware(
        app,
        store=store,
        hasher=hasher,
        exclude_paths=["/static/public/*", "/api/public/*"],
        policies=[
            ScopeRules(
                [ScopeRule("/static/private/*", "admin"), ScopeRule("/api/private/*", "admin")]
            )
        ],
    )
    with serve(guarded) as port:
        yield port, key


@pytest.mark.parametrize(
    ("target", "with_key", "status"),
    [
        pytest.param("/static/public/a.txt", False, 200, id="excluded"),
        pytest.param("/static/private/secret.txt", False, 401, id="not-excluded"),
        pytest.param("/static/private/secret.txt", True, 403, id="rule"),
        pytest.param("/api/public/x", False, 200, id="excluded-sub-app"),
        pytest.param("/api/private/x", True, 403, id="rule-sub-app"),
        pytest.param("/static/public/.well/a.txt", False, 404, id="dot-in-a-name-is-normal"),
    ],
)
def test_normal_paths_over_a_real_server(
    site: tuple[int, str], target: str, with_key: bool, status: int
) -> None:
    """The control group: exclusions and rules as configured."""
    port, key = site
    headers = [("X-API-Key", key)] if with_key else []
    assert raw_request(port, target, headers=headers).status == status


@pytest.mark.parametrize(
    ("target", "with_key"),
    [
        # An excluded prefix, then a climb out of it (RFC 3986 §5.2.4 would resolve it).
        pytest.param("/static/public/../private/secret.txt", False, id="dot-dot"),
        pytest.param("/static/public/%2E%2E/private/secret.txt", False, id="encoded-dot-dot"),
        pytest.param("/static/public/%2e%2e%2fprivate/secret.txt", False, id="encoded-slash"),
        pytest.param("/static/public/./../private/secret.txt", False, id="dot-then-dot-dot"),
        pytest.param("/static/public//../private/secret.txt", False, id="empty-then-dot-dot"),
        pytest.param("/api/public/../private/x", False, id="sub-app-dot-dot"),
        # The other way round: a path that a normalizing matcher would call excluded.
        pytest.param("/api/private/../public/x", False, id="private-then-public"),
        pytest.param("/static/private/%2E%2E/public/a.txt", False, id="encoded-back-to-public"),
        # Around a scope rule, with a valid key that lacks the scope.
        pytest.param("/static/x/%2E%2E/private/secret.txt", True, id="rule-dot-dot"),
        pytest.param("/static/./private/secret.txt", True, id="rule-dot"),
        pytest.param("/static//private/secret.txt", True, id="rule-empty-segment"),
        pytest.param("/api/x/../private/y", True, id="rule-sub-app"),
        pytest.param("/static/private/..", True, id="trailing-dot-dot"),
    ],
)
def test_paths_not_in_normal_form_are_refused_over_a_real_server(
    site: tuple[int, str], target: str, with_key: bool
) -> None:
    """Dot-segments (also percent-encoded) and empty segments: 400, never the handler.

    Routers and StaticFiles resolve these differently from prefix matching, so
    with exclusions or scope rules configured such a path is refused outright.
    """
    port, key = site
    headers = [("X-API-Key", key)] if with_key else []
    response = raw_request(port, target, headers=headers)
    assert response.status == 400, response.body
    assert json.loads(response.body)["error"] == "invalid_request"
    assert b"SECRET" not in response.body
    assert b"handler ran" not in response.body
