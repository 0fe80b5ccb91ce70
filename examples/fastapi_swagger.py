"""FastAPI with API keys, and Swagger UI that knows about them.

    uvicorn examples.fastapi_swagger:app

Open http://127.0.0.1:8000/docs (served without a key), press "Authorize", paste
the key printed at startup into `APIKey (apiKey)`, and "Try it out" on any
operation. Keys are held in memory (a pepper is made for the run unless
APIGUARD_PEPPER is set); with APIGUARD_STORE set, keys come from the CLI
(`apiguard keys create --name me --scope items:read`) and none is printed.

With OAUTH_TOKEN_URL set too (and OAUTH_ISSUER, OAUTH_AUDIENCE for the tokens),
"Authorize" also offers the OAuth 2.0 client credentials flow.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from apiguard import APIKeyAuth, BearerAuth, Principal, ScopeRule, ScopeRules
from apiguard.fastapi import install, require_scopes
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store
from apiguard.tokens import JWTIntrospector
from apiguard.types import KeyStore

STORE_URL = os.environ.get("APIGUARD_STORE")
store: KeyStore = open_store(STORE_URL) if STORE_URL else MemoryKeyStore()
pepper = os.environ.get("APIGUARD_PEPPER") or (None if STORE_URL else secrets.token_urlsafe(32))
ITEMS = ["hammer", "saw"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if STORE_URL is None:
        manager = KeyManager(store, KeyHasher(pepper))
        issued = await manager.create("swagger", scopes=["items:read", "items:write"])
        print(
            f"Open http://127.0.0.1:8000/docs, press Authorize and paste this key:\n  {issued.key}",
            flush=True,
        )
    yield
    await store.aclose()
    if introspector is not None:
        await introspector.aclose()


app = FastAPI(title="Inventory API", lifespan=lifespan)
credentials: list[APIKeyAuth | BearerAuth] = [APIKeyAuth(store, pepper=pepper)]
introspector: JWTIntrospector | None = None
if os.environ.get("OAUTH_ISSUER"):
    introspector = JWTIntrospector.from_issuer(
        os.environ["OAUTH_ISSUER"], audience=os.environ["OAUTH_AUDIENCE"]
    )
    credentials.append(BearerAuth(introspector))

# The one line: the middleware, the security schemes in /openapi.json, public /docs.
install(
    app,
    *credentials,
    token_url=os.environ.get("OAUTH_TOKEN_URL"),
    exclude_paths=["/health"],
    policies=[ScopeRules([ScopeRule("/items", "items:read", methods=["GET"])])],
    scope_descriptions={"items:read": "List the items", "items:write": "Add items"},
)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items")
async def list_items() -> list[str]:
    return ITEMS


@app.post("/items", status_code=201)
async def add_item(
    name: str,
    caller: Principal = require_scopes("items:write"),  # noqa: B008 - FastAPI dependency
) -> dict[str, Any]:
    ITEMS.append(name)
    return {"added": name, "by": caller.display_name}
