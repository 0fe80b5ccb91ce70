"""apiguard: API keys and OAuth 2.0 bearer tokens as pure ASGI middleware."""

from __future__ import annotations

from apiguard._cache import CacheOptions
from apiguard.exceptions import (
    ApiGuardError,
    AuthError,
    BackendUnavailableError,
    ConfigurationError,
    InsufficientScope,
    InvalidCredentials,
    InvalidRequest,
    InvalidToken,
    KeyNotFoundError,
    KeyStateError,
    MissingCredentials,
)
from apiguard.keys.record import KeyRecord
from apiguard.middleware import APIKeyMiddleware
from apiguard.principal import ANONYMOUS, CredentialKind, Principal
from apiguard.types import KeyStore

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "APIKeyMiddleware",
    "ApiGuardError",
    "AuthError",
    "BackendUnavailableError",
    "CacheOptions",
    "ConfigurationError",
    "CredentialKind",
    "InsufficientScope",
    "InvalidCredentials",
    "InvalidRequest",
    "InvalidToken",
    "KeyNotFoundError",
    "KeyRecord",
    "KeyStateError",
    "KeyStore",
    "MissingCredentials",
    "Principal",
    "__version__",
]
