"""`RemoteIntrospector`: ask the authorization server about a token (RFC 7662).

The introspection call is authenticated with this API's own client credentials.
The server's answer is trusted only so far: an active token is still checked here
for `exp`, `aud`, `iss` and `token_type`, and scopes are read from its answer.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from datetime import timedelta
from typing import Any, Literal, NoReturn
from urllib.parse import quote_plus

import anyio
import httpx
import jwt

from apiguard._backoff import Backoff
from apiguard._cache import SingleFlight
from apiguard._observe import backend_call
from apiguard.exceptions import BackendUnavailableError, ConfigurationError, InvalidToken
from apiguard.keys.record import utcnow
from apiguard.tokens._http import (
    ACCEPT_ENCODING,
    DEFAULT_TIMEOUT,
    AsyncHTTPClient,
    check_client,
    check_url,
    client_errors,
    read_json,
)
from apiguard.tokens.discovery import discover
from apiguard.tokens.info import DEFAULT_SCOPE_CLAIMS, TokenInfo
from apiguard.tokens.jwks import DEFAULT_ALGORITHMS, MAX_TOKEN_SIZE

__all__ = ["ClientAuthMethod", "RemoteIntrospector"]

logger = logging.getLogger("apiguard.tokens")

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt"]
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2
# Access tokens: bearer ones, and DPoP-bound ones, whose `cnf.jkt` the DPoP
# authenticator checks and which `BearerAuth` refuses (RFC 9449 §6.2, §7.2).
_BEARER_TYPES = frozenset({"bearer", "access_token"})
_ACCESS_TYPES = _BEARER_TYPES | {"dpop"}
_INACTIVE = TokenInfo(active=False)
# RFC 6749 §5.2 codes that mean this API's own client authentication failed.
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
_TOKEN_ERRORS = frozenset({"invalid_request", "invalid_token", "unsupported_token_type"})


def _check_signing_key(key: Any, alg: str) -> None:
    if alg not in DEFAULT_ALGORITHMS:
        raise ConfigurationError(f"private_key_jwt needs an asymmetric algorithm, not {alg!r}")
    if key is None:
        raise ConfigurationError("private_key_jwt needs private_key")
    try:
        jwt.encode({}, key, algorithm=alg)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"private_key cannot sign {alg}: {type(exc).__name__}") from None


def _form_encode(value: str) -> str:
    # RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
    return quote_plus(value, safe="")


def require_active(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """`answer` if its `active` is a boolean (RFC 7662 §2.2: REQUIRED); else 503."""
    if not isinstance(answer.get("active"), bool):
        raise BackendUnavailableError("introspection answer without a boolean 'active'")
    return answer


class RemoteIntrospector:
    """Validates tokens by asking the authorization server's introspection endpoint.

    Args:
        endpoint: The introspection endpoint URL. `from_issuer()` discovers it.
        client_id: This API's client id at the authorization server.
        client_secret: Its secret (for `client_secret_basic` and `client_secret_post`).
        audience: The audience(s) this API accepts; an active token's `aud` must
            contain one of them.
        issuer: When set, an answer's `iss` (if any) must equal it.
        auth_method: `client_secret_basic` (default), `client_secret_post`, or
            `private_key_jwt` (RFC 7523 §2.2: a JWT signed with `private_key`, new for
            each call, with `aud` the issuer when known, else the endpoint).
        private_key: For `private_key_jwt`: a PEM private key or a `cryptography` key.
        signing_alg: For `private_key_jwt`: the asymmetric algorithm to sign with.
        key_id: For `private_key_jwt`: the `kid` the server knows the key by.
        token_type_hint: Sent as `token_type_hint`; `None` to leave it out.
        scope_claims: Members of the answer scopes are read from.
        http_client: The client to use: an `httpx.AsyncClient` or an
            `httpx2.AsyncClient`, with the application's proxies, CA bundle or
            client certificate (docs/http-clients.md). One is made (and closed by
            `aclose()`) if none is given; one given is not closed. Its own `auth`
            is not used: this API authenticates itself as `auth_method` says.
        timeout: Seconds for each step of one HTTP call (connect, write, each read),
            set on every request, whatever the client's own timeout.
        retries: Extra attempts after a connection error, a timeout or a 5xx.
        deadline: Seconds one introspection may take in all, discovery and retries
            included, however slowly the server sends; then the request gets 503.
            A failed introspection is not retried for a short, growing, jittered
            time (1 s, then up to 30 s), so an outage is not amplified by this
            API's traffic.
        leeway: Seconds of clock skew allowed for an active answer's `exp`. One
            rule end to end: a token is accepted, and its grant cached, until `exp`
            + `leeway` and no longer (`TokenVerifier` takes the leeway from here).
        max_token_size: Longer tokens are refused (401) without a call.
        clock: The monotonic clock the backoff after a failure runs on.
    """

    def __init__(
        self,
        endpoint: str | None,
        *,
        client_id: str,
        client_secret: str | None = None,
        audience: str | Collection[str],
        issuer: str | None = None,
        auth_method: ClientAuthMethod = "client_secret_basic",
        token_type_hint: str | None = "access_token",  # noqa: S107 - a type name, not a secret
        scope_claims: Collection[str] = DEFAULT_SCOPE_CLAIMS,
        http_client: AsyncHTTPClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
        private_key: Any = None,
        signing_alg: str = "RS256",
        key_id: str | None = None,
        deadline: float = 10.0,
        leeway: float = 30,
        max_token_size: int = MAX_TOKEN_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if endpoint is not None:
            check_url(endpoint, "introspection endpoint")
        if issuer is None and endpoint is None:
            raise ConfigurationError(
                "an introspection endpoint or an issuer to discover it from is required"
            )
        if auth_method not in ("client_secret_basic", "client_secret_post", "private_key_jwt"):
            raise ConfigurationError(f"unsupported client authentication method {auth_method!r}")
        self._audiences = frozenset((audience,) if isinstance(audience, str) else audience)
        if not self._audiences:
            raise ConfigurationError("an expected audience is required")
        if not client_id:
            raise ConfigurationError("client_id is required")
        if auth_method == "private_key_jwt":
            _check_signing_key(private_key, signing_alg)
        elif not client_secret:
            raise ConfigurationError(f"{auth_method} needs client_secret")
        if retries < 0 or leeway < 0:
            raise ConfigurationError("retries and leeway cannot be negative")
        if deadline <= 0 or max_token_size < 1 or timeout <= 0:
            raise ConfigurationError("deadline, timeout and max_token_size must be positive")
        if http_client is not None:
            check_client(http_client)
        self._endpoint = endpoint
        self._issuer = issuer
        self._client_id = client_id
        self._auth_method = auth_method
        self._hint = token_type_hint
        self._scope_claims = tuple(scope_claims)
        self._retries = retries
        self._timeout = timeout
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=self._timeout)
        self._discovery: SingleFlight[str, str] = SingleFlight()
        self._private_key = private_key
        self._signing_alg = signing_alg
        self._key_id = key_id
        self._deadline = deadline
        self._max_size = max_token_size
        self._backoff = Backoff(clock=clock)
        self.leeway = leeway
        self._leeway_delta = timedelta(seconds=leeway)
        self._credentials: dict[str, str] = {}
        self._headers: dict[str, str] = {}
        if auth_method == "client_secret_basic" and client_secret:
            pair = f"{_form_encode(client_id)}:{_form_encode(client_secret)}".encode()
            self._headers = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        elif auth_method == "client_secret_post" and client_secret:
            self._credentials = {"client_id": client_id, "client_secret": client_secret}
        self._headers["Accept"] = "application/json"
        self._headers["Accept-Encoding"] = ACCEPT_ENCODING
        self.calls = 0

    @classmethod
    def from_issuer(cls, issuer: str, **options: Any) -> RemoteIntrospector:
        """Find the introspection endpoint in the issuer's metadata (RFC 8414), lazily."""
        check_url(issuer, "issuer")
        return cls(None, issuer=issuer, **options)

    def __repr__(self) -> str:
        return f"RemoteIntrospector(endpoint={self._endpoint!r}, client_id={self._client_id!r})"

    async def introspect(self, token: str) -> TokenInfo:
        """Ask about `token`; `TokenInfo(active=False)` for inactive or unacceptable tokens.

        Raises:
            InvalidToken: The token is too large, or the endpoint refused it as a
                malformed request (HTTP 400 `invalid_request`, ...).
            BackendUnavailableError: The endpoint could not be reached in time,
                refused this API's credentials, or answered with something other than
                RFC 7662 JSON.
        """
        if len(token) > self._max_size:
            raise InvalidToken(reason="token too large")
        # A failing server is not asked again at once; one deadline for it all.
        answer = await self._backoff.call(
            lambda: self._ask(token), deadline=self._deadline, what="introspection"
        )
        return self._check(answer)

    async def _ask(self, token: str) -> Mapping[str, Any]:
        endpoint = self._endpoint or await self._discovery.run("endpoint", self._discover)
        form = {"token": token, **self._credentials}
        if self._auth_method == "private_key_jwt":
            form["client_assertion_type"] = _ASSERTION_TYPE
            form["client_assertion"] = self._assertion(endpoint)
        if self._hint is not None:
            form["token_type_hint"] = self._hint
        # Checked here, inside the backoff, so that a server answering without a
        # boolean `active` is not asked on every request.
        return require_active(await self._post(endpoint, form))

    def _assertion(self, endpoint: str) -> str:
        # RFC 7523 §3: iss and sub are the client id; a unique jti and a short exp.
        now = int(time.time())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._issuer or endpoint,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 60,
        }
        headers = {"kid": self._key_id} if self._key_id else None
        return jwt.encode(claims, self._private_key, algorithm=self._signing_alg, headers=headers)

    async def _discover(self) -> str:
        if self._issuer is None:  # __init__ requires an endpoint or an issuer
            raise ConfigurationError("no introspection endpoint and no issuer to discover it from")
        metadata = await discover(self._client, self._issuer, timeout=self._timeout)
        endpoint = metadata.get("introspection_endpoint")
        if not isinstance(endpoint, str):
            raise BackendUnavailableError(
                "authorization server metadata has no introspection_endpoint"
            )
        try:
            self._endpoint = check_url(endpoint, "introspection endpoint")
        except ConfigurationError as exc:
            raise BackendUnavailableError(str(exc)) from exc
        return self._endpoint

    async def _post(self, endpoint: str, form: dict[str, str]) -> Mapping[str, Any]:
        errors = client_errors(self._client)
        for attempt in range(self._retries + 1):
            self.calls += 1
            try:
                with backend_call("introspection") as call:
                    async with self._client.stream(
                        "POST",
                        endpoint,
                        data=form,
                        headers=self._headers,
                        timeout=self._timeout,
                        # The credentials are in the form or in headers; a redirect is
                        # never followed, so they go to the configured endpoint only.
                        follow_redirects=False,
                        auth=None,
                    ) as response:
                        status = response.status_code
                        if status == 200:
                            return await read_json(response, "introspection")  # type: ignore[arg-type]
                        if status < 500:
                            await self._refused(endpoint, response)  # type: ignore[arg-type]
                        error = f"introspection: HTTP {status}"
                        call.fail()
            except errors as exc:
                error = f"introspection: {type(exc).__name__}"
            if attempt < self._retries:
                await anyio.sleep(0.05 * 2**attempt)
        raise BackendUnavailableError(error)

    async def _refused(self, endpoint: str, response: httpx.Response) -> NoReturn:
        status = response.status_code
        code = None
        if status in (400, 413):
            with contextlib.suppress(BackendUnavailableError):  # no usable JSON body
                code = (await read_json(response, "introspection error")).get("error")
            if code not in _CLIENT_ERRORS:
                # A request the server will not answer for this token (a malformed
                # or oversized one, an unsupported token type): the token is not
                # valid here, and saying so (401) is cached like any refusal.
                reason = code if code in _TOKEN_ERRORS else "rejected"
                raise InvalidToken(reason=f"introspection: {reason}")
        if status == 429:
            # The server is shedding load (RFC 6585 §4): an outage for our callers,
            # backed off like one, not a misconfiguration.
            raise BackendUnavailableError("introspection: HTTP 429 (rate limited)")
        # RFC 7662 §2.3: 401 and 403 (and a 400 invalid_client) mean our own
        # credentials were refused; a 404 or 405, a wrong endpoint: either way a
        # misconfiguration, never the caller's invalid token.
        logger.error(
            "introspection endpoint %s refused this API's request (HTTP %d): "
            "check the endpoint, client_id, client_secret and auth_method",
            endpoint,
            status,
        )
        raise BackendUnavailableError(f"introspection refused: HTTP {status}")

    def _check(self, answer: Mapping[str, Any]) -> TokenInfo:
        if not answer["active"]:  # a boolean: checked by `require_active` in `_ask`
            return _INACTIVE
        info = TokenInfo.from_claims(answer, scope_claims=self._scope_claims)
        token_type = answer.get("token_type")
        if token_type is not None and str(token_type).lower() not in _ACCESS_TYPES:
            # A refresh token, say, is not an access token.
            raise InvalidToken(reason="wrong token_type")
        if info.expires_at is not None and info.expires_at + self._leeway_delta <= utcnow():
            raise InvalidToken(reason="expired")
        if not self._audiences.intersection(info.audience):
            raise InvalidToken(reason="wrong audience")
        if self._issuer is not None and info.issuer is not None and info.issuer != self._issuer:
            raise InvalidToken(reason="wrong issuer")
        return info

    async def aclose(self) -> None:
        """Close the HTTP client if the introspector made it."""
        if self._owns_client:
            await self._client.aclose()
