"""Per-request cost of apiguard's observability on the warm path, against the bare app.

    .venv/bin/python -m benchmarks.bench_observability [--requests 20000] [--rounds 7]

Every variant is a Starlette app behind `APIKeyMiddleware` with a memory store and
a cached key (the warm path), driven straight through ASGI with the same request;
rounds are interleaved so that noise on a shared machine hits every variant alike.
Figures are the median of the rounds' per-request times, and ratios are against
the bare Starlette app of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry
from pythonjsonlogger.json import JsonFormatter

from apiguard import APIKeyMiddleware, AuthEvent
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.otel import OpenTelemetryTracing
from apiguard.prometheus import PrometheusMetrics
from apiguard.types import ASGIApp, Message, Scope
from benchmarks.bench_apikey import PEPPER, scope_for, starlette_app

logger = logging.getLogger("apiguard.middleware")


class DropSpans(SpanExporter):
    """Takes every finished span and keeps none: the cost of recording, not of shipping."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def ignore(event: AuthEvent) -> None:
    return None


async def run(app: ASGIApp, scope: Scope, requests: int) -> float:
    """Seconds per request, yielding to the event loop after each (as a server does),
    so that work moved off the request path (the `on_event` hook) runs in the time."""
    statuses: set[int] = set()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    start = time.perf_counter()
    for _ in range(requests):
        await app(dict(scope), receive, send)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    if statuses != {200}:
        raise RuntimeError(f"unexpected statuses {statuses}")
    return elapsed / requests


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    hasher = KeyHasher(PEPPER)
    store = MemoryKeyStore()
    key = (await KeyManager(store, hasher).create("bench")).key
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(DropSpans()))
    tracing = OpenTelemetryTracing(tracer_provider=provider)
    metrics = PrometheusMetrics(registry=CollectorRegistry())
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - open for the whole run
    json_handler = logging.StreamHandler(devnull)
    json_handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))

    def guarded(**options: Any) -> ASGIApp:
        return APIKeyMiddleware(starlette_app(), store=store, hasher=hasher, **options)

    # (name, app, logger level: WARNING = nothing logged, DEBUG = every decision in JSON)
    variants: list[tuple[str, ASGIApp, int]] = [
        ("bare Starlette app", starlette_app(), logging.WARNING),
        ("APIKeyMiddleware, nothing observing", guarded(), logging.WARNING),
        ("+ logger at INFO (refusals only; allowed not logged)", guarded(), logging.INFO),
        ("+ every decision logged as JSON (python-json-logger)", guarded(), logging.DEBUG),
        ("+ on_event async hook (no-op)", guarded(on_event=ignore), logging.WARNING),
        ("+ PrometheusMetrics", guarded(metrics=metrics), logging.WARNING),
        ("+ OpenTelemetryTracing (SDK, spans dropped)", guarded(tracing=tracing), logging.WARNING),
        (
            "+ all of them",
            guarded(on_event=ignore, metrics=metrics, tracing=tracing),
            logging.DEBUG,
        ),
    ]
    logger.propagate = False
    logger.addHandler(json_handler)
    scope: Scope = scope_for(key)

    async def timed(app: ASGIApp, level: int, requests: int) -> float:
        logger.setLevel(level)
        return await run(app, scope, requests)

    for _, app, level in variants:  # warm up: caches, imports, code paths
        await timed(app, level, 2_000)
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(args.rounds):
        for name, app, level in variants:
            times[name].append(await timed(app, level, args.requests))
    devnull.close()
    provider.shutdown()

    bare = statistics.median(times["bare Starlette app"])
    guard = statistics.median(times["APIKeyMiddleware, nothing observing"])
    print(f"{args.rounds} rounds x {args.requests} requests, median µs per request\n")
    print("| variant | µs/request | ratio vs bare | added vs apiguard alone (µs) |")
    print("|---|---:|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"| {name} | {median * 1e6:.2f} | {median / bare:.2f} | {(median - guard) * 1e6:+.2f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
