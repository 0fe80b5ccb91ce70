"""The smallest Starlette app protected by API keys.

    uvicorn examples.starlette_app:app

Without APIGUARD_STORE the keys are held in memory: a key is made at startup and its
curl line printed (with a pepper made for the run, unless APIGUARD_PEPPER is set), and
it is gone when the app stops. With a store that persists, keys come from the CLI:

    export APIGUARD_PEPPER=...                     # `apiguard keys init` suggests one
    export APIGUARD_STORE=sqlite:///apiguard-keys.db
    apiguard keys create --name me --scope items:read --scope items:write
    uvicorn examples.starlette_app:app
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware, requires_scopes
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store
from apiguard.types import KeyStore

STORE_URL = os.environ.get("APIGUARD_STORE")
store: KeyStore = open_store(STORE_URL) if STORE_URL else MemoryKeyStore()
# Keys in memory live as long as the process, so a pepper made for the run will do.
pepper = os.environ.get("APIGUARD_PEPPER") or (None if STORE_URL else secrets.token_urlsafe(32))
ITEMS = ["hammer", "saw"]


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    if STORE_URL is None:
        manager = KeyManager(store, KeyHasher(pepper))
        issued = await manager.create("example", scopes=["items:read", "items:write"])
        print(
            "Keys are in memory; this one works until the app stops (uvicorn's default port):\n"
            f"  curl -H 'X-API-Key: {issued.key}' http://127.0.0.1:8000/",
            flush=True,
        )
    yield
    await store.aclose()


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": request.user.display_name, "scopes": request.auth.scopes})


@requires_scopes("items:write")
async def add_item(request: Request) -> JSONResponse:
    name = request.query_params.get("name")
    if not name:
        return JSONResponse({"error": "add ?name=... to the URL"}, status_code=422)
    ITEMS.append(name)
    return JSONResponse({"added": name}, status_code=201)


app = Starlette(
    routes=[Route("/", hello), Route("/items", add_item, methods=["POST"])],
    middleware=[Middleware(APIKeyMiddleware, store=store, pepper=pepper)],
    lifespan=lifespan,
)
