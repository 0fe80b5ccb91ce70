"""Refusals: status, `WWW-Authenticate` challenges (RFC 6750 §3) and bodies.

One builder serves every scheme (`ApiKey`, `Bearer`, `DPoP`), so each
refusal is shaped the same way whatever credential was tried.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocketClose

from apiguard.exceptions import ApiGuardError, AuthError, InsufficientScope, RateLimitExceeded
from apiguard.types import Receive, Scope, Send

__all__ = ["ErrorResponder", "ErrorResponseHook", "build_challenge"]

ErrorResponseHook = Callable[[HTTPConnection, ApiGuardError], "Response | Awaitable[Response]"]

# RFC 6750 §3: error and error_description use %x20-21 / %x23-5B / %x5D-7E.
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
UNAVAILABLE_ERROR = "temporarily_unavailable"
UNAVAILABLE_DESCRIPTION = "The authentication service is temporarily unavailable."
# RFC 6455 §7.4.1 / IANA: 1008 policy violation; 1013 try again later.
_WS_POLICY_VIOLATION = 1008
_WS_TRY_AGAIN_LATER = 1013


def _quote(value: str) -> str:
    return '"' + _UNSAFE.sub("", value) + '"'


def build_challenge(
    scheme: str,
    realm: str | None,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: Sequence[str] = (),
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    """One `WWW-Authenticate` challenge, e.g. `Bearer realm="api", error="invalid_token"`.

    Values are quoted and stripped of characters RFC 6750 §3 does not allow.
    """
    params: list[tuple[str, str]] = []
    if realm is not None:
        params.append(("realm", realm))
    if scope:
        params.append(("scope", " ".join(scope)))
    if error is not None:
        params.append(("error", error))
        if description:
            params.append(("error_description", description))
    params.extend(extra)
    if not params:  # RFC 9110 §11.6.1: a challenge may be the bare scheme
        return scheme
    return scheme + " " + ", ".join(f"{name}={_quote(value)}" for name, value in params)


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    error: str | None
    description: str
    headers: list[tuple[str, str]]


class ErrorResponder:
    """Turns an error into the response (or websocket denial) the client gets.

    Args:
        schemes: The challenge schemes offered when no credentials were sent, in
            order, each with the parameters every challenge of it carries.
        realm: The `realm` parameter of every challenge, or `None` to leave it out.
        problem_details: Send `application/problem+json` (RFC 9457) bodies instead
            of the default `{"error": ..., "error_description": ...}` JSON.
        retry_after: Seconds sent in `Retry-After` with a 503.
        hook: Builds the response instead; the challenge and `Retry-After` headers
            are added to what it returns unless it sets them itself.
    """

    def __init__(
        self,
        *,
        schemes: Sequence[tuple[str, Sequence[tuple[str, str]]]],
        realm: str | None,
        problem_details: bool = False,
        retry_after: int = 5,
        hook: ErrorResponseHook | None = None,
    ) -> None:
        self._params = {scheme: tuple(params) for scheme, params in schemes}
        self._realm = realm
        self._problem_details = problem_details
        self._retry_after = str(retry_after)
        self._hook = hook
        # Precomputed: the challenge sent when no credentials came (RFC 6750 §3.1).
        self._bare = [
            ("www-authenticate", build_challenge(scheme, realm, extra=params))
            for scheme, params in schemes
        ]

    def refusal(self, error: ApiGuardError, scheme: str | None) -> _Refusal:
        """Status, error code, description and headers for `error`."""
        if not isinstance(error, AuthError):
            headers = [("retry-after", self._retry_after), ("cache-control", "no-store")]
            return _Refusal(503, UNAVAILABLE_ERROR, UNAVAILABLE_DESCRIPTION, headers)
        if isinstance(error, RateLimitExceeded):
            # Not a credential problem: no challenge (RFC 6585 §4: 429 with Retry-After).
            headers = []
        elif error.error is None or scheme is None:
            headers = list(self._bare)
        else:
            scopes = error.scopes if isinstance(error, InsufficientScope) else ()
            challenge = build_challenge(
                scheme,
                self._realm,
                error=error.error,
                description=error.description,
                scope=scopes,
                extra=self._params.get(scheme, ()),
            )
            headers = [("www-authenticate", challenge)]
        headers.extend(error.headers)
        headers.append(("cache-control", "no-store"))
        return _Refusal(error.status_code, error.error, error.description, headers)

    def _body(self, refusal: _Refusal) -> tuple[bytes, str]:
        content: dict[str, object]
        if self._problem_details:
            # RFC 9457 §3.1: `status` equals the response status; the OAuth code is an extension.
            content = {
                "type": "about:blank",
                "title": HTTPStatus(refusal.status).phrase,
                "status": refusal.status,
                "detail": refusal.description,
            }
            if refusal.error is not None:
                content["error"] = refusal.error
            media_type = "application/problem+json"
        else:
            content = {"error_description": refusal.description}
            if refusal.error is not None:
                content = {"error": refusal.error, **content}
            media_type = "application/json"
        return json.dumps(content, separators=(",", ":")).encode(), media_type

    async def response(
        self, error: ApiGuardError, scheme: str | None, scope: Scope, receive: Receive
    ) -> Response:
        """The HTTP response for `error`."""
        refusal = self.refusal(error, scheme)
        if self._hook is not None:
            result = self._hook(HTTPConnection(scope, receive), error)
            response = await result if inspect.isawaitable(result) else result
            present = {name.lower() for name in response.headers}
            for name, value in refusal.headers:
                if name not in present:
                    response.headers.append(name, value)
            return response
        body, media_type = self._body(refusal)
        response = Response(body, status_code=refusal.status, media_type=media_type)
        for name, value in refusal.headers:
            response.headers.append(name, value)
        return response

    async def deny(
        self,
        error: ApiGuardError,
        scheme: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Send the refusal: an HTTP response, or a websocket denial before accept."""
        if scope["type"] == "websocket" and "websocket.http.response" not in scope.get(
            "extensions", {}
        ):
            # Without the denial-response extension, closing before accept makes the
            # server answer the handshake with 403.
            later = not isinstance(error, AuthError) or isinstance(error, RateLimitExceeded)
            code = _WS_TRY_AGAIN_LATER if later else _WS_POLICY_VIOLATION
            await WebSocketClose(code=code)(scope, receive, send)
            return
        response = await self.response(error, scheme, scope, receive)
        await response(scope, receive, send)
