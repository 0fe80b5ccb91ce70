"""OAuth 2.0 bearer tokens: introspectors that turn a token into a `TokenInfo`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apiguard.tokens.composite import CompositeIntrospector
from apiguard.tokens.discovery import discover, metadata_urls
from apiguard.tokens.dpop import (
    DEFAULT_DPOP_ALGORITHMS,
    DPoPNonces,
    DPoPProofChecker,
    jwk_thumbprint,
)
from apiguard.tokens.info import DEFAULT_SCOPE_CLAIMS, TokenInfo, scopes_from_claims
from apiguard.tokens.introspection import ClientAuthMethod, RemoteIntrospector
from apiguard.tokens.jwks import (
    DEFAULT_ALGORITHMS,
    DEFAULT_REQUIRED_CLAIMS,
    JWTIntrospector,
    TrustedIssuer,
)
from apiguard.tokens.mtls import ClientCertificates, certificate_thumbprint
from apiguard.tokens.replay import MemoryReplayStore, RedisReplayStore, ReplayStore
from apiguard.tokens.verifier import TokenVerifier
from apiguard.types import TokenIntrospector

if TYPE_CHECKING:
    from apiguard.tokens.shared_cache import RedisTokenCache

__all__ = [
    "DEFAULT_ALGORITHMS",
    "DEFAULT_DPOP_ALGORITHMS",
    "DEFAULT_REQUIRED_CLAIMS",
    "DEFAULT_SCOPE_CLAIMS",
    "ClientAuthMethod",
    "ClientCertificates",
    "CompositeIntrospector",
    "DPoPNonces",
    "DPoPProofChecker",
    "JWTIntrospector",
    "MemoryReplayStore",
    "RedisReplayStore",
    "RedisTokenCache",
    "RemoteIntrospector",
    "ReplayStore",
    "TokenInfo",
    "TokenIntrospector",
    "TokenVerifier",
    "TrustedIssuer",
    "certificate_thumbprint",
    "discover",
    "jwk_thumbprint",
    "metadata_urls",
    "scopes_from_claims",
]


def __getattr__(name: str) -> Any:
    # RedisTokenCache needs redis-py (the `redis` extra): imported on first use.
    if name == "RedisTokenCache":
        from apiguard.tokens.shared_cache import RedisTokenCache

        return RedisTokenCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
