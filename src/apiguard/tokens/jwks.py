"""`JWTIntrospector`: local validation of JWT access tokens (RFC 9068, RFC 8725).

PyJWT decodes and checks signatures; everything around it is here: the issuer's
key set fetched asynchronously and cached, one forced refetch for an unknown `kid`
(rate-limited and shared by concurrent requests), each key bound to one algorithm,
and the checks RFC 9068 §4 asks of a resource server.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import jwt

from apiguard._backoff import Backoff
from apiguard._cache import SingleFlight
from apiguard._observe import backend_call
from apiguard.exceptions import BackendUnavailableError, ConfigurationError, InvalidToken
from apiguard.tokens import _turns
from apiguard.tokens._http import (
    DEFAULT_TIMEOUT,
    AsyncHTTPClient,
    check_client,
    check_url,
    get_json,
)
from apiguard.tokens.discovery import discover
from apiguard.tokens.info import DEFAULT_SCOPE_CLAIMS, TokenInfo

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_REQUIRED_CLAIMS",
    "JWTIntrospector",
    "TrustedIssuer",
    "looks_like_jwt",
]

logger = logging.getLogger("apiguard.tokens")

DEFAULT_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
"""Asymmetric algorithms only: a JWKS holds public keys (RFC 8725 §3.1, RFC 9068 §2.1)."""
DEFAULT_REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat")
MAX_TOKEN_SIZE = 8192
MAX_KEYS = 100
MAX_JSON_DEPTH = 16  # a JOSE header or claims set nested deeper is refused

# Which algorithms a key of each type (and curve) may be used with: one key, one
# family, so an RSA public key can never verify an HMAC (RFC 8725 §3.1).
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_BY_CURVE = {
    "P-256": "ES256",
    "P-384": "ES384",
    "P-521": "ES512",
    "Ed25519": "EdDSA",
    "Ed448": "EdDSA",
}
# RFC 7515 compact serialization: three base64url parts, a non-empty signature.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_BASE64URL_OR_DOT = _BASE64URL + b"."
_AT_JWT = frozenset({"at+jwt", "application/at+jwt"})
_OTHER_JWT = frozenset({"jwt", "application/jwt"})


def looks_like_jwt(token: str) -> bool:
    """Whether `token` has the shape of a compact JWS (it may still be invalid)."""
    return (
        len(token) <= MAX_TOKEN_SIZE
        and _is_compact_jws(token)
        and token.startswith("eyJ")  # base64url of '{"': a JSON header
    )


def _is_compact_jws(token: str) -> bool:
    """Whether `token` is three non-empty base64url parts joined by dots (RFC 7515 §7.1).

    What `_COMPACT_JWS` matches, several times faster: one pass in C over the
    characters, then the shape. It runs on every token seen for the first time.
    """
    if not token.isascii() or token.encode().translate(None, _BASE64URL_OR_DOT):
        return False
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    return bool(header and payload and signature) and "." not in signature


class _Segments(jwt.PyJWS):
    """PyJWS with PyJWT's own base64url segment checks, the alphabet checked in C.

    PyJWT checks each character of each segment in Python (GHSA-hxm8-2xgr-2p9m), about
    half of a first-sight RS256 verification; these are the same checks: at most two
    `=` and only where they complete a quantum, the base64url alphabet, a length that
    can be decoded, and the canonical encoding (no stray trailing bits).
    """

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if (
            padding > 2
            or (padding and len(segment) % 4)
            or len(stripped) % 4 == 1
            or stripped.translate(None, _BASE64URL)
        ):
            raise jwt.DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
        except binascii.Error as exc:  # pragma: no cover - the checks above exclude it
            raise jwt.DecodeError(f"Invalid {name} padding") from exc
        if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
            raise jwt.DecodeError(f"Invalid {name} padding")
        return decoded


class _Decoder(jwt.PyJWT):
    """`jwt.decode`, every check PyJWT makes, with `_Segments` decoding the segments."""

    def __init__(self) -> None:
        super().__init__()
        self._jws = _Segments()  # as PyJWT sets its own module-level decoder's


_DECODER = _Decoder()


def _key_allows(jwk: Mapping[str, Any], alg: str) -> bool:
    if jwk.get("use", "sig") != "sig":
        return False
    if "alg" in jwk:
        return bool(jwk["alg"] == alg)
    kty = jwk.get("kty")
    if kty == "RSA":
        return alg in _RSA
    if kty in ("EC", "OKP"):
        return _BY_CURVE.get(str(jwk.get("crv"))) == alg
    return False  # "oct" and unknown types: never


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    """One issuer whose tokens are accepted, and how they are checked.

    Attributes:
        issuer: The issuer identifier, compared exactly with `iss` and with the
            discovered metadata's `issuer`.
        audience: The audience(s) this API accepts; `aud` must contain one of them.
        jwks_uri: The issuer's key set. `None` discovers it (RFC 8414, then OpenID
            Connect Discovery), lazily, on the first token.
        algorithms: The algorithm allowlist. Asymmetric only.
        accept_jwt_typ: Also accept `typ: JWT` (or no `typ`), as many providers still
            send; RFC 9068 §4 wants `at+jwt`. Other `typ` values are refused either way.
        required_claims: Claims that must be present.
        scope_claims: Claims scopes are read from (`TokenInfo.scopes`), e.g. add
            `"roles"` or `"realm_access.roles"` for providers that put permissions there.
    """

    issuer: str
    audience: str | Collection[str]
    jwks_uri: str | None = None
    algorithms: Collection[str] = DEFAULT_ALGORITHMS
    accept_jwt_typ: bool = False
    required_claims: Collection[str] = DEFAULT_REQUIRED_CLAIMS
    scope_claims: Collection[str] = DEFAULT_SCOPE_CLAIMS

    def __post_init__(self) -> None:
        check_url(self.issuer, "issuer")
        if self.jwks_uri is not None:
            check_url(self.jwks_uri, "jwks_uri")
        if not self.audiences:
            raise ConfigurationError("an expected audience is required (RFC 8725 §3.9)")
        unknown = set(self.algorithms) - set(DEFAULT_ALGORITHMS)
        if unknown or not self.algorithms:
            raise ConfigurationError(
                f"algorithms must be a non-empty subset of {DEFAULT_ALGORITHMS}; got {sorted(unknown)}"
            )

    @property
    def audiences(self) -> tuple[str, ...]:
        return (self.audience,) if isinstance(self.audience, str) else tuple(self.audience)


class _KeySet:
    """One issuer's JWKS: cached with a TTL, refetched on an unknown kid at most once per cooldown."""

    def __init__(
        self,
        issuer: TrustedIssuer,
        client: AsyncHTTPClient,
        *,
        timeout: float,
        ttl: float,
        min_ttl: float,
        max_ttl: float,
        refresh_cooldown: float,
        max_stale: float,
        deadline: float,
        clock: Callable[[], float],
    ) -> None:
        self._issuer = issuer
        self._client = client
        self._timeout = timeout
        self._uri = issuer.jwks_uri
        self._ttl, self._min_ttl, self._max_ttl = ttl, min_ttl, max_ttl
        self._cooldown = refresh_cooldown
        self._max_stale = max_stale
        self._deadline = deadline
        self._clock = clock
        self._keys: dict[str | None, list[Mapping[str, Any]]] | None = None
        self._fresh_until = 0.0
        self._usable_until = 0.0
        # Only refetches for unknown kids count towards the cooldown: a rotation
        # right after a scheduled fetch is still picked up by the first new token.
        self._last_kid_refetch = float("-inf")
        self._parsed: dict[tuple[int, str], jwt.PyJWK] = {}
        # (kid, alg) -> the key found for them in the current key set: a token seen
        # for the first time costs one lookup, not a search of the set.
        self._found: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._flight: SingleFlight[str, None] = SingleFlight()
        self._backoff = Backoff(clock=clock)
        self.fetches = 0
        self.fetched_at: float | None = None  # wall-clock time of the last good fetch

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        fetches = self.fetches
        if self._keys is None or self._clock() >= self._fresh_until:
            await self._refresh_or_keep_stale()
        found = self._found.get((kid, alg))
        if found is not None:
            return found
        jwk = self._find(kid, alg)
        if jwk is None and self.fetches == fetches:  # keys not fetched for this very call
            now = self._clock()
            if now - self._last_kid_refetch >= self._cooldown:
                # OIDC Core §10.1.1: an unfamiliar kid means the keys may have rotated.
                previous, self._last_kid_refetch = self._last_kid_refetch, now
                try:
                    await self._flight.run("fetch", self._fetch)
                except BackendUnavailableError:
                    if self.fetches == fetches:  # refused by the backoff: not a refetch
                        self._last_kid_refetch = previous
                    raise
                jwk = self._find(kid, alg)
        if jwk is None:
            error = InvalidToken(reason="no key for kid and alg")
            # Remembered no longer than until the next refetch may find the key.
            error.remember_for = max(0.0, self._last_kid_refetch + self._cooldown - self._clock())
            raise error
        cache_key = (id(jwk), alg)
        parsed = self._parsed.get(cache_key)
        if parsed is None:
            try:
                parsed = jwt.PyJWK(dict(jwk), algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                logger.warning("unusable key in %s (kid=%s): %s", self._uri, kid, exc)
                raise InvalidToken(reason="unusable key") from exc
            self._parsed[cache_key] = parsed
        if len(self._found) < MAX_KEYS:  # bounded: kids come from tokens
            self._found[(kid, alg)] = parsed
        return parsed

    def _find(self, kid: str | None, alg: str) -> Mapping[str, Any] | None:
        if self._keys is None:
            return None
        candidates = [k for k in self._keys.get(kid, ()) if _key_allows(k, alg)]
        if kid is None and not candidates:
            # No kid in the token: acceptable only when exactly one key fits.
            candidates = [k for keys in self._keys.values() for k in keys if _key_allows(k, alg)]
        return candidates[0] if len(candidates) == 1 else None

    async def _refresh_or_keep_stale(self) -> None:
        usable = self._keys is not None and self._clock() < self._usable_until
        if usable and "fetch" in self._flight:
            return  # one request refreshes; the others go on with the keys they have
        fetches = self.fetches
        try:
            await self._flight.run("fetch", self._fetch)
        except BackendUnavailableError:
            if self._keys is None or self._clock() >= self._usable_until:
                raise
            if self.fetches != fetches:  # once per failed fetch, not per request
                logger.warning(
                    "JWKS refresh failed for %s; using the last good keys", self._issuer.issuer
                )

    async def _fetch(self) -> None:
        # A failing server is not asked again at once; one deadline for it all.
        await self._backoff.call(self._fetch_now, deadline=self._deadline, what="JWKS")

    async def _fetch_now(self) -> None:
        self.fetches += 1
        if self._uri is None:
            metadata = await discover(self._client, self._issuer.issuer, timeout=self._timeout)
            uri = metadata.get("jwks_uri")
            if not isinstance(uri, str):
                raise BackendUnavailableError("authorization server metadata has no jwks_uri")
            try:
                self._uri = check_url(uri, "jwks_uri")
            except ConfigurationError as exc:
                raise BackendUnavailableError(str(exc)) from exc
        with backend_call("jwks"):
            document, headers = await get_json(
                self._client, self._uri, "JWKS", timeout=self._timeout
            )
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise BackendUnavailableError("JWKS has no keys array")
        by_kid: dict[str | None, list[Mapping[str, Any]]] = {}
        for jwk in keys[:MAX_KEYS]:
            if isinstance(jwk, dict) and not ({"d", "k"} & jwk.keys()):  # public keys only
                kid = jwk.get("kid")
                by_kid.setdefault(kid if isinstance(kid, str) else None, []).append(jwk)
        now = self._clock()
        self.fetched_at = time.time()
        self._keys = by_kid
        self._parsed.clear()
        self._found.clear()
        self._fresh_until = now + self._ttl_from(headers)
        self._usable_until = self._fresh_until + self._max_stale

    def _ttl_from(self, headers: httpx.Headers) -> float:
        # RFC 9111 §5.2.2: no-store and no-cache forbid reuse without asking again;
        # the least TTL is the closest a key set used on every request can come.
        directives = [d.strip().lower() for d in headers.get("cache-control", "").split(",")]
        if "no-store" in directives or "no-cache" in directives:
            return self._min_ttl
        for directive in directives:
            name, _, value = directive.partition("=")
            if name.strip() == "max-age" and value.strip().isdigit():
                return min(max(float(value.strip()), self._min_ttl), self._max_ttl)
        return self._ttl


class JWTIntrospector:
    """Validates JWT access tokens locally, against each trusted issuer's published keys.

    Args:
        *issuers: The issuers whose tokens are accepted, each with its own keys.
        http_client: The client for discovery and JWKS requests: an
            `httpx.AsyncClient` or an `httpx2.AsyncClient`, with the application's
            proxies, CA bundle or client certificate (docs/http-clients.md). One is
            made (and closed by `aclose()`) if none is given; one given is not closed.
        timeout: Seconds for each step of one request (connect, write, each read),
            set on every request, whatever the client's own timeout.
        leeway: Seconds of clock skew allowed for `exp`, `nbf` and `iat`. One rule
            end to end: a token is accepted, and its grant cached, until `exp` +
            `leeway` and no longer (`TokenVerifier` takes the leeway from here).
        max_token_size: Longer tokens are refused unread.
        jwks_ttl: Seconds a key set is used when its response has no `max-age`.
        jwks_min_ttl: Lower bound on a `Cache-Control: max-age`.
        jwks_max_ttl: Upper bound on a `Cache-Control: max-age`.
        refresh_cooldown: Least seconds between two fetches caused by unknown `kid`s,
            so forged `kid`s cannot flood the authorization server.
        max_stale: Seconds the last good keys stay in use after they expire while the
            key set cannot be fetched; after that, requests get 503.
        deadline: Seconds one fetch of the metadata and key set may take in all,
            however slowly the server sends; then the request gets 503. A failed
            fetch is not retried for a short, growing, jittered time (1 s, then up
            to 30 s), so an outage is not amplified by this API's traffic.
    """

    def __init__(
        self,
        *issuers: TrustedIssuer,
        http_client: AsyncHTTPClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        leeway: float | timedelta = 30,
        max_token_size: int = MAX_TOKEN_SIZE,
        jwks_ttl: float = 300,
        jwks_min_ttl: float = 60,
        jwks_max_ttl: float = 86_400,
        refresh_cooldown: float = 30,
        max_stale: float = 3600,
        deadline: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuers:
            raise ConfigurationError("at least one trusted issuer is required")
        if len({i.issuer for i in issuers}) != len(issuers):
            raise ConfigurationError("each issuer may be trusted once")
        if http_client is not None:
            check_client(http_client)
        if isinstance(leeway, timedelta):
            leeway = leeway.total_seconds()
        if leeway < 0 or deadline <= 0 or timeout <= 0:
            raise ConfigurationError(
                "leeway cannot be negative; deadline and timeout must be positive"
            )
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=timeout)
        self.leeway = float(leeway)
        self._max_size = max_token_size
        self._issuers: dict[str, tuple[TrustedIssuer, _KeySet]] = {
            issuer.issuer: (
                issuer,
                _KeySet(
                    issuer,
                    self._client,
                    timeout=timeout,
                    ttl=jwks_ttl,
                    min_ttl=jwks_min_ttl,
                    max_ttl=jwks_max_ttl,
                    refresh_cooldown=refresh_cooldown,
                    max_stale=max_stale,
                    deadline=deadline,
                    clock=clock,
                ),
            )
            for issuer in issuers
        }
        self._only = issuers[0].issuer if len(issuers) == 1 else None

    @classmethod
    def from_issuer(
        cls,
        issuer: str,
        *,
        audience: str | Collection[str],
        http_client: AsyncHTTPClient | None = None,
        **options: Any,
    ) -> JWTIntrospector:
        """Trust one issuer, finding its keys through discovery.

        `options` are `TrustedIssuer` fields (`algorithms`, `accept_jwt_typ`,
        `required_claims`, `scope_claims`, `jwks_uri`) and `JWTIntrospector`
        arguments (`leeway`, `refresh_cooldown`, ...).
        """
        fields = {"jwks_uri", "algorithms", "accept_jwt_typ", "required_claims", "scope_claims"}
        trusted = TrustedIssuer(
            issuer, audience, **{k: v for k, v in options.items() if k in fields}
        )
        rest = {k: v for k, v in options.items() if k not in fields}
        return cls(trusted, http_client=http_client, **rest)

    def __repr__(self) -> str:
        return f"JWTIntrospector(issuers={list(self._issuers)!r})"

    def key_fetches(self, issuer: str) -> int:
        """How many times the issuer's metadata or keys were fetched (for monitoring and tests)."""
        return self._issuers[issuer][1].fetches

    async def introspect(self, token: str) -> TokenInfo:
        """Validate `token`; raise `InvalidToken` (401) or `BackendUnavailableError` (503)."""
        if len(token) > self._max_size:
            raise InvalidToken(reason="token too large")
        if not _is_compact_jws(token):
            # RFC 8725bis: anything but compact serialization (JWE, JSON) is refused.
            raise InvalidToken(reason="not a compact JWS")
        header = _segment(token, 0, "malformed header")
        alg, typ, kid = header.get("alg"), header.get("typ"), header.get("kid")
        trusted, keys = self._issuer_of(token)
        if not isinstance(alg, str) or alg not in trusted.algorithms:
            raise InvalidToken(reason="algorithm not allowed")
        self._check_typ(trusted, typ)
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken(reason="malformed kid")
        # jku, x5u, x5c and jwk headers are never consulted: keys come only from the
        # issuer's JWKS (RFC 8725 §3.10).
        key = await keys.key(kid, alg)
        start = time.thread_time()  # CPU: time the machine gave others is not ours
        try:
            return self._check(token, key, alg, trusted, typ)
        finally:
            _turns.charge(time.thread_time() - start)

    def _check(
        self, token: str, key: jwt.PyJWK, alg: str, trusted: TrustedIssuer, typ: object
    ) -> TokenInfo:
        """The signature and the claims: CPU work, in one step of the event loop."""
        try:
            claims = _DECODER.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=trusted.audiences,
                issuer=trusted.issuer,
                leeway=self.leeway,
                options={"require": list(trusted.required_claims)},
            )
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(reason=_reason(exc)) from exc
        if claims.get("iss") != trusted.issuer:  # exact, whatever the decoder did
            raise InvalidToken(reason="issuer mismatch")
        return TokenInfo.from_claims(
            claims,
            scope_claims=trusted.scope_claims,
            token_type=typ if isinstance(typ, str) else None,
        )

    def _issuer_of(self, token: str) -> tuple[TrustedIssuer, _KeySet]:
        if self._only is not None:
            return self._issuers[self._only]
        issuer = _segment(token, 1, "malformed payload").get("iss")
        entry = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if entry is None:
            raise InvalidToken(reason="untrusted issuer")
        return entry

    @staticmethod
    def _check_typ(trusted: TrustedIssuer, typ: object) -> None:
        # RFC 9068 §4: typ must be at+jwt (media types compare case-insensitively).
        value = typ.lower() if isinstance(typ, str) else None
        if value in _AT_JWT:
            return
        if trusted.accept_jwt_typ and (value is None or value in _OTHER_JWT):
            return
        raise InvalidToken(reason="wrong typ")

    async def aclose(self) -> None:
        """Close the HTTP client if the introspector made it."""
        if self._owns_client:
            await self._client.aclose()


