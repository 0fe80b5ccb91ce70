"""`Guard` per route, without the middleware: the same checks and the same refusals."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from openapi_spec_validator import validate

from apiguard import (
    APIKeyAuth,
    AuthMiddleware,
    BearerAuth,
    ConfigurationError,
    Principal,
    ScopeRule,
    ScopeRules,
    UsageOptions,
)
from apiguard.fastapi import Guard, require_scopes
from apiguard.keys import IssuedKey, KeyHasher, KeyManager, MemoryKeyStore
from apiguard.tokens import TokenInfo

from .conftest import MakeClient
from .token_support import TableIntrospector

pytestmark = pytest.mark.anyio

EXPIRES = datetime.now(timezone.utc) + timedelta(days=1)


class Setup:
    def __init__(self, hasher: KeyHasher) -> None:
        self.store = MemoryKeyStore()
        self.hasher = hasher
        self.usage: UsageOptions | bool = True
        self.tokens = TableIntrospector()
        self.tokens.answers["reader"] = TokenInfo(
            True, client_id="svc", scopes=frozenset({"items:read"}), expires_at=EXPIRES
        )

    def authenticators(self) -> list[Any]:
        return [
            APIKeyAuth(self.store, hasher=self.hasher, usage=self.usage),
            BearerAuth(self.tokens),
        ]

    def routes(self, guard: Any) -> APIRouter:
        router = APIRouter()

        @router.get("/items")
        async def items(request: Request, caller: Principal = Depends(guard)) -> dict[str, Any]:  # noqa: B008
            assert request.user is caller
            return {"caller": caller.identity, "scopes": sorted(request.auth.scopes)}

        @router.post("/items")
        async def add(
            caller: Principal = Security(guard, scopes=["items:write"]),  # noqa: B008
        ) -> dict[str, str]:
            return {"by": caller.identity}

        return router

    def per_route(self, **options: Any) -> FastAPI:
        guard = Guard(*self.authenticators(), **options)
        app = FastAPI()
        guard.install(app, middleware=False)
        app.include_router(self.routes(guard))

        @app.get("/open")
        async def open_route() -> dict[str, str]:
            return {"open": "yes"}

        return app

    def middleware(self, **options: Any) -> FastAPI:
        """The reference: the same routes behind `AuthMiddleware`, with the same options."""
        guard = Guard(*self.authenticators(), **options)
        app = FastAPI()
        guard.install(app)
        app.include_router(self.routes(guard))
        return app


@pytest.fixture
def setup(hasher: KeyHasher) -> Setup:
    return Setup(hasher)


async def reader_key(setup: Setup) -> IssuedKey:
    issued: IssuedKey = await KeyManager(setup.store, setup.hasher).create(
        "reader", scopes=["items:read"]
    )
    return issued


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert a.headers.get_list("www-authenticate") == b.headers.get_list("www-authenticate")
    for name in ("content-type", "cache-control", "retry-after"):
        assert a.headers.get(name) == b.headers.get(name), name
    assert a.content == b.content


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        pytest.param("GET", {}, 401, id="no-credential"),
        pytest.param("GET", {"X-API-Key": "apg_wrong"}, 401, id="invalid-key"),
        pytest.param("GET", {"Authorization": "Bearer nope"}, 401, id="invalid-token"),
        pytest.param(
            "GET", {"X-API-Key": "apg_x", "Authorization": "Bearer reader"}, 400, id="two"
        ),
        pytest.param("POST", {"Authorization": "Bearer reader"}, 403, id="insufficient-scope"),
        pytest.param("GET", {"Authorization": "Bearer down"}, 503, id="backend-down"),
    ],
)
@pytest.mark.parametrize("problem_details", [False, True], ids=["json", "problem"])
async def test_refusals_are_the_middlewares(
    setup: Setup,
    make_client: MakeClient,
    method: str,
    headers: dict[str, str],
    status: int,
    problem_details: bool,
) -> None:
    """Status, `WWW-Authenticate` (RFC 6750 §3), body and headers match byte for byte."""
    if "down" in headers.get("Authorization", ""):
        setup.tokens.down = True
    options = {"realm": "shop", "problem_details": problem_details}
    async with (
        make_client(setup.per_route(**options)) as per_route,
        make_client(setup.middleware(**options)) as reference,
    ):
        got = await per_route.request(method, "/items", headers=headers)
        expected = await reference.request(method, "/items", headers=headers)
    assert got.status_code == status
    same(got, expected)


@pytest.mark.parametrize("credential", ["key", "token"])
async def test_a_route_scope_check_after_the_guard_is_answered_like_the_middlewares(
    setup: Setup, make_client: MakeClient, credential: str
) -> None:
    """`require_scopes` after a per-route guard: 403 with the scheme of the credential used."""
    reader = await reader_key(setup)
    headers = (
        {"X-API-Key": reader.key} if credential == "key" else {"Authorization": "Bearer reader"}
    )

    def app(*, middleware: bool) -> FastAPI:
        guard = Guard(*setup.authenticators(), realm="shop")
        application = FastAPI()
        guard.install(application, middleware=middleware)

        @application.delete("/items", dependencies=[Depends(guard), require_scopes("admin")])
        async def clear() -> dict[str, str]:
            return {"cleared": "yes"}

        return application

    async with (
        make_client(app(middleware=False)) as per_route,
        make_client(app(middleware=True)) as reference,
    ):
        got = await per_route.delete("/items", headers=headers)
        expected = await reference.delete("/items", headers=headers)
    assert got.status_code == 403
    scheme = "ApiKey" if credential == "key" else "Bearer"
    assert got.headers["www-authenticate"].startswith(f"{scheme} ")
    assert 'error="insufficient_scope"' in got.headers["www-authenticate"]
    same(got, expected)


async def test_only_routes_depending_on_the_guard_need_credentials(
    setup: Setup, make_client: MakeClient
) -> None:
    reader = await reader_key(setup)
    async with make_client(setup.per_route()) as client:
        assert (await client.get("/open")).json() == {"open": "yes"}
        allowed = await client.get("/items", headers={"X-API-Key": reader.key})
        assert allowed.json() == {"caller": reader.record.key_id, "scopes": ["items:read"]}
        token = await client.get("/items", headers={"Authorization": "Bearer reader"})
        assert token.json() == {"caller": "svc", "scopes": ["items:read"]}
        setup.tokens.answers["writer"] = TokenInfo(
            True, client_id="w", scopes=frozenset({"items:write"}), expires_at=EXPIRES
        )
        added = await client.post("/items", headers={"Authorization": "Bearer writer"})
        assert added.json() == {"by": "w"}


async def test_a_router_wide_dependency_and_policies(setup: Setup, make_client: MakeClient) -> None:
    """`APIRouter(dependencies=[Depends(guard)])`; the guard's `ScopeRules` apply too."""
    reader = await reader_key(setup)
    guard = Guard(*setup.authenticators(), policies=[ScopeRules([ScopeRule("/admin/*", "admin")])])
    app = FastAPI()
    guard.install(app, middleware=False)
    router = APIRouter(prefix="/admin", dependencies=[Depends(guard)])

    @router.get("/stats")
    async def stats() -> dict[str, int]:
        return {"keys": 1}

    app.include_router(router)
    async with make_client(app) as client:
        assert (await client.get("/admin/stats")).status_code == 401
        refused = await client.get("/admin/stats", headers={"X-API-Key": reader.key})
        assert refused.status_code == 403
        assert refused.json()["error"] == "insufficient_scope"
        admin = await KeyManager(setup.store, setup.hasher).create("admin", scopes=["admin"])
        assert (await client.get("/admin/stats", headers={"X-API-Key": admin.key})).json() == {
            "keys": 1
        }
    doc = app.openapi()
    validate(doc)
    assert doc["paths"]["/admin/stats"]["get"]["security"] == [
        {"APIKey": ["admin"]},
        {"OAuth2": ["admin"]},
    ]


