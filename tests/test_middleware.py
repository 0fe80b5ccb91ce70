from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from apiguard import (
    ApiGuardError,
    APIKeyMiddleware,
    AuthError,
    BackendUnavailableError,
    CacheOptions,
    ConfigurationError,
)
from apiguard.keys import IssuedKey, KeyHasher, KeyManager, MemoryKeyStore, UsageOptions, format_key
from apiguard.keys.record import KeyRecord
from apiguard.types import ASGIApp, Message, Receive, Scope, Send

from .conftest import MakeClient

pytestmark = pytest.mark.anyio


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "authenticated": user.is_authenticated,
            "name": user.display_name,
            "identity": user.identity,
            "kind": user.kind,
            "scopes": request.auth.scopes,
            "headers": sorted(request.headers.keys()),
            "query": request.url.query,
        }
    )


@requires("items:write")
async def write_items(request: Request) -> PlainTextResponse:
    return PlainTextResponse("written")


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"name": websocket.user.display_name})
    await websocket.close()


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", whoami, methods=["GET", "POST", "OPTIONS"]),
            Route("/health", whoami),
            Route("/public/{rest:path}", whoami),
            Route("/items", write_items, methods=["POST"]),
            WebSocketRoute("/ws", ws_endpoint),
        ]
    )


