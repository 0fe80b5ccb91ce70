"""An inventory API on FastAPI, protected by API keys kept in a SQLite file.

Run it with the demo command in the README, or by hand:

    export APIGUARD_PEPPER=...            # `apiguard keys init` suggests one
    export APIGUARD_STORE=sqlite:///apiguard-keys.db
    apiguard keys create --name demo --scope items:read --scope items:write
    uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from apiguard import APIKeyMiddleware, Principal
from apiguard.fastapi import require_scopes
from apiguard.keys import open_store

store = open_store(os.environ.get("APIGUARD_STORE", "sqlite:///apiguard-keys.db"))
ITEMS = ["hammer", "saw", "wrench"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await store.aclose()


app = FastAPI(title="Inventory API", lifespan=lifespan)
app.add_middleware(
    APIKeyMiddleware,
    store=store,
    # The pepper comes from APIGUARD_PEPPER; these paths need no key.
    exclude_paths=["/health", "/docs", "/openapi.json"],
)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items")
async def list_items(request: Request) -> dict[str, object]:
    return {"caller": request.user.display_name, "scopes": request.auth.scopes, "items": ITEMS}


@app.post("/items", status_code=201)
async def add_item(
    name: str,
    caller: Principal = require_scopes("items:write"),  # noqa: B008 - FastAPI dependency
) -> dict[str, str]:
    ITEMS.append(name)
    return {"added": name, "by": caller.identity}
