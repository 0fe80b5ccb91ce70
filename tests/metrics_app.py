"""The app each uvicorn worker runs in tests/test_metrics_multiprocess.py.

A key-guarded route over the store at `APIGUARD_TEST_STORE`, counted in
`PrometheusMetrics`, and `/metrics` (unguarded) serving the counts of every worker
from `PROMETHEUS_MULTIPROC_DIR`, as docs/observability.md shows.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from apiguard import APIKeyMiddleware
from apiguard.keys import open_store
from apiguard.prometheus import PrometheusMetrics


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


async def metrics(request: Request) -> Response:
    # Multiprocess mode: a registry made per scrape, collecting every worker's files.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


app = Starlette(
    routes=[Route("/", hello), Route("/metrics", metrics)],
    middleware=[
        Middleware(
            APIKeyMiddleware,
            store=open_store(os.environ["APIGUARD_TEST_STORE"]),
            exclude_paths=["/metrics"],
            metrics=PrometheusMetrics(),
        )
    ],
)