class FlakyStore(MemoryKeyStore):
    """A memory store whose lookups can fail like an unreachable backend, or a bug."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    async def get(self, key_id: str) -> KeyRecord | None:
        if self.error is not None:
            raise self.error
        return await super().get(key_id)


@pytest.fixture
def key_store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
async def issued(key_store: FlakyStore, hasher: KeyHasher) -> IssuedKey:
    return await KeyManager(key_store, hasher).create("billing", scopes=["items:read"])


@pytest.fixture
def guard(key_store: FlakyStore, hasher: KeyHasher) -> Any:
    def make(app: ASGIApp | None = None, **options: Any) -> APIKeyMiddleware:
        return APIKeyMiddleware(app or make_app(), store=key_store, hasher=hasher, **options)

    return make


@pytest.fixture
async def client(guard: Any, make_client: MakeClient) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(guard()) as client:
        yield client


async def test_valid_key_reaches_the_app_as_principal(
    client: httpx.AsyncClient, issued: IssuedKey
) -> None:
    response = await client.get("/", headers={"X-API-Key": issued.key})
    assert response.status_code == 200
    assert response.json() | {"headers": None} == {
        "authenticated": True,
        "name": "billing",
        "identity": issued.record.key_id,
        "kind": "api_key",
        "scopes": ["items:read"],
        "headers": None,
        "query": "",
    }


async def test_header_name_is_case_insensitive(
    client: httpx.AsyncClient, issued: IssuedKey
) -> None:
    response = await client.get("/", headers={"x-api-KEY": issued.key})
    assert response.status_code == 200


async def test_missing_key_gets_a_bare_challenge(client: httpx.AsyncClient) -> None:
    """No credentials: 401 with a challenge and no error code (RFC 6750 §3.1 shape)."""
    response = await client.get("/")
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == ['ApiKey realm="api"']
    assert response.json() == {"error_description": "Authentication is required."}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"


INVALID_CHALLENGE = (
    'ApiKey realm="api", error="invalid_key", error_description="The API key is invalid."'
)
INVALID_BODY = {"error": "invalid_key", "error_description": "The API key is invalid."}


async def _bad_keys(key_store: FlakyStore, hasher: KeyHasher, issued: IssuedKey) -> dict[str, str]:
    manager = KeyManager(key_store, hasher)
    expired = await manager.create("old", expires_in=timedelta(microseconds=1))
    revoked = await manager.create("gone")
    await manager.revoke(revoked.record.key_id)
    return {
        "malformed": "not-a-key",
        "bad-checksum": issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B"),
        "unknown": format_key("apg", "unknown00000", "x" * 43),
        "wrong-secret": format_key("apg", issued.record.key_id, "x" * 43),
        "expired": expired.key,
        "revoked": revoked.key,
        "empty": "",
    }


async def test_every_bad_key_gets_the_same_refusal(
    client: httpx.AsyncClient, key_store: FlakyStore, hasher: KeyHasher, issued: IssuedKey
) -> None:
    """Malformed, unknown, wrong, expired and revoked keys are indistinguishable to the client."""
    for case, key in (await _bad_keys(key_store, hasher, issued)).items():
        response = await client.get("/", headers={"X-API-Key": key})
        assert response.status_code == 401, case
        assert response.headers.get_list("www-authenticate") == [INVALID_CHALLENGE], case
        assert response.json() == INVALID_BODY, case


async def test_refusals_are_logged_with_reason_and_key_id_never_the_key(
    client: httpx.AsyncClient,
    key_store: FlakyStore,
    hasher: KeyHasher,
    issued: IssuedKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="apiguard")
    bad = await _bad_keys(key_store, hasher, issued)
    for key in bad.values():
        await client.get("/", headers={"X-API-Key": key})
    await client.get("/", headers={"X-API-Key": issued.key})
    text = caplog.text
    assert f"reason=wrong secret id={issued.record.key_id}" in text
    assert "reason=revoked" in text
    assert "reason=expired" in text
    assert "reason=malformed id=-" in text
    assert f"allowed kind=api_key id={issued.record.key_id}" in text
    for key in [issued.key, *bad.values()]:
        if key:
            assert key not in text
    secret = issued.key.split("_")[2]
    assert secret[:8] not in text


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("X-API-Key", "A"), ("X-API-Key", "B")], id="same-header-twice"),
        pytest.param([("X-API-Key", "A"), ("X-Other-Key", "B")], id="two-headers"),
    ],
)
async def test_two_different_keys_are_a_bad_request(
    guard: Any, make_client: MakeClient, headers: list[tuple[str, str]]
) -> None:
    async with make_client(guard(header_names=["X-API-Key", "X-Other-Key"])) as client:
        response = await client.get("/", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


async def test_request_values_cannot_forge_log_records(
    client: httpx.AsyncClient, issued: IssuedKey, caplog: pytest.LogCaptureFixture
) -> None:
    """A path with %0A arrives decoded, as a line feed: logged escaped, on one line."""
    caplog.set_level(logging.DEBUG, logger="apiguard")
    forged = "%0Arefused status=200 reason=forged%0D%0Aok%E2%80%A8ok"
    await client.get(f"/x{forged}")
    await client.get(f"/y{forged}", headers={"X-API-Key": issued.key})
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    for message in messages:
        assert message.isprintable(), message
    assert messages[0].endswith("path=/x\\nrefused status=200 reason=forged\\r\\nok\\u2028ok")
    assert messages[1].startswith(f"allowed kind=api_key id={issued.record.key_id} path=/y\\n")


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        pytest.param([("X-API-Key", "{key}"), ("X-API-Key", "{key}")], [], id="same-header-twice"),
        pytest.param([("X-API-Key", "{key}"), ("X-Other-Key", "{key}")], [], id="two-headers"),
        pytest.param([("X-API-Key", "{key}")], [("api_key", "{key}")], id="header-and-query"),
        pytest.param([], [("api_key", "{key}"), ("api_key", "{key}")], id="query-twice"),
    ],
)
async def test_the_same_key_twice_is_a_bad_request(
    guard: Any,
    make_client: MakeClient,
    issued: IssuedKey,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]],
) -> None:
    """A key is sent once: a repeated one is a 400 too, as for Authorization (RFC 9110 §5.3)."""
    app = guard(header_names=["X-API-Key", "X-Other-Key"], query_param="api_key")
    key = issued.key
    async with make_client(app) as client:
        response = await client.get(
            "/",
            headers=[(name, value.format(key=key)) for name, value in headers],
            params=[(name, value.format(key=key)) for name, value in query],
        )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(BackendUnavailableError("db down"), id="backend-unavailable"),
        pytest.param(RuntimeError("driver bug"), id="unexpected-exception"),
        pytest.param(ConfigurationError("argon2 backend missing"), id="configuration-error"),
    ],
)
async def test_store_failure_fails_closed_with_503(
    client: httpx.AsyncClient, key_store: FlakyStore, issued: IssuedKey, error: BaseException
) -> None:
    """A store outage is 503 with Retry-After: never a 401, never a pass, never a 500."""
    key_store.error = error
    response = await client.get("/", headers={"X-API-Key": issued.key})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "www-authenticate" not in response.headers
    assert response.json() == {
        "error": "temporarily_unavailable",
        "error_description": "The authentication service is temporarily unavailable.",
    }
    assert "db down" not in response.text
    key_store.error = None
    if isinstance(error, BackendUnavailableError):
        await anyio.sleep(1.0)  # past the backoff after an outage (0.5-1 s)
    response = await client.get("/", headers={"X-API-Key": issued.key})
    assert response.status_code == 200


async def test_retry_after_is_configurable(
    guard: Any, make_client: MakeClient, key_store: FlakyStore, issued: IssuedKey
) -> None:
    key_store.error = BackendUnavailableError("down")
    async with make_client(guard(retry_after=30)) as client:
        response = await client.get("/", headers={"X-API-Key": issued.key})
    assert response.headers["retry-after"] == "30"


async def test_starlette_requires_works_unchanged(
    client: httpx.AsyncClient, key_store: FlakyStore, hasher: KeyHasher, issued: IssuedKey
) -> None:
    assert (await client.post("/items", headers={"X-API-Key": issued.key})).status_code == 403
    writer = await KeyManager(key_store, hasher).create("w", scopes=["items:write"])
    response = await client.post("/items", headers={"X-API-Key": writer.key})
    assert response.status_code == 200
    assert response.text == "written"


async def test_custom_header_names(guard: Any, make_client: MakeClient, issued: IssuedKey) -> None:
    async with make_client(guard(header_names=["Api-Token"])) as client:
        assert (await client.get("/", headers={"Api-Token": issued.key})).status_code == 200
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 401


async def test_query_string_keys_are_ignored_by_default(
    client: httpx.AsyncClient, issued: IssuedKey
) -> None:
    response = await client.get("/", params={"api_key": issued.key})
    assert response.status_code == 401
    assert "error" not in response.json()


async def test_query_string_keys_when_enabled_are_never_logged(
    guard: Any, make_client: MakeClient, issued: IssuedKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="apiguard")
    async with make_client(guard(query_param="api_key")) as client:
        response = await client.get("/", params={"api_key": issued.key, "q": "1"})
        assert response.status_code == 200
        conflict = await client.get(
            "/", params={"api_key": issued.key}, headers={"X-API-Key": "other"}
        )
        assert conflict.status_code == 400
        twice = await client.get("/", params=[("api_key", "a"), ("api_key", "b")])
        assert twice.status_code == 400
    assert issued.key not in caplog.text


async def test_hide_credentials_removes_the_key_before_the_app(
    guard: Any, make_client: MakeClient, issued: IssuedKey
) -> None:
    async with make_client(guard(hide_credentials=True, query_param="api_key")) as client:
        by_header = await client.get("/", headers={"X-API-Key": issued.key})
        by_query = await client.get("/", params={"api_key": issued.key, "page": "2"})
    assert by_header.status_code == 200
    assert "x-api-key" not in by_header.json()["headers"]
    assert by_query.json()["query"] == "page=2"


@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("POST", "/")])
async def test_hide_credentials_on_excluded_requests(
    guard: Any, make_client: MakeClient, issued: IssuedKey, method: str, path: str
) -> None:
    """Excluded paths and methods pass without a check, and without the key too."""
    app = guard(
        hide_credentials=True,
        query_param="api_key",
        exclude_paths=["/health"],
        exclude_methods=["POST"],
    )
    async with make_client(app) as client:
        response = await client.request(
            method, path, params={"api_key": issued.key, "page": "2"}, headers={"X-API-Key": "k"}
        )
    assert response.json()["authenticated"] is False
    assert "x-api-key" not in response.json()["headers"]
    assert response.json()["query"] == "page=2"


async def test_hide_credentials_on_preflights(
    key_store: FlakyStore, hasher: KeyHasher, issued: IssuedKey
) -> None:
    inner = CORSMiddleware(make_app(), allow_origins=["https://app.example"])
    guarded = APIKeyMiddleware(
        inner, store=key_store, hasher=hasher, allow_preflight=True, hide_credentials=True
    )
    scope: Scope = {
        "type": "http",
        "method": "OPTIONS",
        "path": "/",
        "root_path": "",
        "headers": [
            (b"origin", b"https://app.example"),
            (b"access-control-request-method", b"GET"),
            (b"x-api-key", issued.key.encode()),
        ],
        "query_string": b"",
    }
    sent = await call_directly(guarded, scope)
    assert sent[0]["status"] == 200
    assert [name for name, _ in scope["headers"]] == [b"origin", b"access-control-request-method"]


async def test_credentials_are_kept_by_default(
    client: httpx.AsyncClient, issued: IssuedKey
) -> None:
    response = await client.get("/", headers={"X-API-Key": issued.key})
    assert "x-api-key" in response.json()["headers"]


@pytest.mark.parametrize(
    ("method", "path", "root_path", "status"),
    [
        ("GET", "/health", "", 200),
        ("GET", "/health/", "", 401),  # exact match only
        ("GET", "/public/a/b", "", 200),  # prefix
        ("GET", "/publicity", "", 401),
        ("GET", "/", "", 401),
        ("POST", "/", "", 200),  # excluded method
        ("GET", "/v1/health", "/v1", 200),  # matched without the root path
    ],
)
async def test_exclusions(
    guard: Any,
    make_client: MakeClient,
    method: str,
    path: str,
    root_path: str,
    status: int,
) -> None:
    app = guard(exclude_paths=["/health", "/public/*"], exclude_methods=["post"])
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.request(method, path)
    assert response.status_code == status


async def test_excluding_get_also_excludes_head(guard: Any, make_client: MakeClient) -> None:
    """RFC 9110 §9.3.2: HEAD is GET without the content; Starlette runs the GET endpoint."""
    async with make_client(guard(exclude_methods=["get"])) as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.head("/")).status_code == 200
        assert (await client.post("/")).status_code == 401


def test_excluding_head_without_get_is_refused_at_startup() -> None:
    """HEAD alone would let HEAD requests run GET handlers without a key."""
    with pytest.raises(ConfigurationError, match="HEAD"):
        APIKeyMiddleware(
            make_app(), store=MemoryKeyStore(), pepper="p" * 32, exclude_methods=["HEAD"]
        )


@pytest.mark.parametrize(
    ("path", "root_path", "status"),
    [
        ("/public/../items", "", 400),  # RFC 3986 §5.2.4 would make it /items
        ("/public/./a", "", 400),
        ("/public/a/..", "", 400),
        ("/public//a", "", 400),  # an empty segment
        ("/items/../public/a", "", 400),  # nor the other way round
        ("/v1/public/../items", "/v1", 400),
        ("/public/...", "", 200),  # not a dot-segment
        ("/public/.hidden/a", "", 200),
        ("/public/a/", "", 200),  # a trailing slash is normal
        ("/.well-known/x", "", 200),
    ],
)
async def test_paths_not_in_normal_form_are_refused_when_exclusions_are_set(
    guard: Any, path: str, root_path: str, status: int
) -> None:
    """The decoded path as servers pass it (`%2E%2E` arrives as `..`): no dot or empty segments."""
    app = guard(PlainTextResponse("ok"), exclude_paths=["/health", "/public/*", "/.well-known/*"])
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": root_path,
        "headers": [],
        "query_string": b"",
    }
    sent = await call_directly(app, scope)
    assert sent[0]["status"] == status
    if status == 400:
        assert json.loads(sent[1]["body"]) == {
            "error": "invalid_request",
            "error_description": "The request path is not in normal form.",
        }


async def test_paths_are_not_checked_without_exclusions_or_rules(guard: Any) -> None:
    """Nothing depends on the path then: a key is required on every path alike."""
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/public/../health",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    assert (await call_directly(guard(exclude_methods=["POST"]), scope))[0]["status"] == 401


async def test_excluded_routes_see_the_anonymous_principal(client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(
            app=APIKeyMiddleware(
                make_app(), store=MemoryKeyStore(), pepper="p" * 32, exclude_paths=["/health"]
            )
        ),
        base_url="http://testserver",
    ) as anonymous_client:
        body = (await anonymous_client.get("/health")).json()
    assert body["authenticated"] is False
    assert body["kind"] == "anonymous"
    assert body["scopes"] == []


PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}


def cors_app(kind: str, ran: list[str]) -> Starlette:
    """An app whose OPTIONS handling is application code: a mounted app or a FastAPI route."""
    if kind == "mount":

        async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
            ran.append(scope["method"])
            await PlainTextResponse("mounted app ran")(scope, receive, send)

        return Starlette(routes=[Mount("/api", app=mounted)])
    app = FastAPI(openapi_url=None)

    @app.options("/api/items")
    async def items_options() -> dict[str, str]:
        ran.append("OPTIONS")
        return {"allow": "GET"}

    return app


def stack(
    app: Starlette, cors: str, key_store: FlakyStore, hasher: KeyHasher, **options: Any
) -> Starlette:
    """`app` with apiguard and, per `cors`, Starlette's CORSMiddleware outside it or inside it."""
    cors_options: dict[str, Any] = {"allow_origins": ["https://app.example"]}
    if cors == "inside":  # added first: innermost
        app.add_middleware(CORSMiddleware, **cors_options)
    app.add_middleware(APIKeyMiddleware, store=key_store, hasher=hasher, **options)
    if cors == "outermost":  # added last: answers preflights before apiguard sees them
        app.add_middleware(CORSMiddleware, **cors_options)
    return app


