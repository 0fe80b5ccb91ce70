"""The app each uvicorn worker runs in tests/test_usage_workers.py: a key-guarded route
over the store at `APIGUARD_TEST_STORE`, usage counts written every
`APIGUARD_TEST_FLUSH` seconds, and the store closed at lifespan shutdown.

`/health` (unguarded) answers once the worker serves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware, UsageOptions
from apiguard.keys import open_store

# Usage write failures (WARNING) go to stderr, which the test reads.
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

store = open_store(os.environ["APIGUARD_TEST_STORE"])


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.user.identity)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await store.aclose()


app = Starlette(
    routes=[Route("/", hello), Route("/health", health)],
    middleware=[
        Middleware(
            APIKeyMiddleware,
            store=store,
            usage=UsageOptions(flush_interval=float(os.environ["APIGUARD_TEST_FLUSH"])),
            exclude_paths=["/health"],
        )
    ],
    lifespan=lifespan,
)
