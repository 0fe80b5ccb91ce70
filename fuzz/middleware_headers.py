"""The middleware's header handling: any method, path, query and headers.

The input is read as lines: method, path, query string, then `name: value`
headers. Apart from the excluded paths no request reaches the app (no fuzzed input
holds a valid key or token), every answer is a documented status, and a 500 or a
503 (there is no outage here) is a failure.
"""

from __future__ import annotations

import asyncio
import atexit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from tests.token_support import AUDIENCE, ISSUER, FakeIssuer

from apiguard import APIKeyAuth, AuthMiddleware, BearerAuth
from apiguard.keys import KeyHasher, MemoryKeyStore
from apiguard.tokens import JWTIntrospector
from apiguard.types import Message, Scope

RAN: list[str] = []


async def _handler(request: Request) -> PlainTextResponse:
    RAN.append(request.scope["path"])
    return PlainTextResponse("ok")


APP = AuthMiddleware(
    Starlette(
        routes=[
            Route("/items", _handler, methods=["GET", "POST"]),
            Route("/health", _handler),
            Mount("/public", routes=[Route("/{rest:path}", _handler)]),
        ]
    ),
    authenticators=[
        APIKeyAuth(
            MemoryKeyStore(),
            hasher=KeyHasher("fuzz-pepper-7Rk2Wq9Zt4Lm8Xv3Hc6Nb1Jd5"),
            query_param="key",
        ),
        BearerAuth(
            JWTIntrospector.from_issuer(
                ISSUER, audience=AUDIENCE, http_client=FakeIssuer().client()
            )
        ),
    ],
    exclude_paths=["/health", "/public/*"],
)
DOCUMENTED = {200, 307, 400, 401, 403, 404, 405}
LOOP = asyncio.new_event_loop()
atexit.register(LOOP.close)


def scope_of(data: bytes) -> Scope:
    lines = data.split(b"\n")
    method = lines[0].decode("latin-1") if lines else "GET"
    path = (lines[1] if len(lines) > 1 else b"/").decode("latin-1")
    headers = []
    for line in lines[3:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path if path.startswith("/") else "/" + path,
        "root_path": "",
        "query_string": lines[2] if len(lines) > 2 else b"",
        "headers": headers,
    }


async def _call(scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await APP(scope, receive, send)
    return sent


def _excluded(path: str) -> bool:
    segments = path.split("/")[1:]
    normal = not any(s in (".", "..") for s in segments) and "" not in segments[:-1]
    return normal and (path == "/health" or path.startswith("/public/"))


def test_one_input(data: bytes) -> None:
    scope = scope_of(data)
    RAN.clear()
    sent = LOOP.run_until_complete(_call(scope))
    status = sent[0]["status"]
    assert status in DOCUMENTED, (status, scope)
    for path in RAN:
        assert _excluded(path), scope


if __name__ == "__main__":
    from fuzz._run import fuzz

    fuzz(test_one_input)
