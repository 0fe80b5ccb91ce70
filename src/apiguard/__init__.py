"""apiguard: API keys and OAuth 2.0 bearer tokens as pure ASGI middleware."""

from __future__ import annotations

from apiguard._cache import CacheOptions
from apiguard._core import AuthMiddleware
from apiguard.authenticators import APIKeyAuth, BearerAuth, DPoPAuth
from apiguard.decorators import requires_scopes
from apiguard.events import AuthEvent
from apiguard.exceptions import (
    ApiGuardError,
    AuthError,
    BackendUnavailableError,
    ConfigurationError,
    InsufficientScope,
    InvalidCredentials,
    InvalidDPoPProof,
    InvalidRequest,
    InvalidToken,
    KeyNotFoundError,
    KeyStateError,
    MissingCredentials,
    RateLimitExceeded,
    UseDPoPNonce,
)
from apiguard.keys.record import KeyRecord
from apiguard.keys.usage import UsageOptions
from apiguard.metadata import ProtectedResourceMetadata
from apiguard.middleware import APIKeyMiddleware, BearerTokenMiddleware
from apiguard.policies import Policy, ScopeRule, ScopeRules
from apiguard.principal import ANONYMOUS, CredentialKind, Principal
from apiguard.types import KeyStore, TokenIntrospector, UsageStore

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "APIKeyAuth",
    "APIKeyMiddleware",
    "ApiGuardError",
    "AuthError",
    "AuthEvent",
    "AuthMiddleware",
    "BackendUnavailableError",
    "BearerAuth",
    "BearerTokenMiddleware",
    "CacheOptions",
    "ConfigurationError",
    "CredentialKind",
    "DPoPAuth",
    "InsufficientScope",
    "InvalidCredentials",
    "InvalidDPoPProof",
    "InvalidRequest",
    "InvalidToken",
    "KeyNotFoundError",
    "KeyRecord",
    "KeyStateError",
    "KeyStore",
    "MissingCredentials",
    "Policy",
    "Principal",
    "ProtectedResourceMetadata",
    "RateLimitExceeded",
    "ScopeRule",
    "ScopeRules",
    "TokenIntrospector",
    "UsageOptions",
    "UsageStore",
    "UseDPoPNonce",
    "__version__",
    "requires_scopes",
]
