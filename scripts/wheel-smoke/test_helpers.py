"""apiguard.testing's helpers and pytest plugin, from the installed wheel."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiguard import APIKeyAuth, AuthMiddleware, BearerAuth, Principal
from apiguard.testing import TEST_PEPPER, FakeIssuer, KeySpec, make_keys

pytest_plugins = ["apiguard.pytest_plugin"]
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"kind": request.user.kind, "scopes": sorted(request.auth.scopes)})


async def test_keys_tokens_and_overrides(
    fake_issuer: FakeIssuer, override_auth: Callable[..., Principal]
) -> None:
    store, keys = await make_keys(KeySpec("reader", scopes=["items:read"]))
    introspector = fake_issuer.jwt_introspector()
    app = Starlette(routes=[Route("/", whoami)])
    app.add_middleware(
        AuthMiddleware,
        authenticators=[APIKeyAuth(store, pepper=TEST_PEPPER), BearerAuth(introspector)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://smoke") as client:
        assert (await client.get("/")).status_code == 401
        keyed = await client.get("/", headers={"X-API-Key": keys["reader"]})
        assert keyed.json() == {"kind": "api_key", "scopes": ["items:read"]}
        token = fake_issuer.mint(scope="a b")
        bearer = await client.get("/", headers={"Authorization": f"Bearer {token}"})
        assert bearer.json() == {"kind": "bearer", "scopes": ["a", "b"]}
        override_auth(app, client_id="svc", scopes=["x"])
        assert (await client.get("/")).json() == {"kind": "bearer", "scopes": ["x"]}
    await introspector.aclose()
    await store.aclose()
