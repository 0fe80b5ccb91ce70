"""A misconfigured middleware stops the server at startup; without a lifespan, 503s."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient, WebSocketDenialResponse

from apiguard import APIKeyMiddleware, AuthMiddleware, BearerTokenMiddleware, ConfigurationError
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store
from apiguard.types import Message, Receive, Scope, Send

from .conftest import PEPPER, MakeClient
from .test_bearer_middleware import CountingIntrospector

# The README's app, with the middleware line (and imports) a case replaces.
APP = """\
from fastapi import FastAPI, Request
from apiguard import APIKeyAuth, APIKeyMiddleware, AuthMiddleware

app = FastAPI()
{middleware}


@app.get("/items")
async def items(request: Request):
    return {{"caller": request.user.display_name}}
"""
README_LINE = (
    'app.add_middleware(APIKeyMiddleware, store="sqlite:///keys.db", exclude_paths=["/health"])'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def uvicorn_command(port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), *options]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP.format(middleware=README_LINE))
    return tmp_path


def server_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIGUARD_")}
    return env | changes


@pytest.mark.parametrize(
    ("middleware", "env", "message"),
    [
        pytest.param(README_LINE, {}, "set APIGUARD_PEPPER", id="no-pepper"),
        pytest.param(
            README_LINE, {"APIGUARD_PEPPER": "short"}, "at least 32 bytes", id="short-pepper"
        ),
        pytest.param(
            'app.add_middleware(APIKeyMiddleware, store="mysql://db/keys")',
            {"APIGUARD_PEPPER": PEPPER},
            "unknown key store URL scheme",
            id="unknown-store-scheme",
        ),
        pytest.param(
            'app.add_middleware(APIKeyMiddleware, store="memory://", exclude_path=["/x"])',
            {"APIGUARD_PEPPER": PEPPER},
            "unexpected keyword argument 'exclude_path'",
            id="misspelt-option",
        ),
        pytest.param(
            'app.add_middleware(APIKeyMiddleware, store="memory://", exclude_methods=["HEAD"])',
            {"APIGUARD_PEPPER": PEPPER},
            "exclude_methods has HEAD without GET",
            id="bad-option",
        ),
        pytest.param(
            'app.add_middleware(AuthMiddleware, authenticators=[APIKeyAuth("memory://")])',
            {},
            "set APIGUARD_PEPPER",
            id="authenticator-made-at-import",
        ),
    ],
)
def test_uvicorn_refuses_to_start(
    app_dir: Path, middleware: str, env: dict[str, str], message: str
) -> None:
    """Under uvicorn's defaults (lifespan "auto") the server exits, printing the problem."""
    (app_dir / "app.py").write_text(APP.format(middleware=middleware))
    result = subprocess.run(  # noqa: S603
        uvicorn_command(free_port()),
        cwd=app_dir,
        env=server_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Application startup complete" not in result.stderr
    assert "lifespan' protocol appears unsupported" not in result.stderr


def test_without_a_lifespan_every_request_is_a_503_and_one_error_line(app_dir: Path) -> None:
    """`--lifespan off`: no 500, no pass; the problem is logged once, not per request."""
    port = free_port()
    server = subprocess.Popen(  # noqa: S603
        uvicorn_command(port, "--lifespan", "off"),
        cwd=app_dir,
        env=server_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        responses = [get_when_up(f"http://127.0.0.1:{port}/items") for _ in range(3)]
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    for response in responses:
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["retry-after"] == "5"
    problem = [line for line in stderr.splitlines() if "APIGUARD_PEPPER" in line]
    assert len(problem) == 1, stderr
    assert "APIKeyMiddleware is misconfigured" in problem[0]


def get_when_up(url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.get(url)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.user.display_name)


def starlette_app(**options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(APIKeyMiddleware, **options)
    return app


def test_a_test_client_raises_the_error_at_startup() -> None:
    """The lifespan fails with the message and re-raises the error, as Starlette's own does."""
    app = starlette_app(store="nosuch://")
    with pytest.raises(ConfigurationError, match="unknown key store URL scheme"), TestClient(app):
        pass  # pragma: no cover - startup fails


@pytest.mark.anyio
async def test_the_lifespan_startup_fails_with_the_message() -> None:
    """The ASGI messages: `lifespan.startup.failed` with the message, then the error."""
    inbox: list[Message] = [{"type": "lifespan.startup"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    app = starlette_app(store="memory://", pepper="short")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        await app({"type": "lifespan", "state": {}}, receive, send)
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "apiguard: APIKeyMiddleware is misconfigured: "
            "the pepper must be at least 32 bytes long",
        }
    ]


@pytest.mark.anyio
async def test_without_a_lifespan_requests_get_503(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """In process too: 503 with the usual refusal headers, one ERROR record."""
    app = starlette_app(store="memory://", pepper="short")
    async with make_client(app) as client:
        statuses = [(await client.get("/")).status_code for _ in range(3)]
    assert statuses == [503, 503, 503]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["apiguard.middleware"]
    assert "at least 32 bytes" in errors[0].getMessage()


def test_a_websocket_is_refused_before_accept() -> None:
    app = starlette_app(store="memory://", pepper="short")
    client = TestClient(app)  # no lifespan
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect("/"):
        pass  # pragma: no cover - refused
    assert info.value.status_code == 503


def test_a_missing_extra_stops_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SQLAlchemy, a sqlite:// store names the extra to install at startup."""
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.delitem(sys.modules, "apiguard.keys.sql", raising=False)
    app = FastAPI()
    app.add_middleware(APIKeyMiddleware, store="sqlite:///keys.db", pepper=PEPPER)
    with pytest.raises(ConfigurationError, match=r"apiguard-asgi\[sqlite\]"), TestClient(app):
        pass  # pragma: no cover - startup fails


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_made_inside_an_event_loop_the_error_is_held(anyio_backend: str) -> None:
    """Inside a running loop (a lazy stack builder) the error waits for the first call."""
    for middleware in (
        AuthMiddleware(hello, authenticators=[]),  # type: ignore[arg-type]
        APIKeyMiddleware(hello, store="nosuch://", pepper=PEPPER),  # type: ignore[arg-type]
        BearerTokenMiddleware(hello, introspector=CountingIntrospector(), retry_after=-1),  # type: ignore[arg-type]
    ):
        assert middleware._setup_failure is not None


def test_made_outside_an_event_loop_the_error_is_raised() -> None:
    with pytest.raises(ConfigurationError, match="authenticator"):
        AuthMiddleware(hello, authenticators=[])  # type: ignore[arg-type]


def test_an_unreachable_store_is_not_a_configuration_error(tmp_path: Path) -> None:
    """The app starts; requests get 503 while the store is out of reach, then 200."""
    url = f"sqlite:///{tmp_path}/not-yet/keys.db"
    manager = KeyManager(MemoryKeyStore(), KeyHasher(PEPPER))
    issued = anyio.run(lambda: manager.create("late", scopes=["a"]))
    headers = {"X-API-Key": issued.key}
    store = open_store(url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with store:  # type: ignore[attr-defined]
            yield

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    app.add_middleware(APIKeyMiddleware, store=store, pepper=PEPPER)
    with TestClient(app) as client:
        assert client.get("/", headers=headers).status_code == 503
        (tmp_path / "not-yet").mkdir()

        async def add() -> None:
            async with open_store(url) as other:  # type: ignore[attr-defined]
                await other.add(issued.record)

        anyio.run(add)
        time.sleep(1.0)  # past the backoff after the failed lookup (0.5-1 s)
        assert client.get("/", headers=headers).text == "late"


@pytest.mark.anyio
async def test_other_scope_types_still_reach_the_app() -> None:
    """Only lifespan, http and websocket are answered for the app; the rest pass through."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = APIKeyMiddleware(app, store="memory://", pepper="short")
    await middleware({"type": "custom"}, None, None)  # type: ignore[arg-type]
    assert seen == ["custom"]


def test_a_misspelt_option_is_named() -> None:
    """Not a ConfigurationError, but still a setup failure: its type and message are shown."""
    app = starlette_app(store="memory://", pepper=PEPPER, exclude_path=["/x"])
    with pytest.raises(TypeError, match="exclude_path"), TestClient(app):
        pass  # pragma: no cover - startup fails
    middleware = app.middleware_stack
    while not isinstance(middleware, APIKeyMiddleware):
        middleware = middleware.app  # type: ignore[union-attr]
    assert middleware._setup_failure is not None
    assert middleware._setup_failure.message.startswith(
        "apiguard: APIKeyMiddleware could not be set up: TypeError: "
    )
