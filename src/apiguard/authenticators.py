"""The credentials a middleware accepts: `APIKeyAuth`, `BearerAuth` and `DPoPAuth`.

Each says where its credential is in a request and how it is checked; the
middleware core (`AuthMiddleware`) does the rest. Give several to one
`AuthMiddleware` to accept any of them on the same routes.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from apiguard import _credentials
from apiguard._cache import CacheOptions
from apiguard._origin import OriginFunction, check_base_url, external_origin, request_url
from apiguard.exceptions import ConfigurationError, InvalidDPoPProof, InvalidToken
from apiguard.keys import open_store
from apiguard.keys.format import DEFAULT_PREFIX
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.usage import UsageOptions, UsageRecorder
from apiguard.keys.verifier import KeyVerifier
from apiguard.principal import Grant
from apiguard.tokens._http import check_url
from apiguard.tokens.dpop import DEFAULT_DPOP_ALGORITHMS, DPoPNonces, DPoPProofChecker
from apiguard.tokens.mtls import ClientCertificates
from apiguard.tokens.replay import MemoryReplayStore, ReplayStore
from apiguard.tokens.verifier import TokenVerifier
from apiguard.types import KeyStore, Scope, TokenIntrospector

if TYPE_CHECKING:
    from apiguard.tokens.shared_cache import RedisTokenCache

__all__ = ["APIKeyAuth", "BearerAuth", "DPoPAuth"]

Confirm = Callable[[Grant, bytes, Scope], Awaitable[None]]
_DPOP = frozenset({b"dpop"})


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
    confirm: Confirm | None = None

    __slots__ = (
        "_headers",
        "_query_param",
        "authenticate",
        "bookkeeping",
        "cached",
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
        # A key needs no check per request: a cached verdict is the whole answer.
        self.cached: Callable[[bytes], Grant | None] = self.verifier.cached
        self.extract: Callable[[Scope], bytes | None] = (
            _credentials.header_reader(headers)
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
    resource server ignores them). A DPoP-bound token (`cnf.jkt`, or an
    introspected `token_type` of `DPoP`) is refused here (RFC 9449 §7.2): accept
    it with `DPoPAuth`. A certificate-bound token (`cnf."x5t#S256"`, RFC 8705 §3)
    is accepted only over a connection presenting that certificate, found as
    `certificates` says; without `certificates` it is refused. A `DPoP` header
    next to a Bearer token is not looked at: the token is judged as a bearer
    token, by the rules above.

    Args:
        introspector: Verifies tokens: `apiguard.tokens.JWTIntrospector`,
            `RemoteIntrospector`, or your own `TokenIntrospector`.
        cache: Verification cache sizes and lifetimes; a grant never outlives `exp`.
        resource_metadata: The URL of this API's protected resource metadata
            (RFC 9728 §5.1), added to every `Bearer` challenge.
        token_cache: A verdict cache shared by every process, so that a new opaque
            token is introspected once in all: a `RedisTokenCache`, or a Redis URL
            for `RedisTokenCache.from_url` (docs/token-cache.md).
        certificates: Where client certificates are found, for
            certificate-bound tokens (`apiguard.tokens.ClientCertificates`).
    """

    scheme = "Bearer"

    __slots__ = (
        "authenticate",
        "cached",
        "certificates",
        "challenge_params",
        "confirm",
        "extract",
        "verifier",
    )

    def __init__(
        self,
        introspector: TokenIntrospector | TokenVerifier,
        *,
        cache: CacheOptions | None = None,
        resource_metadata: str | None = None,
        token_cache: RedisTokenCache | str | None = None,
        certificates: ClientCertificates | None = None,
    ) -> None:
        self.verifier = _verifier(introspector, cache, token_cache)
        self.certificates = certificates
        self.authenticate: Callable[[bytes], Awaitable[Grant]] = self.verifier.verify
        self.extract: Callable[[Scope], bytes | None] = _credentials.read_bearer
        self.confirm: Confirm | None = self._confirm
        self.cached: Callable[[bytes], Grant | None] = self._cached
        self.challenge_params: tuple[tuple[str, str], ...] = ()
        if resource_metadata is not None:
            check_url(resource_metadata, "resource_metadata")
            self.challenge_params = (("resource_metadata", resource_metadata),)

    async def _confirm(self, grant: Grant, token: bytes, scope: Scope) -> None:
        check_bearer_binding(grant[0].claims, self.certificates, scope)

    def _cached(self, token: bytes) -> Grant | None:
        # A cached verdict for a token bound to nothing is the whole answer; a bound
        # token (or one whose type says so) is confirmed per request, by `_confirm`.
        grant = self.verifier.cached(token)
        if grant is None:
            return None
        claims = grant[0].claims
        return None if "cnf" in claims or "token_type" in claims else grant

    def strip(self, scope: Scope) -> None:
        """Remove the Authorization header from the request the app sees."""
        _credentials.strip_headers(scope, _credentials.AUTHORIZATION)