@pytest.mark.parametrize("kind", ["mount", "fastapi-options-route"])
@pytest.mark.parametrize(
    ("cors", "options", "status"),
    [
        pytest.param("none", {}, 401, id="no-cors"),
        pytest.param("outermost", {}, 200, id="cors-outermost"),
        pytest.param("inside", {}, 401, id="cors-inside"),
        pytest.param("inside", {"allow_preflight": True}, 200, id="cors-inside-allow-preflight"),
    ],
)
async def test_preflights_never_run_the_app_without_a_key(
    make_client: MakeClient,
    key_store: FlakyStore,
    hasher: KeyHasher,
    kind: str,
    cors: str,
    options: dict[str, Any],
    status: int,
) -> None:
    """A CORS preflight without a key is answered by CORSMiddleware or refused, never the app."""
    ran: list[str] = []
    app = stack(cors_app(kind, ran), cors, key_store, hasher, **options)
    async with make_client(app) as client:
        response = await client.options("/api/items", headers=PREFLIGHT)
    assert response.status_code == status
    if status == 200:
        assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert ran == []


def test_allow_preflight_without_cors_inside_is_a_configuration_error() -> None:
    """Passed on to anything but CORSMiddleware, a preflight would run application code."""
    with pytest.raises(ConfigurationError, match="CORSMiddleware"):
        APIKeyMiddleware(make_app(), store=MemoryKeyStore(), pepper="p" * 32, allow_preflight=True)


