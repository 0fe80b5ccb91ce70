from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from apiguard import (
    ApiGuardError,
    APIKeyMiddleware,
    BearerTokenMiddleware,
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    Principal,
    ScopeRule,
    ScopeRules,
)
from apiguard.fastapi import require_scopes
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.policies import parse_requirement, route_path
from apiguard.tokens import TokenInfo
from apiguard.types import Scope

from .conftest import MakeClient

pytestmark = pytest.mark.anyio


class TableIntrospector:
    """A token is its scopes, base64url-encoded and space-separated."""

    async def introspect(self, token: str) -> TokenInfo:
        scopes = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split()
        return TokenInfo(
            active=True,
            client_id="svc",
            subject="svc",
            scopes=frozenset(scopes),
            expires_at=datetime.now(timezone.utc) + timedelta(minutes=5),
        )

    async def aclose(self) -> None:
        pass


def bearer(scopes: str) -> dict[str, str]:
    token = base64.urlsafe_b64encode(f"x {scopes.replace(',', ' ')}".encode()).decode()
    return {"Authorization": f"Bearer {token.rstrip('=')}"}


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


RULES = ScopeRules(
    [
        ScopeRule("/items/*", "items:write", methods=["POST", "delete"]),
        ScopeRule("/items/*", "items:read"),
        ScopeRule("/admin", "admin | ops audit"),
    ]
)


@pytest.fixture
async def client(make_client: MakeClient) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[
            Route("/items/{id}", ok, methods=["GET", "POST", "DELETE"]),
            Route("/admin", ok),
            Route("/", ok),
        ]
    )
    guarded = BearerTokenMiddleware(app, introspector=TableIntrospector(), policies=[RULES])
    async with make_client(guarded) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "scopes", "status"),
    [
        ("GET", "/items/1", "items:read", 200),
        ("GET", "/items/1", "items:write", 403),
        ("POST", "/items/1", "items:write", 200),
        ("POST", "/items/1", "items:read", 403),
        ("DELETE", "/items/1", "items:write", 200),
        ("GET", "/admin", "admin", 200),
        ("GET", "/admin", "ops audit", 200),  # all of the second alternative
        ("GET", "/admin", "ops", 403),
        ("GET", "/", "", 200),  # no rule: any valid token
    ],
)
async def test_scope_rules(
    client: httpx.AsyncClient, method: str, path: str, scopes: str, status: int
) -> None:
    response = await client.request(method, path, headers=bearer(scopes.replace(" ", ",")))
    assert response.status_code == status


@pytest.mark.parametrize(
    "path", ["/x/%2E%2E/admin", "/items/%2e/1", "/items//1", "/admin/%2E%2E", "/x/%2e%2e%2fadmin"]
)
async def test_rules_refuse_paths_not_in_normal_form(client: httpx.AsyncClient, path: str) -> None:
    """A path a router may resolve differently from the rules: 400 invalid_request.

    `%2E%2E` reaches the app decoded, as `..`; RFC 3986 §5.2.4 would remove it.
    """
    response = await client.get(path, headers=bearer("items:read"))
    assert response.status_code == 400
    assert response.headers["www-authenticate"].startswith(
        'Bearer realm="api", error="invalid_request"'
    )


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/items/1", "", "/items/1"),
        ("/v1/items/1", "/v1", "/items/1"),
        ("/v1", "/v1", "/"),
        ("/v1health", "/v1", "/v1health"),  # as Starlette routes it: the root path ends at "/"
        ("/other", "/v1", "/other"),
        ("/.well-known/x", "", "/.well-known/x"),
        ("/items/", "", "/items/"),
    ],
)
def test_route_path(path: str, root_path: str, expected: str) -> None:
    assert route_path({"path": path, "root_path": root_path}) == expected


