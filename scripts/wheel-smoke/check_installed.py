"""Checks an installed apiguard-asgi wheel; run from a directory outside the checkout."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import apiguard
from apiguard import APIKeyMiddleware, ConfigurationError
from apiguard.keys import open_store

PEPPER = "smoke-test-pepper-0123456789abcdefghij"


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def main() -> None:
    installed = Path(apiguard.__file__).resolve()
    check(installed.is_relative_to(Path(sys.prefix).resolve()), f"apiguard from {installed}")
    check(metadata.version("apiguard-asgi") == apiguard.__version__, "version matches")
    check(resources.files("apiguard").joinpath("py.typed").is_file(), "py.typed installed")
    try:
        importlib.import_module("apiguard.fastapi")
    except ConfigurationError as exc:
        check("apiguard-asgi[fastapi]" in str(exc), "apiguard.fastapi names its extra")
    else:
        check(False, "FastAPI is not installed without its extra")
    from apiguard.otel import OpenTelemetryTracing
    from apiguard.prometheus import PrometheusMetrics

    for make, extra in ((PrometheusMetrics, "prometheus"), (OpenTelemetryTracing, "otel")):
        try:
            make()
        except ConfigurationError as exc:
            check(f"apiguard-asgi[{extra}]" in str(exc), f"{make.__name__} names its extra")
        else:
            check(False, f"{make.__name__} works without its extra")

    apiguard_cli = Path(sys.executable).parent / "apiguard"
    shown = subprocess.run([apiguard_cli, "--help"], capture_output=True, text=True, check=True)
    check("keys" in shown.stdout, "apiguard --help")

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/keys.db"
        env = {**os.environ, "APIGUARD_PEPPER": PEPPER, "APIGUARD_STORE": url}
        created = subprocess.run(
            [apiguard_cli, "keys", "create", "--name", "smoke", "--scope", "items:read", "--json"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        key = json.loads(created.stdout)["key"]
        check(key.startswith("apg_"), "apiguard keys create")
        asyncio.run(serve_example(url, key))


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": request.user.display_name})


async def serve_example(url: str, key: str) -> None:
    store = open_store(url)
    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(APIKeyMiddleware, store=store, pepper=PEPPER)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://smoke") as client:
            refused = await client.get("/")
            check(refused.status_code == 401, "no key: 401")
            check(refused.headers["www-authenticate"] == 'ApiKey realm="api"', "challenge")
            allowed = await client.get("/", headers={"X-API-Key": key})
            check(allowed.status_code == 200, "the key made by the CLI: 200")
            check(allowed.json() == {"hello": "smoke"}, "request.user is the key's owner")
    finally:
        await store.aclose()


if __name__ == "__main__":
    main()
