"""The app each uvicorn worker runs in tests/test_ratelimit_workers.py: a key-guarded
route limited by `RateLimits(APIGUARD_TEST_LIMIT)` with counters in the Redis at
`APIGUARD_TEST_LIMITS`; keys in the store at `APIGUARD_TEST_STORE`."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware
from apiguard.ratelimit import RateLimits


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.user.identity)


async def ready(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[Route("/", hello), Route("/ready", ready)],
    middleware=[
        Middleware(
            APIKeyMiddleware,
            store=os.environ["APIGUARD_TEST_STORE"],
            exclude_paths=["/ready"],
            policies=[
                RateLimits(
                    os.environ["APIGUARD_TEST_LIMIT"], storage=os.environ["APIGUARD_TEST_LIMITS"]
                )
            ],
        )
    ],
)