class DPoPAuth:
    """DPoP-bound access tokens: `Authorization: DPoP <token>` with a `DPoP` proof (RFC 9449).

    Every request's proof is checked (RFC 9449 §4.3, `DPoPProofChecker`), its key
    must be the one the token is bound to (`cnf.jkt`, §6, compared in constant
    time), and each proof is accepted once (`replay`, §11.1). The token itself is
    verified and cached like a bearer token; the proof, which changes with every
    request, is checked on every request. Refusals carry a `DPoP` challenge with
    `algs` (§7.1): `invalid_dpop_proof` for a bad proof, `use_dpop_nonce` with a
    `DPoP-Nonce` header when nonces are on, `invalid_token` for a bad token or a
    key that does not match.

    Args:
        introspector: Verifies tokens, as for `BearerAuth`; or the `verifier` of a
            `BearerAuth`, to share one cache between both schemes.
        cache: Verification cache options, when `introspector` is not a verifier.
        token_cache: A verdict cache shared by every process (`RedisTokenCache` or
            a Redis URL), when `introspector` is not a verifier.
        algorithms: Proof signature algorithms accepted (asymmetric only).
        max_age: Seconds a proof is accepted after its `iat`.
        clock_skew: Seconds a proof's `iat` may be ahead of this server's clock.
        nonces: Require server-issued nonces (`DPoPNonces`), or `None`.
        replay: Where seen proofs are kept: `MemoryReplayStore()` by default (one
            process), `RedisReplayStore` for several workers.
        public_url: The external base URL of the API (`https://api.example`, with
            any path prefix a proxy adds); by default the origin is taken from the
            request's scheme and `Host` header (`apiguard._origin.external_origin`).
        origin: `origin(scope) -> "https://host"`, instead of `public_url`; behind
            your own proxies, `TrustedProxies([...]).origin` (`apiguard.proxies`),
            which believes `Forwarded` / `X-Forwarded-*` only from those proxies.
        certificates: Where client certificates are found, for tokens bound to a
            certificate as well (`cnf."x5t#S256"`).
        resource_metadata: The protected resource metadata URL (RFC 9728 §5.1),
            added to every `DPoP` challenge.
    """

    scheme = "DPoP"

    __slots__ = (
        "_clock",
        "_origin",
        "authenticate",
        "certificates",
        "challenge_params",
        "checker",
        "confirm",
        "extract",
        "replay",
        "verifier",
    )

    def __init__(
        self,
        introspector: TokenIntrospector | TokenVerifier,
        *,
        cache: CacheOptions | None = None,
        token_cache: RedisTokenCache | str | None = None,
        algorithms: Collection[str] = DEFAULT_DPOP_ALGORITHMS,
        max_age: float = 60.0,
        clock_skew: float = 5.0,
        nonces: DPoPNonces | None = None,
        replay: ReplayStore | None = None,
        public_url: str | None = None,
        origin: OriginFunction | None = None,
        certificates: ClientCertificates | None = None,
        resource_metadata: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if public_url is not None and origin is not None:
            raise ConfigurationError("pass either public_url or origin, not both")
        self.verifier = _verifier(introspector, cache, token_cache)
        self.checker = DPoPProofChecker(
            algorithms=algorithms, max_age=max_age, clock_skew=clock_skew, nonces=nonces
        )
        self.replay: ReplayStore = replay if replay is not None else MemoryReplayStore()
        self.certificates = certificates
        if public_url is not None:
            base = check_base_url(public_url, "public_url")
            self._origin: OriginFunction = lambda _scope: base
        else:
            self._origin = origin or external_origin
        self._clock = clock
        self.authenticate: Callable[[bytes], Awaitable[Grant]] = self.verifier.verify
        self.extract: Callable[[Scope], bytes | None] = _read_dpop
        self.confirm: Confirm | None = self._confirm
        params = [("algs", " ".join(self.checker.algorithms))]
        if resource_metadata is not None:
            check_url(resource_metadata, "resource_metadata")
            params.append(("resource_metadata", resource_metadata))
        self.challenge_params: tuple[tuple[str, str], ...] = tuple(params)

    async def _confirm(self, grant: Grant, token: bytes, scope: Scope) -> None:
        proof: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"dpop":
                if proof is not None:  # RFC 9449 §4.3 check 1
                    raise InvalidDPoPProof(reason="several DPoP headers")
                proof = value
        if proof is None:
            raise InvalidDPoPProof(reason="no DPoP proof")
        try:
            url = request_url(scope, self._origin(scope))
        except ValueError:
            raise InvalidDPoPProof(reason="no usable Host header") from None
        result = self.checker.check(
            proof,
            method=scope.get("method", "GET"),
            url=url,
            token=token,
            now=self._clock(),
        )
        cnf = _cnf(grant[0].claims)
        jkt = cnf.get("jkt")
        if not isinstance(jkt, str) or not hmac.compare_digest(
            jkt.encode("utf-8"), result.jkt.encode("ascii")
        ):
            # RFC 9449 §7.1: the proof key must be the key the token is bound to.
            raise InvalidToken(reason="DPoP key does not match cnf.jkt")
        _check_certificate(cnf, self.certificates, scope)
        seen = hashlib.sha256(f"{result.jkt}\x00{result.jti}".encode()).digest()
        if not await self.replay.first_use(seen, self.checker.replay_window):
            raise InvalidDPoPProof(reason="replayed proof")

    def strip(self, scope: Scope) -> None:
        """Remove the Authorization and DPoP headers from the request the app sees."""
        _credentials.strip_headers(scope, _credentials.AUTHORIZATION | _DPOP)


def _verifier(
    introspector: TokenIntrospector | TokenVerifier,
    cache: CacheOptions | None,
    token_cache: RedisTokenCache | str | None,
) -> TokenVerifier:
    if isinstance(introspector, TokenVerifier):
        if cache is not None or token_cache is not None:
            raise ConfigurationError("cache and token_cache are set on the shared verifier")
        return introspector
    if isinstance(token_cache, str):
        from apiguard.tokens.shared_cache import RedisTokenCache

        token_cache = RedisTokenCache.from_url(token_cache)
    return TokenVerifier(introspector, cache=cache, token_cache=token_cache)


def check_bearer_binding(
    claims: Mapping[str, Any], certificates: ClientCertificates | None, scope: Scope
) -> None:
    """Refuse a sender-constrained token presented as a plain bearer token.

    A DPoP-bound one always (RFC 9449 §7.2); a certificate-bound one unless the
    request's certificate, found by `certificates`, is the bound one (RFC 8705 §3).

    Raises:
        InvalidToken: The token is bound to something the request does not prove.
    """
    if "cnf" not in claims and "token_type" not in claims:  # the common case
        return
    cnf = _cnf(claims)
    token_type = claims.get("token_type")
    if "jkt" in cnf or (isinstance(token_type, str) and token_type.lower() == "dpop"):
        raise InvalidToken(reason="DPoP-bound token presented as Bearer")
    _check_certificate(cnf, certificates, scope)


_read_dpop = _credentials.authorization_reader(b"dpop", reason="empty DPoP token")
"""The token of an `Authorization: DPoP <token>` header (RFC 9449 §7.1), or `None`."""


def _cnf(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    cnf = claims.get("cnf")
    return cnf if isinstance(cnf, Mapping) else {}


def _check_certificate(
    cnf: Mapping[str, Any], certificates: ClientCertificates | None, scope: Scope
) -> None:
    """RFC 8705 §3: a certificate-bound token needs that certificate on the connection."""
    bound = cnf.get("x5t#S256")
    if bound is None:
        return
    presented = certificates.thumbprint(scope) if certificates is not None else None
    if (
        presented is None
        or not isinstance(bound, str)
        or not hmac.compare_digest(bound.encode("utf-8"), presented.encode("ascii"))
    ):
        raise InvalidToken(reason="certificate does not match cnf.x5t#S256")
