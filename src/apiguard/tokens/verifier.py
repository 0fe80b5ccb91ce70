"""`TokenVerifier`: from a presented bearer token to a `Principal`, through a bounded cache.

A token seen before costs a SHA-256 and a dictionary lookup. A new one goes to the
introspector once, however many requests carry it at the same moment.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from apiguard._cache import CacheOptions, VerdictCache
from apiguard._observe import cache_hit, cache_miss
from apiguard.exceptions import ConfigurationError, InvalidToken
from apiguard.keys.record import utcnow
from apiguard.principal import Grant, Principal, ScopeSets
from apiguard.tokens import _turns
from apiguard.tokens.info import TokenInfo
from apiguard.types import TokenIntrospector

if TYPE_CHECKING:
    from apiguard.tokens.shared_cache import RedisTokenCache

__all__ = ["TokenVerifier"]

logger = logging.getLogger("apiguard.tokens")

MAX_PRESENTED_TOKEN = 65_536
"""Bytes of a presented token hashed and checked at most; longer ones are refused unread.

Introspectors refuse tokens past their own, smaller `max_token_size` (8 KiB by
default); this bound holds before the cache lookup, whatever the introspector, so a
server that passes huge headers cannot make each request hash megabytes.
"""

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_B64TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
# Bearer grants carry no API-key metadata: one empty mapping for all of them.
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _is_b64token(raw: bytes) -> bool:
    """What `_B64TOKEN` matches, with one pass in C over the bytes."""
    stripped = raw.rstrip(b"=")
    return bool(stripped) and not stripped.translate(None, _B64TOKEN_CHARS)


class TokenVerifier:
    """Verifies bearer tokens with an introspector, caching the outcome.

    Cache keys are SHA-256 digests of tokens (RFC 9700 §4.9.3: tokens are not stored
    in plaintext). A grant is reused for `cache.ttl` seconds and never past the
    token's `exp` + `leeway` (RFC 7662 §4), the moment the introspector too stops
    accepting it; refusals for `cache.negative_ttl`; outages never. A grant holds
    the token's `cnf` claim, if any, in `Principal.claims`: whether the request
    proves possession of the bound key (DPoP, RFC 9449; mTLS, RFC 8705) is for the
    authenticator to check on every request, never cached. With
    `cache.stale_if_error` a grant may answer an outage of the introspector that
    much past its `ttl`, still never past `exp` + `leeway`.

    Args:
        introspector: Verifies tokens (`JWTIntrospector`, `RemoteIntrospector`, ...).
        cache: Cache sizes and lifetimes.
        leeway: Seconds of clock skew allowed past `exp`; by default the
            introspector's own `leeway` attribute (30 s for apiguard's), or 0 for an
            introspector without one.
        token_cache: A cache shared with other processes (`RedisTokenCache`), asked
            before the introspector on a miss here; a verdict from it is trusted
            here no longer than it is there.
    """

    def __init__(
        self,
        introspector: TokenIntrospector,
        *,
        cache: CacheOptions | None = None,
        leeway: float | None = None,
        token_cache: RedisTokenCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.introspector = introspector
        self.token_cache = token_cache
        if leeway is None:
            leeway = float(getattr(introspector, "leeway", 0.0))
        if leeway < 0:
            raise ConfigurationError("leeway cannot be negative")
        self.leeway = leeway
        self._verdicts: VerdictCache[bytes, Grant] = VerdictCache(cache or CacheOptions(), clock)
        self._clock = clock
        # Tokens of one client grant the same scopes: one set and one AuthCredentials
        # for all of them, so that a cached token costs less than a kilobyte.
        self._scope_sets = ScopeSets()

    def cached(self, raw: bytes) -> Grant | None:
        """The grant of a presented token whose verification is cached and live, else `None`.

        No I/O, never raises: a miss, a cached refusal or an oversized token is
        `None`, for `verify` to decide.
        """
        if len(raw) > MAX_PRESENTED_TOKEN:
            return None
        return self._verdicts.positive.get(hashlib.sha256(raw).digest(), self._clock())

    async def verify(self, raw: bytes) -> Grant:
        """Return the principal and credentials for a presented token.

        Raises:
            InvalidToken: The token is malformed, inactive, expired or otherwise invalid.
            BackendUnavailableError: The introspector could not get an answer.
        """
        if len(raw) > MAX_PRESENTED_TOKEN:
            raise InvalidToken(reason="token too large")
        digest = hashlib.sha256(raw).digest()
        now = self._clock()
        verdicts = self._verdicts
        grant = verdicts.positive.get(digest, now)
        if grant is not None:
            cache_hit()
            return grant
        reason = verdicts.negative.get(digest, now)
        if reason is not None:
            cache_hit()
            raise InvalidToken(reason=reason)
        cache_miss()
        return await verdicts.fill_or_stale(
            digest,
            lambda generation: self._lookup(raw, digest, generation),
            backend="token introspection",
            describe=_describe,
            log=logger,
        )

    async def _lookup(self, raw: bytes, digest: bytes, generation: int) -> Grant:
        # A burst of new tokens takes turns with the rest of the loop. The wait is in
        # the single flight: other requests with this token wait for this check.
        if _turns.busy():
            await _turns.wait()
        if not _is_b64token(raw):
            raise InvalidToken(reason="malformed")
        trust_for = None
        try:
            if self.token_cache is None:
                info = await self.introspector.introspect(raw.decode("ascii"))
            else:
                info, trust_for = await self.token_cache.introspect(
                    digest, raw.decode("ascii"), self.introspector.introspect
                )
            if not info.active:
                raise InvalidToken(reason="inactive")
            lifetime = None
            if info.expires_at is not None:
                lifetime = (info.expires_at - utcnow()).total_seconds() + self.leeway
                if lifetime <= 0:
                    raise InvalidToken(reason="expired")
        except InvalidToken as exc:
            self._verdicts.refuse(digest, exc.reason, generation, lifetime=exc.remember_for)
            raise
        grant = self._grant(info)
        self._verdicts.allow(digest, grant, generation, lifetime=lifetime, trust_for=trust_for)
        return grant

    def _grant(self, info: TokenInfo) -> Grant:
        scopes, credentials = self._scope_sets.shared(info.scopes)
        claims = info.claims
        if info.cnf is not None and "cnf" not in claims:
            # The binding (RFC 7800 `cnf`) is checked on every request, after this
            # cached grant, by the authenticator: it travels with the claims.
            claims = MappingProxyType({**claims, "cnf": info.cnf})
        principal = Principal(
            identity=info.subject or info.client_id or "",
            kind="bearer",
            name=info.client_id or info.subject or "",
            scopes=scopes,
            client_id=info.client_id,
            subject=info.subject,
            metadata=_NO_METADATA,
            claims=claims,
        )
        return principal, credentials


def _describe(grant: Grant) -> str:
    principal = grant[0]
    return f"client_id={principal.client_id}, sub={principal.subject}"
