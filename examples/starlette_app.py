"""The smallest Starlette app protected by API keys, with keys held in memory.

APIGUARD_PEPPER=... uvicorn examples.starlette_app:app
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware
from apiguard.keys import MemoryKeyStore

store = MemoryKeyStore()


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": request.user.display_name, "scopes": request.auth.scopes})


app = Starlette(
    routes=[Route("/", hello)],
    middleware=[Middleware(APIKeyMiddleware, store=store)],
)