@pytest.mark.parametrize("cors", ["none", "outermost"])
async def test_allow_preflight_without_cors_inside_stops_a_starlette_app(
    make_client: MakeClient, key_store: FlakyStore, hasher: KeyHasher, cors: str, issued: IssuedKey
) -> None:
    """Built by Starlette at the first call, the misconfigured middleware lets nothing through."""
    ran: list[str] = []
    app = stack(cors_app("mount", ran), cors, key_store, hasher, allow_preflight=True)
    async with make_client(app) as client:
        response = await client.get("/api/items", headers={"X-API-Key": issued.key})
    assert response.status_code == 503
    assert ran == []


async def test_cors_outermost_adds_its_headers_to_refusals(
    make_client: MakeClient, key_store: FlakyStore, hasher: KeyHasher, issued: IssuedKey
) -> None:
    """The recommended order: a browser can read the 401 of a cross-origin request."""
    ran: list[str] = []
    app = stack(cors_app("mount", ran), "outermost", key_store, hasher)
    origin = {"Origin": "https://app.example"}
    async with make_client(app) as client:
        refused = await client.get("/api/items", headers=origin)
        allowed = await client.get("/api/items", headers=origin | {"X-API-Key": issued.key})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.status_code == 200
    assert ran == ["GET"]


async def test_plain_options_requests_need_a_key(client: httpx.AsyncClient) -> None:
    """An OPTIONS request without Access-Control-Request-Method is not a preflight."""
    response = await client.options("/", headers={"Origin": "https://app.example"})
    assert response.status_code == 401