def _segment(token: str, index: int, reason: str) -> dict[str, Any]:
    """One JSON segment of a token whose alphabet `_is_compact_jws` has already checked.

    Decoding it here rather than with PyJWT's helpers spares a second character-by-
    character validation of the whole token on every first sight.
    """
    part = token.split(".", 2)[index]
    try:
        text = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
        # Nesting needs an opening bracket per level: with few of them (a header has
        # one), the depth bound holds without walking the decoded value.
        shallow = text.count("{") + text.count("[") <= MAX_JSON_DEPTH
        value = json.loads(text)
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: deeply nested
        raise InvalidToken(reason=reason) from None
    if not isinstance(value, dict) or not (shallow or _nested_at_most(value, MAX_JSON_DEPTH)):
        raise InvalidToken(reason=reason)
    return value


def _nested_at_most(value: object, limit: int) -> bool:
    """Whether `value` nests objects and arrays `limit` deep or less (the top counts one).

    Iterative, and over a segment the token's size already bounds; the JSON decoder's
    own recursion limit differs between Python versions, this bound does not.
    """
    level: list[object] = [value]
    for _ in range(limit):
        inner: list[object] = []
        for item in level:
            if isinstance(item, dict):
                inner.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                inner.extend(v for v in item if isinstance(v, dict | list))
        if not inner:
            return True
        level = inner
    return False


def _reason(exc: jwt.InvalidTokenError) -> str:
    reasons: Sequence[tuple[type[Exception], str]] = (
        (jwt.ExpiredSignatureError, "expired"),
        (jwt.ImmatureSignatureError, "not yet valid"),
        (jwt.InvalidAudienceError, "wrong audience"),
        (jwt.InvalidIssuerError, "wrong issuer"),
        (jwt.InvalidSignatureError, "bad signature"),
        (jwt.MissingRequiredClaimError, "missing claim"),
        (jwt.InvalidIssuedAtError, "bad iat"),
    )
    for kind, reason in reasons:
        if isinstance(exc, kind):
            return reason
    return "invalid"