@pytest.mark.parametrize(
    "path", ["/..", "/.", "/a/../b", "/a/./b", "/a//b", "//a", "/a/..", "/v1/a/../b"]
)
def test_route_path_refuses_paths_not_in_normal_form(path: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        route_path({"path": path, "root_path": "/v1"})
    assert info.value.description == "The request path is not in normal form."


async def test_a_get_rule_covers_head(make_client: MakeClient) -> None:
    """RFC 9110 §9.3.2: Starlette runs the GET endpoint for HEAD, so GET rules apply to it."""
    ran: list[str] = []

    async def report(request: Request) -> PlainTextResponse:
        ran.append(request.method)
        return PlainTextResponse("report")

    rules = ScopeRules([ScopeRule("/reports", "reports:read", methods=["get"])])
    app = Starlette(routes=[Route("/reports", report)])
    guarded = BearerTokenMiddleware(app, introspector=TableIntrospector(), policies=[rules])
    async with make_client(guarded) as client:
        assert (await client.head("/reports", headers=bearer("other"))).status_code == 403
        assert (await client.get("/reports", headers=bearer("other"))).status_code == 403
        assert (await client.head("/reports", headers=bearer("reports:read"))).status_code == 200
        assert (await client.post("/reports", headers=bearer("other"))).status_code == 405
    assert ran == ["HEAD"]
    assert ScopeRule("/x", "a", methods=["GET"]).methods == {"GET", "HEAD"}


async def test_insufficient_scope_challenge(client: httpx.AsyncClient) -> None:
    """RFC 6750 §3.1: 403 insufficient_scope with the needed scope in the challenge."""
    response = await client.get("/admin", headers=bearer("ops"))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer realm="api", scope="admin", error="insufficient_scope", '
        'error_description="The request requires more privileges than the credentials grant."'
    )
    assert response.json()["error"] == "insufficient_scope"


async def test_rules_apply_to_api_keys_with_their_challenge(
    make_client: MakeClient, hasher: KeyHasher
) -> None:
    store = MemoryKeyStore()
    key = (await KeyManager(store, hasher).create("reader", scopes=["items:read"])).key
    app = Starlette(routes=[Route("/items/{id}", ok, methods=["GET", "POST"])])
    guarded = APIKeyMiddleware(app, store=store, hasher=hasher, policies=[RULES])
    async with make_client(guarded) as client:
        assert (await client.get("/items/1", headers={"X-API-Key": key})).status_code == 200
        refused = await client.post("/items/1", headers={"X-API-Key": key})
    assert refused.status_code == 403
    assert refused.headers["www-authenticate"].startswith(
        'ApiKey realm="api", scope="items:write", error="insufficient_scope"'
    )


async def test_anonymous_callers_get_401_from_rules(make_client: MakeClient) -> None:
    app = Starlette(routes=[Route("/items/{id}", ok), Route("/", ok)])
    guarded = BearerTokenMiddleware(
        app, introspector=TableIntrospector(), optional=True, policies=[RULES]
    )
    async with make_client(guarded) as client:
        assert (await client.get("/")).status_code == 200
        denied = await client.get("/items/1")
    assert denied.status_code == 401
    assert denied.headers["www-authenticate"] == 'Bearer realm="api"'


def test_parse_requirement() -> None:
    assert parse_requirement("a b | c") == (frozenset({"a", "b"}), frozenset({"c"}))
    for bad in ("", "a |", "| b", 'a"b'):
        with pytest.raises(ConfigurationError):
            parse_requirement(bad)
    with pytest.raises(ConfigurationError):
        ScopeRule("items", "a")


async def test_a_custom_policy_sees_the_principal(make_client: MakeClient) -> None:
    seen: list[tuple[str, str]] = []

    class OnlyServiceClients:
        async def check(self, principal: Principal, scope: Scope) -> None:
            seen.append((principal.identity, scope["path"]))
            if principal.client_id != "svc":
                raise InsufficientScope(["svc"])

    app = Starlette(routes=[Route("/", ok)])
    guarded = BearerTokenMiddleware(
        app, introspector=TableIntrospector(), policies=[OnlyServiceClients()]
    )
    async with make_client(guarded) as client:
        assert (await client.get("/", headers=bearer("a"))).status_code == 200
    assert seen == [("svc", "/")]