async def test_optional_mode(guard: Any, make_client: MakeClient, issued: IssuedKey) -> None:
    """No key: anonymous principal. A bad key is still refused."""
    async with make_client(guard(optional=True)) as client:
        anonymous = await client.get("/")
        assert anonymous.status_code == 200
        assert anonymous.json()["authenticated"] is False
        assert (await client.get("/", headers={"X-API-Key": "bad"})).status_code == 401
        assert (await client.get("/", headers={"X-API-Key": issued.key})).json()["authenticated"]


async def test_realm_option(guard: Any, make_client: MakeClient) -> None:
    async with make_client(guard(realm="billing")) as client:
        assert (await client.get("/")).headers["www-authenticate"] == 'ApiKey realm="billing"'
    async with make_client(guard(realm=None)) as client:
        assert (await client.get("/")).headers["www-authenticate"] == "ApiKey"
        bad = await client.get("/", headers={"X-API-Key": "bad"})
        assert bad.headers["www-authenticate"].startswith('ApiKey error="invalid_key"')


async def test_problem_details_bodies(
    guard: Any, make_client: MakeClient, key_store: FlakyStore, issued: IssuedKey
) -> None:
    """RFC 9457 §3.1: `status` equals the response status; the error code is an extension."""
    async with make_client(guard(problem_details=True)) as client:
        missing = await client.get("/")
        invalid = await client.get("/", headers={"X-API-Key": "bad"})
        key_store.error = BackendUnavailableError("down")
        unavailable = await client.get("/", headers={"X-API-Key": issued.key})
    assert missing.headers["content-type"] == "application/problem+json"
    assert json.loads(missing.text) == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "Authentication is required.",
    }
    assert json.loads(invalid.text)["error"] == "invalid_key"
    assert json.loads(unavailable.text) == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The authentication service is temporarily unavailable.",
        "error": "temporarily_unavailable",
    }


