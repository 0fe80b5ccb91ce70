"""A loopback authorization server whose every endpoint can be made to misbehave.

Starlette, served for real by uvicorn (`tests.server_support.serve`): discovery
(RFC 8414 and OpenID Connect), a JWKS and an RFC 7662 introspection endpoint. Each
endpoint answers well (`"ok"`) or with one fault of `FAULTS`, counts the requests
it gets, and can be healed while the server runs. Handlers that hang wait on
`release`, so that the server stops at once when the test ends.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .server_support import serve
from .token_support import AUDIENCE, EC_KEY, RSA_KEY, public_jwk

# Faults every endpoint can show; introspection has three more of its own.
FAULTS = (
    "http_500",  # an error status
    "hang",  # accepts the request, never answers
    "trickle",  # a valid answer, one byte a second
    "garbage",  # 200 with bytes that are not JSON
    "html",  # 200 with an HTML error page
    "not_object",  # 200 with JSON that is not an object
    "huge",  # 200 with 2 MiB of JSON
    "gzip_bomb",  # 200, Content-Encoding gzip: 16 KiB that expand to 16 MiB
    "redirect",  # 302 to a URL that would answer well
)
INTROSPECTION_FAULTS = (
    "active_string",  # {"active": "true"}: not the boolean RFC 7662 §2.2 requires
    "token_400",  # 400 invalid_request: the server refuses the token (RFC 7662 §2.3)
    "client_401",  # 401: the server refuses this API's own credentials (RFC 7662 §2.3)
)
_GZIP_BOMB = gzip.compress(b" " * (16 * 1024 * 1024), compresslevel=9)
_HUGE = json.dumps({"keys": [], "padding": "x" * (2 * 1024 * 1024)}).encode()


@dataclass
class FaultyServer:
    """The server's state: one mode per endpoint, the requests each got, the tokens."""

    modes: dict[str, str] = field(
        default_factory=lambda: {"discovery": "ok", "jwks": "ok", "introspect": "ok"}
    )
    calls: Counter[str] = field(default_factory=Counter)
    asked: Counter[str] = field(default_factory=Counter)  # introspections, by token
    active: dict[str, dict[str, Any]] = field(default_factory=dict)
    issuer: str = ""
    _stopping: bool = False

    def heal(self) -> None:
        for endpoint in self.modes:
            self.modes[endpoint] = "ok"

    async def _wait_released(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            while not self._stopping:  # noqa: ASYNC110 - set from another thread
                await anyio.sleep(0.02)

    async def _answer(self, endpoint: str, body: dict[str, Any]) -> Response:
        self.calls[endpoint] += 1
        mode = self.modes[endpoint]
        if mode == "ok":
            return JSONResponse(body)
        if mode == "http_500":
            return JSONResponse({"error": "server_error"}, status_code=500)
        if mode == "hang":
            await self._wait_released(60)
            return JSONResponse(body)
        if mode == "trickle":
            return StreamingResponse(
                self._trickle(json.dumps(body).encode()), media_type="application/json"
            )
        if mode == "garbage":
            return Response(b"\x00\xff\xfe{garbage", media_type="application/json")
        if mode == "html":
            return Response(b"<html><body>502 Bad Gateway</body></html>", media_type="text/html")
        if mode == "not_object":
            return JSONResponse([body])
        if mode == "huge":
            return Response(_HUGE, media_type="application/json")
        if mode == "gzip_bomb":
            return Response(
                _GZIP_BOMB, media_type="application/json", headers={"Content-Encoding": "gzip"}
            )
        if mode == "redirect":
            return RedirectResponse(f"/moved/{endpoint}", status_code=302)
        if mode == "active_string":
            return JSONResponse({**body, "active": "true"})
        if mode == "token_400":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if mode == "client_401":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        raise AssertionError(mode)  # pragma: no cover - a typo in a test

    async def _trickle(self, body: bytes) -> AsyncIterator[bytes]:
        for n in range(len(body)):
            yield body[n : n + 1]
            await self._wait_released(1.0)
            if self._stopping:
                return

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "introspection_endpoint": f"{self.issuer}/introspect",
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]}

    def app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            return await self._answer("discovery", self.metadata())

        async def jwks(request: Request) -> Response:
            return await self._answer("jwks", self.jwks())

        async def introspect(request: Request) -> Response:
            token = parse_qs((await request.body()).decode()).get("token", [""])[0]
            self.asked[token] += 1
            answer = self.active.get(token, {"active": False})
            return await self._answer("introspect", answer)

        async def moved(request: Request) -> Response:
            # What a client that followed a redirect would get: a good answer.
            endpoint = request.path_params["endpoint"]
            if endpoint == "introspect":
                return JSONResponse({"active": True, "sub": "redirected", "aud": AUDIENCE})
            return JSONResponse(self.jwks() if endpoint == "jwks" else self.metadata())

        return Starlette(
            routes=[
                Route("/.well-known/oauth-authorization-server", discovery),
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/introspect", introspect, methods=["POST"]),
                Route("/moved/{endpoint}", moved, methods=["GET", "POST"]),
            ]
        )


@contextmanager
def faulty_server(port: int = 0, state: FaultyServer | None = None) -> Iterator[FaultyServer]:
    """Serve a `FaultyServer` (`state`, or a new one) on loopback, on `port` or any.

    Its `issuer` is its own base URL.
    """
    state = state or FaultyServer()
    state._stopping = False
    with serve(state.app(), port=port) as port:
        state.issuer = f"http://127.0.0.1:{port}"
        try:
            yield state
        finally:
            state._stopping = True  # hung handlers and trickles end now
