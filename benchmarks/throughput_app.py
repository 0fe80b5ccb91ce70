"""The app each uvicorn worker serves in bench_throughput: hello world, bare or guarded.

`BENCH_VARIANT` is `bare` (no middleware) or `apikey` (`APIKeyMiddleware` over the
store at `BENCH_STORE`, pepper from `APIGUARD_PEPPER`).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


middleware = []
if os.environ["BENCH_VARIANT"] == "apikey":
    middleware.append(Middleware(APIKeyMiddleware, store=os.environ["BENCH_STORE"]))

app = Starlette(routes=[Route("/", hello)], middleware=middleware)
