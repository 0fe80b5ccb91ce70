"""The credentials a middleware accepts: `APIKeyAuth` and `BearerAuth`.

Each says where its credential is in a request and how it is checked; the
middleware core (`AuthMiddleware`) does the rest. Give several to one
`AuthMiddleware` to accept any of them on the same routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import TYPE_CHECKING

from apiguard import _credentials
from apiguard._cache import CacheOptions
from apiguard.exceptions import ConfigurationError
from apiguard.keys import open_store
from apiguard.keys.format import DEFAULT_PREFIX
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.usage import UsageOptions, UsageRecorder
from apiguard.keys.verifier import KeyVerifier
from apiguard.principal import Grant
from apiguard.tokens._http import check_url
from apiguard.tokens.verifier import TokenVerifier
from apiguard.types import KeyStore, Scope, TokenIntrospector

if TYPE_CHECKING:
    from apiguard.tokens.shared_cache import RedisTokenCache

__all__ = ["APIKeyAuth", "BearerAuth"]


class APIKeyAuth:
    """API keys from request headers, verified against a key store.

    Args:
        store: A `KeyStore`, or a store URL for `apiguard.keys.open_store`.
        pepper: The HMAC pepper keys are hashed with; defaults to `APIGUARD_PEPPER`.
        hasher: A ready `KeyHasher`, instead of `pepper`.
        header_names: Headers the key is read from (any one of them).
        query_param: A query parameter the key may also come in. Off by default and
            unsafe: URLs end up in access logs, proxies and browser history.
        prefixes: Key prefixes accepted.
        cache: Verification cache sizes and lifetimes (`CacheOptions`).
        deadline: Seconds one key lookup may take in all (store read and hash
            check); past it the request gets 503 with `Retry-After`. A write of
            usage counts gets the same time.
        usage: Count the requests each key authenticates, per hour and day, and its
            last use (`UsageOptions`: how often they are written, how many may
            wait); `False` keeps neither. See docs/usage.md.

    Attributes:
        header_names: The headers the key is read from, as configured.
        query_param: The query parameter the key may come in, or `None`.
        usage: Counts the requests each key authenticated, or `None`.

    Writes that only keep books (request counts and last use, a hash migrated to the
    default scheme) are made after the response is sent, never while a request waits
    (`bookkeeping.flush()` and `usage.flush()`, called by the middleware).
    """

    scheme = "ApiKey"
    challenge_params: tuple[tuple[str, str], ...] = ()

    __slots__ = (
        "_headers",
        "_query_param",
        "authenticate",
        "bookkeeping",
        "extract",
        "header_names",
        "query_param",
        "usage",
        "verifier",
    )

    def __init__(
        self,
        store: KeyStore | str,
        *,
        pepper: str | bytes | None = None,
        hasher: KeyHasher | None = None,
        header_names: Collection[str] = ("X-API-Key",),
        query_param: str | None = None,
        prefixes: Collection[str] = (DEFAULT_PREFIX,),
        cache: CacheOptions | None = None,
        deadline: float = 5.0,
        usage: UsageOptions | bool = True,
    ) -> None:
        if hasher is not None and pepper is not None:
            raise ConfigurationError("pass either pepper or hasher, not both")
        if query_param == "":
            raise ConfigurationError("query_param cannot be empty")
        headers = _credentials.header_names(header_names)
        key_store = open_store(store) if isinstance(store, str) else store
        self.verifier = KeyVerifier(
            key_store,
            hasher or KeyHasher(pepper),
            prefixes=prefixes,
            cache=cache,
            deadline=deadline,
        )
        self.bookkeeping = self.verifier
        self.usage: UsageRecorder | None = None
        """Counts the requests each key authenticated; `None` with `usage=False`."""
        if usage is not False:
            options = usage if isinstance(usage, UsageOptions) else None
            self.usage = UsageRecorder(key_store, options, deadline=deadline)
        self._headers = headers
        self._query_param = query_param
        # As configured, for documents that describe the API (OpenAPI's apiKey scheme).
        self.header_names: tuple[str, ...] = tuple(dict.fromkeys(n.strip() for n in header_names))
        self.query_param = query_param
        # Bound once: the hot path makes one call to find the key and one to check it.
        self.authenticate: Callable[[bytes], Awaitable[Grant]] = self.verifier.verify
        self.extract: Callable[[Scope], bytes | None] = (
            partial(_credentials.read_headers, names=headers)
            if query_param is None
            else partial(_credentials.read_headers_or_query, names=headers, param=query_param)
        )

    def strip(self, scope: Scope) -> None:
        """Remove the key from the request the app sees."""
        _credentials.strip_headers(scope, self._headers)
        if self._query_param is not None:
            _credentials.strip_query(scope, self._query_param)


class BearerAuth:
    """OAuth 2.0 bearer tokens from the `Authorization` header (RFC 6750 §2.1).

    Tokens in the query string or the body are never read (OAuth 2.1 §5.1: a
    resource server ignores them).

    Args:
        introspector: Verifies tokens: `apiguard.tokens.JWTIntrospector`,
            `RemoteIntrospector`, or your own `TokenIntrospector`.
        cache: Verification cache sizes and lifetimes; a grant never outlives `exp`.
        resource_metadata: The URL of this API's protected resource metadata
            (RFC 9728 §5.1), added to every `Bearer` challenge.
        token_cache: A verdict cache shared by every process, so that a new opaque
            token is introspected once in all: a `RedisTokenCache`, or a Redis URL
            for `RedisTokenCache.from_url` (docs/token-cache.md).
    """

    scheme = "Bearer"

    __slots__ = ("authenticate", "challenge_params", "extract", "verifier")

    def __init__(
        self,
        introspector: TokenIntrospector,
        *,
        cache: CacheOptions | None = None,
        resource_metadata: str | None = None,
        token_cache: RedisTokenCache | str | None = None,
    ) -> None:
        if isinstance(token_cache, str):
            from apiguard.tokens.shared_cache import RedisTokenCache

            token_cache = RedisTokenCache.from_url(token_cache)
        self.verifier = TokenVerifier(introspector, cache=cache, token_cache=token_cache)
        self.authenticate: Callable[[bytes], Awaitable[Grant]] = self.verifier.verify
        self.extract: Callable[[Scope], bytes | None] = _credentials.read_bearer
        self.challenge_params: tuple[tuple[str, str], ...] = ()
        if resource_metadata is not None:
            check_url(resource_metadata, "resource_metadata")
            self.challenge_params = (("resource_metadata", resource_metadata),)

    def strip(self, scope: Scope) -> None:
        """Remove the Authorization header from the request the app sees."""
        _credentials.strip_headers(scope, _credentials.AUTHORIZATION)
