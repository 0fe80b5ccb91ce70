"""Swagger UI, in headless Chromium, against an app guarded by `apiguard.fastapi.install`.

The app runs on a real uvicorn on a loopback port; the token comes from the real
authorization server (oidc-provider), which Swagger UI calls itself. Debian's
chromium is driven by Playwright (its own browser download is never used). Under
`CI=true` a missing browser fails the test. A screenshot of each authorized call
is saved under `$APIGUARD_ARTIFACTS` (default: `artifacts/` in the checkout).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import pytest
import uvicorn
from fastapi import Request

from apiguard import APIKeyAuth, BearerAuth, ScopeRule, ScopeRules
from apiguard.fastapi import install
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.tokens import JWTIntrospector

from ..conftest import PEPPER
from .conftest import API, AuthorizationServer, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

T = TypeVar("T")
CHROMIUM = os.environ.get("APIGUARD_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("APIGUARD_ARTIFACTS", ROOT / "artifacts"))
# The ids Swagger UI gives the operation's block: operations-<tag>-<operationId>.
LIST_ITEMS = "#operations-default-list_items_items_get"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        message = f"Chromium is needed at {CHROMIUM}: run scripts/install-browser"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)  # pragma: no cover - machines without chromium
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


def in_thread(function: Callable[[], Awaitable[T]]) -> T:
    """Run `function` in an event loop of its own: Playwright's runs in this thread."""
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(anyio.run, function).result()


class Served:
    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key


@pytest.fixture(scope="module")
def api(authorization_server: AuthorizationServer) -> Iterator[Served]:
    """The API on uvicorn, with Swagger UI's files served by the app (no CDN)."""
    from fastapi_offline import FastAPIOffline

    store = MemoryKeyStore()
    hasher = KeyHasher(PEPPER)
    issued = in_thread(lambda: KeyManager(store, hasher).create("swagger", scopes=["items:read"]))
    introspector = JWTIntrospector.from_issuer(authorization_server.issuer, audience=f"{API}/rs256")

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        yield
        await introspector.aclose()  # its HTTP client lives in the server's event loop

    app = FastAPIOffline(title="Inventory API", lifespan=lifespan)
    install(
        app,
        APIKeyAuth(store, hasher=hasher),
        BearerAuth(introspector),
        issuer=authorization_server.issuer,  # the token endpoint, from discovery
        # FastAPIOffline serves its own pages and files, which `install` cannot see.
        exclude_paths=["/docs", "/static-offline-docs/*"],
        policies=[ScopeRules([ScopeRule("/items", "items:read", methods=["GET"])])],
    )

    @app.get("/items")
    async def list_items(request: Request) -> dict[str, object]:
        return {"caller": request.user.display_name, "items": ["hammer", "saw"]}

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:  # pragma: no cover - diagnostics
        pytest.fail("uvicorn did not start")
    yield Served(f"http://127.0.0.1:{port}", issued.key)
    server.should_exit = True
    thread.join()


@pytest.fixture
def page(browser: Browser, api: Served) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{api.url}/docs")
    page.locator(LIST_ITEMS).wait_for()
    yield page
    context.close()


def test_the_token_url_comes_from_discovery(authorization_server: AuthorizationServer) -> None:
    """`issuer=`: the token endpoint named by the issuer's metadata (RFC 8414 §2), at startup."""
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    app = FastAPI()
    guard = install(
        app,
        APIKeyAuth(MemoryKeyStore(), hasher=KeyHasher(PEPPER)),
        BearerAuth(JWTIntrospector.from_issuer(authorization_server.issuer, audience=API)),
        issuer=authorization_server.issuer,
    )

    @app.get("/items")
    async def items() -> list[str]:
        return []

    assert guard.token_url is None  # not before the app starts
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    flows = document["components"]["securitySchemes"]["OAuth2"]["flows"]
    assert flows["clientCredentials"]["tokenUrl"] == f"{authorization_server.issuer}/token"
    assert guard.token_url == f"{authorization_server.issuer}/token"


def execute(page: Page) -> str:
    """Try it out, Execute: the status Swagger UI shows for the call."""
    operation = page.locator(LIST_ITEMS)
    if not operation.locator(".opblock-body").is_visible():
        operation.locator(".opblock-summary").click()
    try_out = operation.locator("button.try-out__btn")
    if try_out.inner_text().strip() == "Try it out":
        try_out.click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status")
    status.wait_for()
    return status.inner_text().strip()


def save_screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    shot = tmp_path / f"{name}.png"
    page.locator(LIST_ITEMS).screenshot(path=shot)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    return ARTIFACTS / shot.name


def test_unauthorized_try_it_out_shows_401(page: Page) -> None:
    """The documentation is public; the operation, called without credentials, is refused."""
    assert execute(page) == "401"
    body = page.locator(f"{LIST_ITEMS} .live-responses-table .response-col_description pre")
    assert "error_description" in body.first.inner_text()


def test_authorized_with_an_api_key(page: Page, api: Served, tmp_path: Path) -> None:
    """Authorize with an API key (the `apiKey` scheme): the call succeeds."""
    page.locator("button.authorize").first.click()
    container = page.locator(".auth-container").filter(has_text="X-API-Key")
    container.locator("input").fill(api.key)
    container.locator("button.authorize").click()
    page.locator("button.btn-done").first.click()
    assert execute(page) == "200"
    body = page.locator(f"{LIST_ITEMS} .live-responses-table .response-col_description pre")
    assert '"caller": "swagger"' in body.first.inner_text()
    assert save_screenshot(page, "swagger-api-key", tmp_path).stat().st_size > 0


def test_authorized_with_client_credentials(page: Page, tmp_path: Path) -> None:
    """Swagger UI gets a token from the authorization server (RFC 6749 §4.4); the call succeeds."""
    page.locator("button.authorize").first.click()
    container = page.locator(".auth-container").filter(has_text="clientCredentials")
    container.locator("input[id^=client_id]").fill("swagger-ui")
    container.locator("input[id^=client_secret]").fill("swagger-secret")
    container.locator('label[for^="items:read-"]').click()  # the scope's checkbox
    assert container.locator('input[data-value="items:read"]').is_checked()
    container.locator("button.authorize").click()
    # Authorized: Swagger UI shows the scheme as logged in, with a Logout button.
    container.locator("button.authorize", has_text="Logout").wait_for()
    page.locator("button.btn-done").first.click()
    assert execute(page) == "200"
    body = page.locator(f"{LIST_ITEMS} .live-responses-table .response-col_description pre")
    # The token Swagger UI obtained names its client.
    assert '"caller": "swagger-ui"' in body.first.inner_text()
    assert save_screenshot(page, "swagger-client-credentials", tmp_path).stat().st_size > 0