@pytest.mark.parametrize("is_async", [False, True], ids=["sync-hook", "async-hook"])
async def test_error_response_hook(guard: Any, make_client: MakeClient, is_async: bool) -> None:
    seen: list[ApiGuardError] = []

    def build(connection: HTTPConnection, error: ApiGuardError) -> Response:
        seen.append(error)
        return PlainTextResponse(f"nope: {connection.url.path}", status_code=401)

    async def build_async(connection: HTTPConnection, error: ApiGuardError) -> Response:
        return build(connection, error)

    async with make_client(guard(error_response=build_async if is_async else build)) as client:
        response = await client.get("/x", headers={"X-API-Key": "bad"})
    assert response.text == "nope: /x"
    assert response.headers["www-authenticate"] == INVALID_CHALLENGE
    assert len(seen) == 1
    assert isinstance(seen[0], AuthError)
    assert seen[0].reason == "malformed"


async def test_hook_can_set_its_own_challenge(guard: Any, make_client: MakeClient) -> None:
    def build(connection: HTTPConnection, error: ApiGuardError) -> Response:
        return Response(status_code=401, headers={"WWW-Authenticate": 'ApiKey realm="custom"'})

    async with make_client(guard(error_response=build)) as client:
        response = await client.get("/")
    assert response.headers.get_list("www-authenticate") == ['ApiKey realm="custom"']


