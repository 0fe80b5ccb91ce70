"""The app each uvicorn worker runs in tests/interop/test_token_cache_workers.py: a
bearer-guarded route whose opaque tokens are introspected at the authorization server
at `APIGUARD_TEST_ISSUER`, through the token cache at `APIGUARD_TEST_REDIS`.

`/health` is unguarded, for the test to see that the worker is up.
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

from apiguard import BearerTokenMiddleware
from apiguard.tokens import RedisTokenCache, RemoteIntrospector

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

introspector = RemoteIntrospector.from_issuer(
    os.environ["APIGUARD_TEST_ISSUER"],
    client_id="api:server",
    client_secret="p@ss:w/rd+&= ~%",
    audience="https://api.example/opaque",
)
# The test counts introspections on a loaded machine: refusals are shared for a minute,
# not 2 s (a burst may take longer), and Redis calls and the wait for another worker's
# call are given seconds, not 100 ms and 2 s, so that a slow moment is not taken for an
# outage (outages are the unit tests' business, tests/test_token_cache.py).
token_cache = RedisTokenCache.from_url(
    os.environ["APIGUARD_TEST_REDIS"], negative_ttl=60, timeout=10, lock_ttl=60, lock_wait=60
)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await token_cache.aclose()
    await introspector.aclose()


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.user.identity)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[Route("/", hello), Route("/health", health)],
    middleware=[
        Middleware(
            BearerTokenMiddleware,
            introspector=introspector,
            token_cache=token_cache,
            exclude_paths=["/health"],
        )
    ],
    lifespan=lifespan,
)
