"""`ScopedRoute`: `require_scopes` checked by the route, refusing as the dependency does."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.routing import APIRoute
from openapi_spec_validator import validate
from starlette.testclient import TestClient, WebSocketDenialResponse

from apiguard import APIKeyAuth, ConfigurationError, Principal
from apiguard.fastapi import Guard, ScopedRoute, install, require_scopes
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.policies import check_scopes
from apiguard.types import Message

from .conftest import MakeClient

pytestmark = pytest.mark.anyio


def build(
    store: MemoryKeyStore, hasher: KeyHasher, route_class: type[APIRoute], **options: Any
) -> FastAPI:
    """Scopes on a route, a router and an inclusion, with `route_class` everywhere."""
    app = FastAPI()
    app.router.route_class = route_class  # kept by `install`: not the default class
    install(app, APIKeyAuth(store, hasher=hasher), **options)

    @app.get("/items", dependencies=[require_scopes("items:read")])
    async def items() -> dict[str, str]:
        return {"items": "all"}

    @app.post("/items", dependencies=[require_scopes("items:write | admin")])
    async def add(item: dict[str, int]) -> dict[str, int]:
        return item

    @app.get("/both", dependencies=[require_scopes("a"), require_scopes("b")])
    async def both() -> dict[str, str]:
        return {}

    @app.get("/caller")
    async def caller(who: Annotated[Principal, require_scopes("items:read")]) -> dict[str, str]:
        return {"caller": who.identity}

    admin = APIRouter(
        prefix="/admin", route_class=route_class, dependencies=[require_scopes("admin")]
    )

    @admin.get("/stats", dependencies=[require_scopes("stats")])
    async def stats() -> dict[str, int]:
        return {"requests": 1}

    reports = APIRouter(route_class=route_class)

    @reports.get("/reports")
    async def reports_list() -> list[str]:
        return []

    admin.include_router(reports, prefix="/v1", dependencies=[require_scopes("reports")])
    app.include_router(admin, dependencies=[require_scopes("staff")])
    return app


async def keys(store: MemoryKeyStore, hasher: KeyHasher, *scope_sets: str) -> list[str]:
    manager = KeyManager(store, hasher)
    return [(await manager.create(s or "none", scopes=s.split())).key for s in scope_sets]


@pytest.mark.parametrize("route_class", [ScopedRoute, APIRoute])
async def test_scopes_of_routes_routers_and_inclusions_are_required(
    hasher: KeyHasher, make_client: MakeClient, route_class: type[APIRoute]
) -> None:
    """The same decisions with the route checking (`ScopedRoute`) as with the dependencies."""
    store = MemoryKeyStore()
    reader, writer, a, ab, staff, full = await keys(
        store,
        hasher,
        "items:read",
        "admin",
        "a",
        "a b",
        "staff admin stats",
        "staff admin stats reports",
    )
    cases = [
        ("GET", "/items", reader, 200),
        ("GET", "/items", writer, 403),
        ("POST", "/items", writer, 200),  # the second alternative
        ("POST", "/items", reader, 403),
        ("GET", "/both", a, 403),
        ("GET", "/both", ab, 200),
        ("GET", "/caller", reader, 200),
        ("GET", "/caller", writer, 403),
        ("GET", "/admin/stats", staff, 200),  # route, router and inclusion scopes
        ("GET", "/admin/stats", writer, 403),
        ("GET", "/admin/v1/reports", staff, 403),  # lacks the nested inclusion's scope
        ("GET", "/admin/v1/reports", full, 200),
    ]
    async with make_client(build(store, hasher, route_class)) as client:
        for method, path, key, status in cases:
            response = await client.request(method, path, headers={"X-API-Key": key}, json={"n": 1})
            assert (method, path, response.status_code) == (method, path, status)


async def test_the_route_checks_without_running_the_dependency(
    hasher: KeyHasher, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a `require_scopes` taken as a parameter is still resolved by FastAPI."""
    store = MemoryKeyStore()
    reader, full = await keys(store, hasher, "items:read", "staff admin stats reports")
    calls: list[str] = []

    def counting(principal: Principal, alternatives: Any) -> None:
        calls.append(principal.identity)
        check_scopes(principal, alternatives)

    monkeypatch.setattr("apiguard.fastapi._dependencies.check_scopes", counting)
    async with make_client(build(store, hasher, ScopedRoute)) as client:
        assert (await client.get("/items", headers={"X-API-Key": reader})).status_code == 200
        # Four requirements from a route, two routers and two inclusions.
        nested = await client.get("/admin/v1/reports", headers={"X-API-Key": full})
        assert nested.status_code == 200
        assert calls == []
        assert (await client.get("/caller", headers={"X-API-Key": reader})).status_code == 200
        assert len(calls) == 1


async def test_a_refusal_comes_before_the_body_is_read(hasher: KeyHasher) -> None:
    """The request body of a caller without the scopes is never read."""
    store = MemoryKeyStore()
    (reader,) = await keys(store, hasher, "items:read")
    app = build(store, hasher, ScopedRoute)
    reads: list[Message] = []
    sent: list[Message] = []

    async def receive() -> Message:  # pragma: no cover - never called: the point
        message = {"type": "http.request", "body": b"not json", "more_body": False}
        reads.append(message)
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/items",
        "raw_path": b"/items",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"x-api-key", reader.encode()), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 403  # not 422 for the malformed body
    assert reads == []