async def test_add_middleware_with_a_store_url(make_client: MakeClient) -> None:
    """The one-line setup: a store URL and the pepper from the environment."""
    app = make_app()
    app.add_middleware(APIKeyMiddleware, store="memory://", pepper="p" * 32)
    async with make_client(app) as client:
        assert (await client.get("/")).status_code == 401


@pytest.mark.parametrize(
    "options",
    [
        {"exclude_paths": "/health"},
        {"exclude_paths": ["health"]},
        {"header_names": []},
        {"header_names": "X-API-Key"},
        {"query_param": ""},
        {"retry_after": -1},
        {"pepper": "p" * 32, "hasher": KeyHasher("p" * 32)},
        {"store": "nosuch://"},
    ],
)
def test_bad_options_fail_at_startup(options: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"store": MemoryKeyStore(), "pepper": "p" * 32} | options
    if "hasher" in options:
        kwargs["pepper"] = options["pepper"]
    with pytest.raises(ConfigurationError):
        APIKeyMiddleware(make_app(), **kwargs)


async def test_cache_options_reach_the_verifier(
    key_store: FlakyStore, hasher: KeyHasher, make_client: MakeClient, issued: IssuedKey
) -> None:
    guarded = APIKeyMiddleware(
        make_app(), store=key_store, hasher=hasher, cache=CacheOptions(ttl=3600)
    )
    async with make_client(guarded) as client:
        await client.get("/", headers={"X-API-Key": issued.key})
        key_store.error = BackendUnavailableError("down")
        # Served from the cache while the store is down.
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200


# --- websockets -------------------------------------------------------------


@pytest.fixture
def sync_issued(key_store: FlakyStore, hasher: KeyHasher) -> IssuedKey:
    """A key for tests that run outside an event loop (TestClient starts its own)."""
    import anyio

    return anyio.run(lambda: KeyManager(key_store, hasher).create("billing"))


def test_websocket_with_a_valid_key(guard: Any, sync_issued: IssuedKey) -> None:
    with (
        TestClient(guard()) as client,
        client.websocket_connect("/ws", headers={"X-API-Key": sync_issued.key}) as ws,
    ):
        assert ws.receive_json() == {"name": "billing"}


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("bad", 401)])
def test_websocket_denied_with_http_response(guard: Any, key: str | None, status: int) -> None:
    """With the websocket.http.response extension, the handshake gets a real 401."""
    from starlette.testclient import WebSocketDenialResponse

    headers = {} if key is None else {"X-API-Key": key}
    with (
        TestClient(guard()) as client,
        pytest.raises(WebSocketDenialResponse) as info,
        client.websocket_connect("/ws", headers=headers),
    ):
        pass  # pragma: no cover - the handshake is refused
    assert info.value.status_code == status
    assert info.value.headers["www-authenticate"].startswith("ApiKey")


async def call_directly(app: ASGIApp, scope: Scope) -> list[Message]:
    """Drive the middleware at the ASGI level; receive() must never be needed."""
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the middleware must not read the request")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def ws_scope(headers: list[tuple[bytes, bytes]], extensions: dict[str, Any]) -> Scope:
    return {
        "type": "websocket",
        "path": "/ws",
        "root_path": "",
        "headers": headers,
        "query_string": b"",
        "extensions": extensions,
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [(None, 1008), (BackendUnavailableError("down"), 1013)],
    ids=["refused", "store-down"],
)
async def test_websocket_closed_before_accept_without_the_extension(
    guard: Any, key_store: FlakyStore, issued: IssuedKey, error: BaseException | None, code: int
) -> None:
    """Without the denial extension: close before accept (servers answer the handshake 403)."""
    key_store.error = error
    headers = [] if error is None else [(b"x-api-key", issued.key.encode())]
    sent = await call_directly(guard(), ws_scope(headers, {}))
    assert sent == [{"type": "websocket.close", "code": code, "reason": ""}]