# --- FastAPI ---------------------------------------------------------------------


def fastapi_app(**options: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/items", dependencies=[require_scopes("items:read")])
    async def read() -> dict[str, str]:
        return {"ok": "read"}

    @app.post("/items")
    async def write(
        principal: Principal = require_scopes("items:read", "items:write"),  # noqa: B008
    ) -> dict[str, str]:
        return {"by": principal.client_id or ""}

    @app.get("/admin", dependencies=[require_scopes("admin | ops")])
    async def admin() -> dict[str, str]:
        return {"ok": "admin"}

    app.add_middleware(BearerTokenMiddleware, introspector=TableIntrospector(), **options)
    return app


async def test_require_scopes(make_client: MakeClient) -> None:
    async with make_client(fastapi_app()) as client:
        assert (await client.get("/items", headers=bearer("items:read"))).status_code == 200
        written = await client.post("/items", headers=bearer("items:read,items:write"))
        assert written.json() == {"by": "svc"}
        assert (await client.get("/admin", headers=bearer("ops"))).status_code == 200
        refused = await client.post("/items", headers=bearer("items:read"))
    assert refused.status_code == 403
    # All required scopes in one challenge (RFC 6750 §3), sorted.
    assert refused.headers["www-authenticate"] == (
        'Bearer realm="api", scope="items:read items:write", error="insufficient_scope", '
        'error_description="The request requires more privileges than the credentials grant."'
    )
    assert refused.json() == {
        "error": "insufficient_scope",
        "error_description": "The request requires more privileges than the credentials grant.",
    }
    assert refused.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("problem_details", [False, True])
async def test_require_scopes_refuses_like_the_middleware(
    make_client: MakeClient, problem_details: bool
) -> None:
    """One shape for every refusal: a dependency's 403 is a ScopeRules 403, byte for byte."""
    rules = [ScopeRules([ScopeRule("/rules", "items:read items:write")])]
    app = fastapi_app(problem_details=problem_details, realm="shop", policies=rules)
    async with make_client(app) as client:
        by_dependency = await client.post("/items", headers=bearer("items:read"))
        by_middleware = await client.get("/rules", headers=bearer("items:read"))
    assert by_dependency.status_code == by_middleware.status_code == 403
    assert by_dependency.content == by_middleware.content
    for name in ("content-type", "www-authenticate", "cache-control"):
        assert by_dependency.headers[name] == by_middleware.headers[name]
    assert 'realm="shop"' in by_dependency.headers["www-authenticate"]
    if problem_details:
        assert by_dependency.headers["content-type"] == "application/problem+json"


async def test_require_scopes_goes_through_the_error_response_hook(
    make_client: MakeClient,
) -> None:
    def hook(connection: HTTPConnection, error: ApiGuardError) -> Response:
        return PlainTextResponse(f"no: {type(error).__name__}", status_code=403)

    async with make_client(fastapi_app(error_response=hook)) as client:
        refused = await client.post("/items", headers=bearer("items:read"))
    assert refused.text == "no: InsufficientScope"
    assert "insufficient_scope" in refused.headers["www-authenticate"]


async def test_require_scopes_for_anonymous_is_401(make_client: MakeClient) -> None:
    async with make_client(fastapi_app(optional=True)) as client:
        response = await client.get("/items")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'


async def test_require_scopes_without_middleware_is_a_configuration_error(
    make_client: MakeClient,
) -> None:
    app = FastAPI()

    @app.get("/", dependencies=[require_scopes("a")])
    async def root() -> None:
        pass  # pragma: no cover - never reached

    with pytest.raises(ConfigurationError):
        async with make_client(app) as client:
            await client.get("/")
    with pytest.raises(ConfigurationError):
        require_scopes()