@pytest.mark.parametrize("problem_details", [False, True])
async def test_refusals_are_byte_identical_to_the_dependency(
    hasher: KeyHasher, make_client: MakeClient, problem_details: bool
) -> None:
    """RFC 6750 §3.1: 403 `insufficient_scope` naming the scope; 401 for an anonymous caller."""
    store = MemoryKeyStore()
    reader, a, staff = await keys(store, hasher, "items:read", "a", "staff admin")
    options = {"problem_details": problem_details, "optional": True}
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "/items", {"X-API-Key": staff}),
        ("POST", "/items", {"X-API-Key": reader}),
        ("GET", "/both", {"X-API-Key": a}),
        ("GET", "/admin/stats", {"X-API-Key": staff}),
        ("GET", "/admin/v1/reports", {"X-API-Key": reader}),
        ("GET", "/items", {}),  # anonymous (optional mode): 401
    ]
    answers: dict[type[APIRoute], list[httpx.Response]] = {}
    for route_class in (ScopedRoute, APIRoute):
        async with make_client(build(store, hasher, route_class, **options)) as client:
            answers[route_class] = [
                await client.request(method, path, headers=headers, json={"n": 1})
                for method, path, headers in requests
            ]
    for fast, slow in zip(answers[ScopedRoute], answers[APIRoute], strict=True):
        assert fast.status_code == slow.status_code
        assert fast.headers.raw == slow.headers.raw
        assert fast.content == slow.content
    first = answers[ScopedRoute][0]
    assert first.status_code == 403
    assert first.headers["www-authenticate"] == (
        'ApiKey realm="api", scope="items:read", error="insufficient_scope",'
        ' error_description="The request requires more privileges than the credentials grant."'
    )
    assert first.headers["cache-control"] == "no-store"
    assert answers[ScopedRoute][2].headers["www-authenticate"].count('scope="b"') == 1
    assert answers[ScopedRoute][-1].status_code == 401


def test_the_document_shows_the_scopes(hasher: KeyHasher) -> None:
    app = build(MemoryKeyStore(), hasher, ScopedRoute)
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    validate(document)
    paths = document["paths"]
    assert paths["/items"]["get"]["security"] == [{"APIKey": ["items:read"]}]
    assert paths["/items"]["post"]["security"] == [
        {"APIKey": ["items:write"]},
        {"APIKey": ["admin"]},
    ]
    assert paths["/both"]["get"]["security"] == [{"APIKey": ["a", "b"]}]
    assert paths["/admin/stats"]["get"]["security"] == [{"APIKey": ["admin", "staff", "stats"]}]
    assert paths["/admin/v1/reports"]["get"]["security"] == [
        {"APIKey": ["admin", "reports", "staff"]}
    ]
    assert "403" in paths["/admin/v1/reports"]["get"]["responses"]


async def test_install_makes_the_apps_routes_scoped(hasher: KeyHasher) -> None:
    app = FastAPI()
    install(app, APIKeyAuth(MemoryKeyStore(), hasher=hasher))

    @app.get("/items", dependencies=[require_scopes("items:read")])
    async def items() -> None: ...

    assert app.router.route_class is ScopedRoute
    assert [type(r) for r in app.routes if getattr(r, "path", "") == "/items"] == [ScopedRoute]
    own = FastAPI()
    own.router.route_class = type("OwnRoute", (APIRoute,), {})
    install(own, APIKeyAuth(MemoryKeyStore(), hasher=hasher))
    assert own.router.route_class.__name__ == "OwnRoute"


async def test_a_websocket_route_keeps_the_dependency(hasher: KeyHasher) -> None:
    """Websocket routes are not `APIRoute`s: `require_scopes` refuses them before accept."""
    store = MemoryKeyStore()
    reader, other = await keys(store, hasher, "feed", "other")
    app = FastAPI()
    install(app, APIKeyAuth(store, hasher=hasher))

    @app.websocket("/feed", dependencies=[require_scopes("feed")])
    async def feed(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    with TestClient(app) as client:
        with client.websocket_connect("/feed", headers={"X-API-Key": reader}) as connection:
            assert connection.receive_text() == "hello"
        with (
            pytest.raises(WebSocketDenialResponse) as info,
            client.websocket_connect("/feed", headers={"X-API-Key": other}),
        ):
            pass  # pragma: no cover - refused
    assert info.value.status_code == 403
    assert 'scope="feed", error="insufficient_scope"' in info.value.headers["www-authenticate"]


async def test_a_per_route_guard_authenticates_before_the_scopes(
    hasher: KeyHasher, make_client: MakeClient
) -> None:
    """Without the middleware, the dependencies run as declared: the guard first."""
    store = MemoryKeyStore()
    (admin,) = await keys(store, hasher, "admin")
    app = FastAPI()
    guard = Guard(APIKeyAuth(store, hasher=hasher))
    guard.install(app, middleware=False)

    @app.get("/admin", dependencies=[Depends(guard), require_scopes("admin")])
    async def admin_page() -> dict[str, str]:
        return {}

    assert type(app.routes[-1]) is ScopedRoute
    async with make_client(app) as client:
        assert (await client.get("/admin")).status_code == 401
        assert (await client.get("/admin", headers={"X-API-Key": admin})).status_code == 200


def test_without_the_middleware_it_is_a_configuration_error() -> None:
    app = FastAPI()
    app.router.route_class = ScopedRoute

    @app.get("/items", dependencies=[require_scopes("items:read")])
    async def items() -> None: ...

    with TestClient(app) as client, pytest.raises(ConfigurationError, match="apiguard middleware"):
        client.get("/items")