async def test_websocket_denial_response_at_the_asgi_level(guard: Any) -> None:
    sent = await call_directly(guard(), ws_scope([], {"websocket.http.response": {}}))
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 401


# --- protocol-level guarantees ---------------------------------------------


async def test_lifespan_passes_through_untouched(guard: Any) -> None:
    """The app gets the lifespan scope, `send` and every message as they are (API keys
    read `receive` only to flush usage counts at `lifespan.shutdown`)."""
    seen: list[tuple[Scope, Send, Message]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, send, await receive()))

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    startup = {"type": "lifespan.startup"}

    async def receive() -> Message:
        return startup

    async def send(message: Message) -> None:
        pass

    await guard(app)(scope, receive, send)
    assert seen == [(scope, send, startup)]
    assert seen[0][2] is startup
    assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}}


async def test_app_gets_the_original_receive_and_send(guard: Any, issued: IssuedKey) -> None:
    """The middleware never wraps receive/send and never reads the body."""
    seen: list[tuple[Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((receive, send))

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "root_path": "",
        "headers": [(b"x-api-key", issued.key.encode())],
        "query_string": b"",
    }

    async def receive() -> Message:
        raise AssertionError("body read")

    async def send(message: Message) -> None:
        raise AssertionError("unexpected send")

    await guard(app)(scope, receive, send)
    assert seen == [(receive, send)]
    assert scope["user"].key_id == issued.record.key_id


async def test_refusal_never_reads_the_body(guard: Any) -> None:
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    sent = await call_directly(guard(), scope)
    assert sent[0]["status"] == 401


async def test_no_per_request_state_on_the_middleware(
    guard: Any, make_client: MakeClient, issued: IssuedKey
) -> None:
    middleware = guard()
    before = dict(vars(middleware))
    async with make_client(middleware) as client:
        await client.get("/", headers={"X-API-Key": issued.key})
        await client.get("/", headers={"X-API-Key": "bad"})
        await client.get("/")
    after = vars(middleware)
    assert after.keys() == before.keys()
    assert all(after[name] is value for name, value in before.items())


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_works_under_trio(guard: Any, make_client: MakeClient, issued: IssuedKey) -> None:
    async with make_client(guard()) as client:
        assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
        assert (await client.get("/")).status_code == 401


async def test_a_write_lock_on_the_store_does_not_delay_the_answer(
    tmp_path: Any, hasher: KeyHasher
) -> None:
    """Bookkeeping (usage counts, the key's last use) is written after the response is
    sent: another process holding SQLite's write lock does not hold up the answer."""
    import sqlite3
    import time

    from apiguard.keys import open_store

    store = open_store(f"sqlite:///{tmp_path}/keys.db")
    try:
        issued = await KeyManager(store, hasher).create("a")
        app = APIKeyMiddleware(
            Starlette(routes=[Route("/", whoami)]),
            store=store,
            hasher=hasher,
            usage=UsageOptions(flush_interval=0.001),  # due at the first request
        )
        await anyio.sleep(0.002)  # the first write is due at the first request
        locker = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # a writer elsewhere, e.g. the CLI
        scope: Scope = {
            "type": "http",
            "method": "GET",
            "path": "/",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"x-api-key", issued.key.encode())],
        }
        started = time.monotonic()
        answered: list[tuple[int, float]] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append((message["status"], time.monotonic() - started))
            elif not message.get("more_body"):
                locker.execute("COMMIT")  # the writer lets go once the answer is out

        await app(scope, receive, send)
        locker.close()
        [(status, took)] = answered
        assert status == 200
        assert took < 2  # SQLite's busy timeout is 10 s
        record = await store.get(issued.record.key_id)
        assert record is not None
        assert record.last_used_at is not None  # written, after the answer
    finally:
        await store.aclose()
