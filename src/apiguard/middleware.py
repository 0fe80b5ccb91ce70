"""The public middlewares: thin configurations of the shared core in `_core`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from functools import partial

from apiguard import _credentials
from apiguard._cache import CacheOptions
from apiguard._challenge import ErrorResponseHook
from apiguard._core import GuardMiddleware
from apiguard.exceptions import ConfigurationError
from apiguard.keys import open_store
from apiguard.keys.format import DEFAULT_PREFIX
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.verifier import KeyVerifier
from apiguard.principal import Grant
from apiguard.types import ASGIApp, KeyStore, Scope

__all__ = ["APIKeyMiddleware"]


class _APIKeyAuthenticator:
    scheme = "ApiKey"

    __slots__ = ("_headers", "_query_param", "authenticate", "extract")

    def __init__(
        self, verifier: KeyVerifier, headers: frozenset[bytes], query_param: str | None
    ) -> None:
        self._headers = headers
        self._query_param = query_param
        # Bound once: the hot path makes one call to find the key and one to check it.
        self.authenticate: Callable[[bytes], Awaitable[Grant]] = verifier.verify
        self.extract: Callable[[Scope], bytes | None] = (
            partial(_credentials.read_headers, names=headers)
            if query_param is None
            else partial(_credentials.read_headers_or_query, names=headers, param=query_param)
        )

    def strip(self, scope: Scope) -> None:
        _credentials.strip_headers(scope, self._headers)
        if self._query_param is not None:
            _credentials.strip_query(scope, self._query_param)


class APIKeyMiddleware(GuardMiddleware):
    """Pure ASGI middleware that requires an API key on every http and websocket request.

    `app.add_middleware(APIKeyMiddleware, store="sqlite:///keys.db")`

    On success `scope["user"]` is a `Principal` (kind `"api_key"`) and
    `scope["auth"]` an `AuthCredentials` with the key's scopes. Refusals: no key,
    401 with `WWW-Authenticate: ApiKey realm="api"`; a malformed, unknown, wrong,
    expired or revoked key, 401 with `error="invalid_key"` (which of these is not
    said); two different keys, 400 `invalid_request`; a store that cannot be
    reached, 503 with `Retry-After`.

    Args:
        app: The ASGI app to protect.
        store: A `KeyStore`, or a store URL for `apiguard.keys.open_store`.
        pepper: The HMAC pepper keys are hashed with; defaults to `APIGUARD_PEPPER`.
        hasher: A ready `KeyHasher`, instead of `pepper`.
        header_names: Headers the key is read from (any one of them).
        query_param: A query parameter the key may also come in. Off by default and
            unsafe: URLs end up in access logs, proxies and browser history.
        prefixes: Key prefixes accepted.
        cache: Verification cache sizes and lifetimes (`CacheOptions`).
        realm: The challenge `realm`, or `None` for none.
        exclude_paths: Paths served without a key: exact (`"/health"`) or, ending
            in `*`, prefixes (`"/public/*"`). Matched without the app's root path.
        exclude_methods: HTTP methods served without a key.
        allow_preflight: Let CORS preflight requests through without a key.
        optional: A request without a key gets the anonymous principal instead of
            a 401; a bad key is still refused.
        hide_credentials: Remove the key from the request before the app sees it.
        problem_details: Send RFC 9457 `application/problem+json` bodies.
        retry_after: Seconds in the `Retry-After` header of a 503.
        error_response: `hook(connection, error) -> Response` (sync or async) to build
            refusals yourself; challenge and `Retry-After` headers are added if missing.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: KeyStore | str,
        pepper: str | bytes | None = None,
        hasher: KeyHasher | None = None,
        header_names: Collection[str] = ("X-API-Key",),
        query_param: str | None = None,
        prefixes: Collection[str] = (DEFAULT_PREFIX,),
        cache: CacheOptions | None = None,
        realm: str | None = "api",
        exclude_paths: Collection[str] = (),
        exclude_methods: Collection[str] = (),
        allow_preflight: bool = True,
        optional: bool = False,
        hide_credentials: bool = False,
        problem_details: bool = False,
        retry_after: int = 5,
        error_response: ErrorResponseHook | None = None,
    ) -> None:
        if hasher is not None and pepper is not None:
            raise ConfigurationError("pass either pepper or hasher, not both")
        if query_param == "":
            raise ConfigurationError("query_param cannot be empty")
        key_store = open_store(store) if isinstance(store, str) else store
        verifier = KeyVerifier(
            key_store, hasher or KeyHasher(pepper), prefixes=prefixes, cache=cache
        )
        authenticator = _APIKeyAuthenticator(
            verifier, _credentials.header_names(header_names), query_param
        )
        self.verifier = verifier
        super().__init__(
            app,
            authenticators=[authenticator],
            realm=realm,
            exclude_paths=exclude_paths,
            exclude_methods=exclude_methods,
            allow_preflight=allow_preflight,
            optional=optional,
            hide_credentials=hide_credentials,
            problem_details=problem_details,
            retry_after=retry_after,
            error_response=error_response,
        )
