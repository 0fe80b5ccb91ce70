"""An API that accepts OAuth 2.0 access tokens from your identity provider, or API keys.

`bash scripts/demo-bearer` runs it against the bundled authorization server
(oidc-provider) and prints the curl lines to get a token and call it. By hand:

    export OAUTH_ISSUER=https://idp.example          # your provider's issuer identifier
    export OAUTH_AUDIENCE=https://api.example        # this API's identifier (resource)
    export APIGUARD_PEPPER=...                        # for the API keys
    uvicorn examples.bearer_app:app

Reading needs `items:read`, writing `items:write`, from either kind of credential.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from apiguard import APIKeyAuth, AuthMiddleware, BearerAuth, Principal
from apiguard.fastapi import require_scopes
from apiguard.keys import open_store
from apiguard.tokens import JWTIntrospector

missing = [name for name in ("OAUTH_ISSUER", "OAUTH_AUDIENCE") if not os.environ.get(name)]
if missing:  # the example's own settings, not apiguard's: say which, without a traceback
    raise SystemExit(
        f"examples.bearer_app needs {' and '.join(missing)}: see the top of"
        " examples/bearer_app.py, or run `bash scripts/demo-bearer`"
    )
introspector = JWTIntrospector.from_issuer(
    os.environ["OAUTH_ISSUER"],
    audience=os.environ["OAUTH_AUDIENCE"],
    # Many providers put client permissions in a roles claim.
    scope_claims=["scope", "scp", "roles"],
)
store = open_store(os.environ.get("APIGUARD_STORE", "sqlite:///apiguard-keys.db"))
ITEMS = ["hammer", "saw"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await introspector.aclose()
    await store.aclose()


app = FastAPI(title="Inventory API", lifespan=lifespan)
app.add_middleware(
    AuthMiddleware,
    authenticators=[APIKeyAuth(store), BearerAuth(introspector)],
    exclude_paths=["/health", "/docs", "/openapi.json"],
)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items", dependencies=[require_scopes("items:read")])
async def list_items() -> list[str]:
    return ITEMS


@app.post("/items", status_code=201)
async def add_item(
    name: str,
    caller: Principal = require_scopes("items:write"),  # noqa: B008 - FastAPI dependency
) -> dict[str, str]:
    ITEMS.append(name)
    return {"added": name, "by": caller.client_id or caller.name, "with": caller.kind}