async def test_the_key_use_is_recorded_after_the_response(
    setup: Setup, make_client: MakeClient
) -> None:
    """API key bookkeeping (usage counts, last use) is written per route too, as a
    background task, once due."""
    reader = await reader_key(setup)
    setup.usage = UsageOptions(flush_interval=0.001)
    app = setup.per_route()
    await anyio.sleep(0.002)  # the first write is due
    async with make_client(app) as client:
        assert (await client.get("/items", headers={"X-API-Key": reader.key})).status_code == 200
    record = await setup.store.get(reader.record.key_id)
    assert record is not None
    assert record.last_used_at is not None


def test_only_the_guarded_operations_are_documented_as_secured(setup: Setup) -> None:
    doc = setup.per_route().openapi()
    validate(doc)
    assert "security" not in doc["paths"]["/open"]["get"]
    assert doc["paths"]["/items"]["get"]["security"] == [{"APIKey": []}, {"OAuth2": []}]
    assert doc["paths"]["/items"]["post"]["security"] == [
        {"APIKey": ["items:write"]},
        {"OAuth2": ["items:write"]},
    ]
    assert doc["components"]["securitySchemes"]["OAuth2"]["type"] == "http"


async def test_a_guard_installed_with_middleware_needs_it(
    setup: Setup, make_client: MakeClient
) -> None:
    """Used where the middleware does not run (a second app), the guard says so."""
    guard = Guard(*setup.authenticators())
    guard.install(FastAPI())
    other = FastAPI()
    other.include_router(setup.routes(guard))
    async with make_client(other) as client:
        with pytest.raises(ConfigurationError, match="middleware is not in front"):
            await client.get("/items")


def test_the_middleware_is_apiguards_core(setup: Setup) -> None:
    app = setup.middleware()
    classes: Sequence[object] = [m.cls for m in app.user_middleware]
    assert classes == [AuthMiddleware]


@pytest.mark.parametrize("mode", ["per_route", "middleware"])
async def test_requests_are_counted_per_route_as_by_the_middleware(
    hasher: KeyHasher, make_client: MakeClient, mode: str
) -> None:
    """Per route, the guard counts what the middleware counts: requests let through,
    a route's own scope refusal (403) included, a missing key (401) not."""
    setup = Setup(hasher)
    issued = await reader_key(setup)
    app = getattr(setup, mode)()
    async with make_client(app) as client:
        for _ in range(2):
            assert (
                await client.get("/items", headers={"X-API-Key": issued.key})
            ).status_code == 200
        assert (await client.post("/items", headers={"X-API-Key": issued.key})).status_code == 403
        assert (await client.get("/items")).status_code == 401
    await setup.store.aclose()  # writes what the guard counted
    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    found = await setup.store.usage(
        issued.record.key_id, since=day - timedelta(days=1), until=day + timedelta(days=2),
        granularity="day",
    )  # fmt: skip
    assert sum(bucket.count for bucket in found) == 3
