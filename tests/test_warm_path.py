"""Requests whose credential's verdict is cached: the same answers as the first request.

A cached verdict lets the middleware answer without awaiting the pipeline; these
tests send each credential again once it is cached and check that nothing a user
relies on changes: the principal and scopes handed to the app, `@requires`,
websockets, usage counts, hidden credentials, and every refusal.
"""

from __future__ import annotations

from datetime import datetime, timezone

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from apiguard import APIKeyMiddleware, BearerTokenMiddleware
from apiguard.keys import IssuedKey, KeyHasher, KeyManager, MemoryKeyStore
from apiguard.tokens import TokenInfo

from .conftest import MakeClient
from .test_bearer_middleware import active
from .test_middleware import write_items, ws_endpoint
from .token_support import TableIntrospector

pytestmark = pytest.mark.anyio


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "kind": user.kind,
            "identity": user.identity,
            "name": user.display_name,
            "scopes": request.auth.scopes,
            "headers": sorted(request.headers.keys()),
        }
    )


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", whoami),
            Route("/items", write_items, methods=["POST"]),
            WebSocketRoute("/ws", ws_endpoint),
        ]
    )


@pytest.fixture
def store() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
async def issued(store: MemoryKeyStore, hasher: KeyHasher) -> IssuedKey:
    return await KeyManager(store, hasher).create("billing", scopes=["items:read", "a:b"])


async def test_cached_key_hands_the_app_the_same_principal(
    store: MemoryKeyStore, hasher: KeyHasher, issued: IssuedKey, make_client: MakeClient
) -> None:
    guarded = APIKeyMiddleware(make_app(), store=store, hasher=hasher)
    async with make_client(guarded) as client:
        answers = [(await client.get("/", headers={"X-API-Key": issued.key})) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == {
        "kind": "api_key",
        "identity": issued.record.key_id,
        "name": "billing",
        "scopes": ["a:b", "items:read"],
        "headers": ["accept", "accept-encoding", "connection", "host", "user-agent", "x-api-key"],
    }
    assert answers[1].json() == answers[0].json() == answers[2].json()


async def test_requires_refuses_a_cached_key_without_the_scope(
    store: MemoryKeyStore, hasher: KeyHasher, issued: IssuedKey, make_client: MakeClient
) -> None:
    guarded = APIKeyMiddleware(make_app(), store=store, hasher=hasher)
    async with make_client(guarded) as client:
        statuses = [
            (await client.post("/items", headers={"X-API-Key": issued.key})).status_code
            for _ in range(2)
        ]
    assert statuses == [403, 403]


async def test_cached_key_sent_twice_is_an_invalid_request(
    store: MemoryKeyStore, hasher: KeyHasher, issued: IssuedKey, make_client: MakeClient
) -> None:
    """A credential is sent once, even when its verdict is cached (RFC 6750 §3.1's rule)."""
    guarded = APIKeyMiddleware(make_app(), store=store, hasher=hasher)
    async with make_client(guarded) as client:
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
        twice = await client.get("/", headers=[("X-API-Key", issued.key)] * 2)
    assert twice.status_code == 400
    assert 'error="invalid_request"' in twice.headers["www-authenticate"]


async def test_cached_key_is_refused_once_revoked(
    store: MemoryKeyStore, hasher: KeyHasher, issued: IssuedKey, make_client: MakeClient
) -> None:
    guarded = APIKeyMiddleware(make_app(), store=store, hasher=hasher)
    async with make_client(guarded) as client:
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
        await KeyManager(store, hasher).revoke(issued.record.key_id)
        after = await client.get("/", headers={"X-API-Key": issued.key})
    assert after.status_code == 401
    assert 'error="invalid_key"' in after.headers["www-authenticate"]


async def test_every_request_of_a_cached_key_is_counted(
    store: MemoryKeyStore, hasher: KeyHasher, issued: IssuedKey, make_client: MakeClient
) -> None:
    guarded = APIKeyMiddleware(make_app(), store=store, hasher=hasher)
    async with make_client(guarded) as client:
        for _ in range(5):
            assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
    assert guarded.auth.usage is not None
    await guarded.auth.usage.flush()
    since = datetime(2000, 1, 1, tzinfo=timezone.utc)
    buckets = await store.usage(
        issued.record.key_id, since=since, until=since.replace(year=2100), granularity="hour"
    )
    assert sum(b.count for b in buckets) == 5


async def test_cached_key_is_hidden_from_the_app(
    store: MemoryKeyStore, hasher: KeyHasher, issued: IssuedKey, make_client: MakeClient
) -> None:
    guarded = APIKeyMiddleware(make_app(), store=store, hasher=hasher, hide_credentials=True)
    async with make_client(guarded) as client:
        answers = [(await client.get("/", headers={"X-API-Key": issued.key})) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert all("x-api-key" not in a.json()["headers"] for a in answers)


def test_websocket_with_a_cached_key(store: MemoryKeyStore, hasher: KeyHasher) -> None:
    key = anyio.run(lambda: KeyManager(store, hasher).create("billing")).key
    with TestClient(APIKeyMiddleware(make_app(), store=store, hasher=hasher)) as client:
        for _ in range(2):
            with client.websocket_connect("/ws", headers={"X-API-Key": key}) as ws:
                assert ws.receive_json() == {"name": "billing"}


async def test_cached_token_hands_the_app_the_same_principal(make_client: MakeClient) -> None:
    introspector = TableIntrospector()
    introspector.answers["t"] = active()
    guarded = BearerTokenMiddleware(make_app(), introspector=introspector)
    async with make_client(guarded) as client:
        answers = [(await client.get("/", headers={"Authorization": "Bearer t"})) for _ in range(3)]
    assert introspector.calls == 1
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[2].json() | {"headers": None} == {
        "kind": "bearer",
        "identity": "svc",
        "name": "svc",
        "scopes": ["items:read"],
        "headers": None,
    }


@pytest.mark.parametrize(
    "info",
    [
        # RFC 9449 §7.2: a DPoP-bound token is not accepted as a bearer token.
        pytest.param(active(cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}), id="dpop"),
        # RFC 8705 §3: a certificate-bound token needs its certificate.
        pytest.param(
            active(cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}), id="mtls"
        ),
    ],
)
async def test_cached_bound_token_is_refused_on_every_request(
    make_client: MakeClient, info: TokenInfo
) -> None:
    """The verdict is cached, the proof of possession is not: each request is refused."""
    introspector = TableIntrospector()
    introspector.answers["t"] = info
    guarded = BearerTokenMiddleware(make_app(), introspector=introspector)
    async with make_client(guarded) as client:
        statuses = [
            (await client.get("/", headers={"Authorization": "Bearer t"})).status_code
            for _ in range(3)
        ]
    assert introspector.calls == 1
    assert statuses == [401, 401, 401]
