"""`requires_scopes`: Starlette endpoints refused the way the middleware refuses."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from apiguard import APIKeyMiddleware, ConfigurationError, ScopeRule, ScopeRules, requires_scopes
from apiguard.keys import IssuedKey, KeyHasher, KeyManager, MemoryKeyStore

from .conftest import PEPPER, MakeClient

pytestmark = pytest.mark.anyio

DESCRIPTION = "The request requires more privileges than the credentials grant."


@requires_scopes("items:write")
async def write(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"written by {request.user.display_name}")


@requires_scopes("items:write | admin")
def write_sync(request: Request) -> PlainTextResponse:
    return PlainTextResponse("sync")


class Items(HTTPEndpoint):
    @requires_scopes("items:read")
    async def get(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("class")


@requires_scopes("items:read")
async def feed(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


@requires("items:write")
async def starlette_requires(request: Request) -> PlainTextResponse:
    return PlainTextResponse("starlette")


def make(store: MemoryKeyStore, **options: Any) -> Starlette:
    app = Starlette(
        routes=[
            Route("/write", write, methods=["POST"]),
            Route("/sync", write_sync),
            Route("/class", Items),
            Route("/rules", write_sync),
            Route("/starlette", starlette_requires),
            WebSocketRoute("/feed", feed),
        ]
    )
    rules = ScopeRules([ScopeRule("/rules", "items:write")])
    app.add_middleware(APIKeyMiddleware, store=store, pepper=PEPPER, policies=[rules], **options)
    return app


@pytest.fixture
def store() -> MemoryKeyStore:
    return MemoryKeyStore()


async def issue(store: MemoryKeyStore, *scopes: str) -> dict[str, str]:
    issued: IssuedKey = await KeyManager(store, KeyHasher(PEPPER)).create("c", scopes=scopes)
    return {"X-API-Key": issued.key}


async def test_allowed_with_the_scopes(store: MemoryKeyStore, make_client: MakeClient) -> None:
    writer = await issue(store, "items:write", "items:read")
    async with make_client(make(store)) as client:
        assert (await client.post("/write", headers=writer)).text == "written by c"
        assert (await client.get("/sync", headers=writer)).text == "sync"
        assert (await client.get("/class", headers=writer)).text == "class"


@pytest.mark.parametrize("path", ["/sync", "/class"])
async def test_refused_like_the_middleware(
    store: MemoryKeyStore, make_client: MakeClient, path: str
) -> None:
    """403 `insufficient_scope`: the body, challenge and headers of a ScopeRules refusal."""
    nobody = await issue(store, "other")
    async with make_client(make(store)) as client:
        by_decorator = await client.get(path, headers=nobody)
        by_middleware = await client.get("/rules", headers=nobody)
    assert by_decorator.status_code == 403
    assert by_decorator.json() == {"error": "insufficient_scope", "error_description": DESCRIPTION}
    assert by_decorator.headers["cache-control"] == "no-store"
    assert by_decorator.headers["www-authenticate"].startswith('ApiKey realm="api", scope="')
    if path == "/sync":  # same requirement as the rule: the very same response
        assert by_decorator.headers["www-authenticate"] == by_middleware.headers["www-authenticate"]
        assert by_decorator.content == by_middleware.content


async def test_problem_details_too(store: MemoryKeyStore, make_client: MakeClient) -> None:
    nobody = await issue(store, "other")
    async with make_client(make(store, problem_details=True)) as client:
        refused = await client.post("/write", headers=nobody)
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 403
    assert refused.json()["error"] == "insufficient_scope"


async def test_an_anonymous_caller_gets_401(store: MemoryKeyStore, make_client: MakeClient) -> None:
    async with make_client(make(store, optional=True)) as client:
        refused = await client.post("/write")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'ApiKey realm="api"'
    assert refused.json() == {"error_description": "Authentication is required."}


async def test_starlette_requires_differs(store: MemoryKeyStore, make_client: MakeClient) -> None:
    """What the README says of Starlette's `@requires`: text/plain, no challenge, no no-store."""
    nobody = await issue(store, "other")
    async with make_client(make(store)) as client:
        refused = await client.get("/starlette", headers=nobody)
    assert refused.status_code == 403
    assert refused.text == "Forbidden"
    assert "www-authenticate" not in refused.headers
    assert "cache-control" not in refused.headers


async def test_a_websocket_is_refused_before_accept(store: MemoryKeyStore) -> None:
    reader, nobody = await issue(store, "items:read"), await issue(store, "other")
    with TestClient(make(store)) as client:
        with client.websocket_connect("/feed", headers=reader) as ws:
            assert ws.receive_text() == "hello"
        with (
            pytest.raises(WebSocketDenialResponse) as info,
            client.websocket_connect("/feed", headers=nobody),
        ):
            pass  # pragma: no cover - refused
    assert info.value.status_code == 403
    assert "insufficient_scope" in info.value.headers["www-authenticate"]


async def test_the_request_may_come_by_keyword(store: MemoryKeyStore) -> None:
    """Called directly, with `request=`: the check still runs."""
    request = Request({"type": "http", "user": "not a principal", "headers": []})
    with pytest.raises(ConfigurationError, match="apiguard middleware"):
        await write(request=request)


def test_misuse_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="at least one scope"):
        requires_scopes()
    with pytest.raises(ConfigurationError, match="no 'request' or 'websocket'"):
        requires_scopes("a")(lambda connection: None)


async def test_an_excluded_path_still_refuses_by_scope(
    store: MemoryKeyStore, make_client: MakeClient
) -> None:
    """Excluded from the key check, a route that requires scopes answers the anonymous 401."""
    async with make_client(make(store, exclude_paths=["/write"])) as client:
        refused = await client.post("/write")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'ApiKey realm="api"'
    assert refused.headers["cache-control"] == "no-store"
