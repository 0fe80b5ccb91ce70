"""The app each uvicorn worker runs in tests/test_push.py: a key-guarded route over the
store at `APIGUARD_TEST_STORE`, with the cache ttl in `APIGUARD_TEST_TTL` (seconds).

`/channel` (unguarded) says whether the store's invalidation channel is listening.
"""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware, CacheOptions
from apiguard.keys import open_store

# The channel's INFO and WARNING records go to stderr, which the test reads.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

store = open_store(os.environ["APIGUARD_TEST_STORE"])


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.user.identity)


async def channel(request: Request) -> JSONResponse:
    push = getattr(store, "channel", None)
    return JSONResponse({"connected": push is not None and push.connected})


app = Starlette(
    routes=[Route("/", hello), Route("/channel", channel)],
    middleware=[
        Middleware(
            APIKeyMiddleware,
            store=store,
            cache=CacheOptions(ttl=float(os.environ.get("APIGUARD_TEST_TTL", "30"))),
            exclude_paths=["/channel"],
        )
    ],
)
