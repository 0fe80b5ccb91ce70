"""An API for other services: OAuth 2.0 client-credentials tokens from any provider.

Configured by environment variables (docs/providers.md has the values for Keycloak,
Auth0, Microsoft Entra ID and Okta), run with one command:

    export OAUTH_ISSUER=https://login.example/realms/demo    # the issuer, exactly as in `iss`
    export OAUTH_AUDIENCE=https://api.example                # this API's identifier (`aud`)
    uvicorn --factory examples.provider_app:create_app

Optional settings:

    OAUTH_SCOPE_CLAIMS     claims that carry scopes or roles, comma-separated
                           (default "scope,scp"; e.g. "roles", "permissions",
                           "realm_access.roles")
    OAUTH_ACCEPT_JWT_TYP   "true" to accept `typ: JWT` (or none) besides `at+jwt`
    OAUTH_CLIENT_ID        with OAUTH_CLIENT_SECRET: ask the provider's introspection
    OAUTH_CLIENT_SECRET    endpoint (RFC 7662) instead of checking JWTs here
    OAUTH_CA_BUNDLE        a PEM file of CA certificates for calls to the provider

Scopes are required by path and method with `ScopeRules`: reading `/items` needs
`items:read`, adding one `items:write`; `/health` is open.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request

from apiguard import BearerTokenMiddleware, ScopeRule, ScopeRules
from apiguard.tokens import JWTIntrospector, RemoteIntrospector
from apiguard.types import TokenIntrospector

RULES = ScopeRules(
    [
        ScopeRule("/items", "items:read", methods=["GET"]),
        ScopeRule("/items", "items:write", methods=["POST"]),
    ]
)


def http_client(settings: Mapping[str, str]) -> httpx.AsyncClient:
    """The client for discovery, keys and introspection: the system's CAs, or a bundle."""
    bundle = settings.get("OAUTH_CA_BUNDLE")
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=bundle) if bundle else True
    return httpx.AsyncClient(verify=verify)


def introspector(settings: Mapping[str, str], client: httpx.AsyncClient) -> TokenIntrospector:
    """A `JWTIntrospector`, or a `RemoteIntrospector` when client credentials are set."""
    missing = [name for name in ("OAUTH_ISSUER", "OAUTH_AUDIENCE") if not settings.get(name)]
    if missing:  # the example's own settings, not apiguard's: say which, without a traceback
        raise SystemExit(
            f"examples.provider_app needs {' and '.join(missing)}:"
            " see the top of examples/provider_app.py"
        )
    issuer, audience = settings["OAUTH_ISSUER"], settings["OAUTH_AUDIENCE"]
    claims = [c.strip() for c in settings.get("OAUTH_SCOPE_CLAIMS", "scope,scp").split(",")]
    if settings.get("OAUTH_CLIENT_ID"):
        return RemoteIntrospector.from_issuer(
            issuer,
            client_id=settings["OAUTH_CLIENT_ID"],
            client_secret=settings.get("OAUTH_CLIENT_SECRET"),
            audience=audience,
            scope_claims=claims,
            http_client=client,
        )
    return JWTIntrospector.from_issuer(
        issuer,
        audience=audience,
        scope_claims=claims,
        accept_jwt_typ=settings.get("OAUTH_ACCEPT_JWT_TYP", "").lower() in ("1", "true", "yes"),
        http_client=client,
    )


def create_app(
    settings: Mapping[str, str] = os.environ, client: httpx.AsyncClient | None = None
) -> FastAPI:
    """The app, configured from `settings` (the environment); `client` for tests."""
    client = client or http_client(settings)
    tokens = introspector(settings, client)
    items = ["hammer", "saw"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await tokens.aclose()
        await client.aclose()

    app = FastAPI(title="Inventory API", lifespan=lifespan)
    app.add_middleware(
        BearerTokenMiddleware,
        introspector=tokens,
        exclude_paths=["/health"],
        policies=[RULES],
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items")
    async def list_items(request: Request) -> dict[str, object]:
        return {"items": items, "client": request.user.client_id or request.user.identity}

    @app.post("/items", status_code=201)
    async def add_item(name: str) -> dict[str, str]:
        items.append(name)
        return {"added": name}

    return app
