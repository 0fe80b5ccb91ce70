"""`CompositeIntrospector`: JWTs validated locally, other tokens introspected."""

from __future__ import annotations

from apiguard.tokens.info import TokenInfo
from apiguard.tokens.jwks import looks_like_jwt
from apiguard.types import TokenIntrospector

__all__ = ["CompositeIntrospector"]


class CompositeIntrospector:
    """Accept JWT and opaque access tokens on one API.

    Tokens shaped like a JWS (three base64url parts with a JSON header) go to the
    local validator; everything else to the remote one.

    Args:
        jwt: Validates JWT access tokens (a `JWTIntrospector`).
        remote: Introspects the other tokens (a `RemoteIntrospector`).
        introspect_jwts: Also introspect JWTs after they validate locally, so that
            a revocation at the authorization server is seen (within the cache TTL).
            Both must accept the token: the authorization server must introspect
            its JWTs (some, oidc-provider among them, answer 400
            `unsupported_token_type`, and every JWT is then refused with 401).
    """

    def __init__(
        self, *, jwt: TokenIntrospector, remote: TokenIntrospector, introspect_jwts: bool = False
    ) -> None:
        self._jwt = jwt
        self._remote = remote
        self._introspect_jwts = introspect_jwts
        # The clock skew allowed past `exp`: the smaller of the two, so that a cached
        # grant never outlives what either would accept (with unequal leeways, a JWT
        # is refused from the smaller one on).
        self.leeway = min(float(getattr(i, "leeway", 0.0)) for i in (jwt, remote))

    async def introspect(self, token: str) -> TokenInfo:
        """Route `token` to the validator its shape calls for."""
        if not looks_like_jwt(token):
            return await self._remote.introspect(token)
        info = await self._jwt.introspect(token)
        if self._introspect_jwts and info.active:
            remote = await self._remote.introspect(token)
            if not remote.active:
                return remote
        return info

    async def aclose(self) -> None:
        """Close both introspectors."""
        await self._jwt.aclose()
        await self._remote.aclose()
