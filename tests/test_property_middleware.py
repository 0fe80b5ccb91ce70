"""The whole middleware as a property: any request, valid credentials mixed in.

For every request drawn (method, path, headers with random `Authorization` and
`X-API-Key` values, the valid key and token among them, whole or with one character
changed), the app runs only with a valid credential, on an excluded route, or not
at all for a CORS preflight (answered by `CORSMiddleware`, no handler); the status
is one the docs list; never a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from apiguard import APIKeyAuth, AuthMiddleware, BearerAuth
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.tokens import JWTIntrospector
from apiguard.types import Message, Scope

from .conftest import PEPPER
from .token_support import AUDIENCE, ISSUER, FakeIssuer, mint

# The middleware's refusals (README "Responses"); the router's own (404, 405, and 307 to
# add or drop a trailing slash) and CORSMiddleware's (200, 400 for a preflight).
DOCUMENTED = {200, 307, 400, 401, 403, 404, 405}
EXCLUDED = ("/health", "/public/")


@dataclass
class Site:
    app: AuthMiddleware
    key: str
    token: str
    ran: list[tuple[str, bool]] = field(default_factory=list)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    ran: list[tuple[str, bool]] = []

    async def handler(request: Request) -> PlainTextResponse:
        ran.append((request.url.path, request.user.is_authenticated))
        return PlainTextResponse("ok")

    routes = [
        Route("/items", handler, methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
        Route("/health", handler),
        Mount("/public", routes=[Route("/{rest:path}", handler)]),
    ]
    store = MemoryKeyStore()
    key = anyio.run(_create_key, store)
    idp = FakeIssuer()
    http = idp.client()
    introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
    app = AuthMiddleware(
        CORSMiddleware(
            Starlette(routes=routes),
            allow_origins=["https://app.example"],
            allow_methods=["GET"],
        ),
        authenticators=[
            APIKeyAuth(store, hasher=KeyHasher(PEPPER), query_param="api_key"),
            BearerAuth(introspector),
        ],
        exclude_paths=["/health", "/public/*"],
        allow_preflight=True,
    )
    yield Site(app, key, mint(), ran)
    anyio.run(http.aclose)


async def _create_key(store: MemoryKeyStore) -> str:
    created = await KeyManager(store, KeyHasher(PEPPER)).create("property", scopes={"items:read"})
    return created.key


def _mangle(value: str) -> st.SearchStrategy[str]:
    """`value`, or it with one character changed."""
    return st.integers(0, len(value) - 1).flatmap(
        lambda i: st.characters(codec="latin-1").map(lambda c: value[:i] + c + value[i + 1 :])
    )


def credentials(site: Site) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(site.key),
        _mangle(site.key),
        st.just(site.token),
        _mangle(site.token),
        st.text(st.characters(codec="latin-1"), max_size=40),
    )


def header_lists(site: Site) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    value = credentials(site)
    bearer = st.tuples(
        st.sampled_from(["Bearer ", "bearer  ", "BEARER ", "Basic ", "", "Bearer"]), value
    ).map(lambda parts: parts[0] + parts[1])
    one = st.one_of(
        st.tuples(st.just(b"authorization"), bearer.map(lambda v: v.encode("latin-1"))),
        st.tuples(st.just(b"x-api-key"), value.map(lambda v: v.encode("latin-1"))),
        st.tuples(st.just(b"origin"), st.sampled_from([b"https://app.example", b"null"])),
        st.tuples(st.just(b"access-control-request-method"), st.sampled_from([b"GET", b"PUT"])),
        st.tuples(st.sampled_from([b"x-other", b"cookie"]), st.binary(max_size=20)),
    )
    return st.lists(one, max_size=4)


paths = st.lists(
    st.sampled_from(["items", "health", "public", "x", ".", "..", "", "%2e%2e", "private"]),
    min_size=1,
    max_size=4,
).map(lambda segments: "/" + "/".join(segments))
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])


async def _call(app: AuthMiddleware, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _carries_valid(site: Site, headers: list[tuple[bytes, bytes]], query: bytes) -> bool:
    key, token = site.key.encode(), site.token.encode()
    return (
        any(name == b"x-api-key" and value == key for name, value in headers)
        or any(name == b"authorization" and value.endswith(b" " + token) for name, value in headers)
        or key in query
    )


def _normal(path: str) -> bool:
    segments = path.split("/")[1:]
    return not any(s in (".", "..") for s in segments) and "" not in segments[:-1]


@settings(max_examples=1000)
@given(st.data())
def test_any_request_runs_the_app_only_when_it_may(site: Site, data: st.DataObject) -> None:
    headers = data.draw(header_lists(site), label="headers")
    method = data.draw(methods, label="method")
    path = data.draw(paths, label="path")
    query = data.draw(
        st.sampled_from([b"", b"api_key=" + site.key.encode(), b"api_key=%E2%82%AC", b"a=1"]),
        label="query",
    )
    scope: Scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "server": ("testserver", 80),
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
    }
    site.ran.clear()
    sent = anyio.run(_call, site.app, scope)
    status = int(sent[0]["status"])
    assert status in DOCUMENTED, (status, scope)
    event(f"status {status}, app ran: {bool(site.ran)}")  # pytest --hypothesis-show-statistics
    for ran_path, authenticated in site.ran:
        excluded = _normal(ran_path) and ran_path.startswith(EXCLUDED)
        assert excluded or (authenticated and _carries_valid(site, headers, query)), scope
    names = {name for name, _ in headers}
    if method == "OPTIONS" and {b"origin", b"access-control-request-method"} <= names:
        assert not site.ran  # a preflight: answered by CORSMiddleware, no handler
    refused = status in (400, 401, 403)
    if refused:
        assert not site.ran
    if status == 401:
        assert any(name == b"www-authenticate" for name, _ in sent[0]["headers"])


@settings(max_examples=200)
@given(st.sampled_from(["GET", "POST"]), st.sampled_from(["key", "token", "query"]))
def test_a_valid_credential_alone_reaches_the_app(site: Site, method: str, which: str) -> None:
    """The converse: the property above is not met by refusing everything."""
    headers: list[tuple[bytes, bytes]] = []
    query = b""
    if which == "key":
        headers = [(b"x-api-key", site.key.encode())]
    elif which == "token":
        headers = [(b"authorization", b"Bearer " + site.token.encode())]
    else:
        query = b"api_key=" + site.key.encode()
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": "/items",
        "root_path": "",
        "query_string": query,
        "headers": headers,
    }
    site.ran.clear()
    sent = anyio.run(_call, site.app, scope)
    assert sent[0]["status"] == 200
    assert site.ran == [("/items", True)]
