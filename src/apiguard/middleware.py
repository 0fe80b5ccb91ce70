"""`APIKeyMiddleware` and `BearerTokenMiddleware`: `AuthMiddleware` with one credential."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from apiguard._cache import CacheOptions
from apiguard._core import AuthMiddleware, GuardOptions
from apiguard._startup import hold_setup_errors
from apiguard.authenticators import APIKeyAuth, BearerAuth
from apiguard.keys.format import DEFAULT_PREFIX
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.usage import UsageOptions
from apiguard.types import ASGIApp, KeyStore, TokenIntrospector

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from apiguard.tokens.shared_cache import RedisTokenCache

__all__ = ["APIKeyMiddleware", "BearerTokenMiddleware"]


class APIKeyMiddleware(AuthMiddleware):
    """Pure ASGI middleware that requires an API key on every http and websocket request.

    `app.add_middleware(APIKeyMiddleware, store="sqlite:///keys.db")`

    On success `scope["user"]` is a `Principal` (kind `"api_key"`) and
    `scope["auth"]` an `AuthCredentials` with the key's scopes. Refusals: no key,
    401 with `WWW-Authenticate: ApiKey realm="api"`; a malformed, unknown, wrong,
    expired or revoked key, 401 with `error="invalid_key"` (which of these is not
    said); two keys, or one sent twice, 400 `invalid_request`; a store that
    cannot be reached, 503 with `Retry-After`.

    Takes the arguments of `APIKeyAuth` (`store`, `pepper`, `hasher`,
    `header_names`, `query_param`, `prefixes`, `cache`, `deadline`, `usage`) and the options of
    `AuthMiddleware` (`realm`, `exclude_paths`, `exclude_methods`, `allow_preflight`,
    `optional`, `hide_credentials`, `problem_details`, `retry_after`, `error_response`,
    `policies`).
    """

    @hold_setup_errors
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
        deadline: float = 5.0,
        usage: UsageOptions | bool = True,
        **options: Unpack[GuardOptions],
    ) -> None:
        self.auth = APIKeyAuth(
            store,
            pepper=pepper,
            hasher=hasher,
            header_names=header_names,
            query_param=query_param,
            prefixes=prefixes,
            cache=cache,
            deadline=deadline,
            usage=usage,
        )
        super().__init__(app, authenticators=[self.auth], **options)


class BearerTokenMiddleware(AuthMiddleware):
    """Pure ASGI middleware that requires an OAuth 2.0 bearer token (RFC 6750).

    `app.add_middleware(BearerTokenMiddleware, introspector=JWTIntrospector.from_issuer(...))`

    On success `scope["user"]` is a `Principal` (kind `"bearer"`, with client id,
    subject, scopes and claims). Refusals follow RFC 6750 §3: no token, 401 with
    `WWW-Authenticate: Bearer realm="api"` and no error; an invalid token, 401
    `invalid_token`; a malformed request or two tokens, 400 `invalid_request`;
    the authorization server or its keys out of reach, 503 with `Retry-After`.

    Takes the arguments of `BearerAuth` (`introspector`, `cache`,
    `resource_metadata`, `token_cache`) and the options of `AuthMiddleware`.
    """

    @hold_setup_errors
    def __init__(
        self,
        app: ASGIApp,
        *,
        introspector: TokenIntrospector,
        cache: CacheOptions | None = None,
        resource_metadata: str | None = None,
        token_cache: RedisTokenCache | str | None = None,
        **options: Unpack[GuardOptions],
    ) -> None:
        self.auth = BearerAuth(
            introspector,
            cache=cache,
            resource_metadata=resource_metadata,
            token_cache=token_cache,
        )
        super().__init__(app, authenticators=[self.auth], **options)
