"""API keys with rate limits, a monthly quota and a failed-authentication limit.

    uvicorn examples.ratelimit_app:app

Keys live in memory: one is made at startup (limit 5/minute, quota 100/month) and
its curl line printed; the sixth request in a minute gets 429 with Retry-After, and
every response carries the RateLimit fields. With several workers, set
APIGUARD_LIMITS=redis://localhost:6379/0 so that they share one count.
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

from apiguard import APIKeyMiddleware
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.proxies import TrustedProxies
from apiguard.ratelimit import FailedAuthLimit, LimitStorage, Quotas, RateLimits, RouteLimit

store = MemoryKeyStore()
pepper = secrets.token_urlsafe(32)
limits = LimitStorage(os.environ.get("APIGUARD_LIMITS", "memory://"))
# Requests from these proxies are counted by the address they forward for.
proxies = TrustedProxies(["127.0.0.1"])


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    manager = KeyManager(store, KeyHasher(pepper))
    issued = await manager.create("example", rate_limit="5/minute", quota="100/month")
    print(
        "This key allows 5 requests a minute and 100 a month:\n"
        f"  curl -i -H 'X-API-Key: {issued.key}' http://127.0.0.1:8000/",
        flush=True,
    )
    yield
    await limits.aclose()


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": request.user.display_name})


app = Starlette(
    routes=[Route("/", hello), Route("/search", hello)],
    middleware=[
        Middleware(
            APIKeyMiddleware,
            store=store,
            pepper=pepper,
            policies=[
                RateLimits(
                    "100/minute; 5000/day",  # for keys without their own
                    storage=limits,
                    routes=[RouteLimit("/search", "2/minute")],
                ),
                Quotas(storage=limits),
            ],
            failed_auth_limit=FailedAuthLimit("10/minute", storage=limits, proxies=proxies),
        )
    ],
    lifespan=lifespan,
)
