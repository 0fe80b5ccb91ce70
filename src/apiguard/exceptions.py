"""The apiguard error tree.

Every error apiguard raises derives from `ApiGuardError`::

    ApiGuardError
    ├── ConfigurationError        bad options, unknown store URL, missing extra (at startup)
    ├── AuthError                 a refused request: carries status, error code, description
    │   ├── InvalidRequest        400 invalid_request: two credentials, malformed header
    │   ├── MissingCredentials    401, challenge without error details (RFC 6750 §3.1)
    │   ├── InvalidCredentials    401: malformed, unknown, expired or revoked API key
    │   ├── InvalidToken          401 invalid_token (RFC 6750 §3.1)
    │   ├── InvalidDPoPProof      401 invalid_dpop_proof (RFC 9449 §7.1)
    │   ├── UseDPoPNonce          401 use_dpop_nonce, with a fresh `DPoP-Nonce` (RFC 9449 §9)
    │   ├── InsufficientScope     403 insufficient_scope, with the required scopes
    │   └── RateLimitExceeded     429: a rate limit, quota or failed-authentication limit
    ├── BackendUnavailableError   503: a key store or authorization server cannot be reached
    ├── KeyNotFoundError          a management call named a key id the store does not hold
    └── KeyStateError             a management call that the key's state forbids

Messages are for operators. They never hold a key, a secret or a token; response
bodies carry only the error code and a fixed description.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = [
    "ApiGuardError",
    "AuthError",
    "BackendUnavailableError",
    "ConfigurationError",
    "InsufficientScope",
    "InvalidCredentials",
    "InvalidDPoPProof",
    "InvalidRequest",
    "InvalidToken",
    "KeyNotFoundError",
    "KeyStateError",
    "MissingCredentials",
    "RateLimitExceeded",
    "UseDPoPNonce",
]


class ApiGuardError(Exception):
    """Base class of every error raised by apiguard."""


class ConfigurationError(ApiGuardError):
    """apiguard was set up wrongly: a bad option, an unknown store URL or a missing extra."""


class KeyNotFoundError(ApiGuardError):
    """A key-management call named a key id that the store does not hold."""


class KeyStateError(ApiGuardError):
    """A key-management call that the key's state forbids (rotating a revoked key, a taken id)."""


class BackendUnavailableError(ApiGuardError):
    """A key store or an authorization server could not be reached.

    The middleware answers 503 with `Retry-After`: it fails closed, never open and
    never with a 401 that would make clients throw away good credentials.
    """


class AuthError(ApiGuardError):
    """A request was refused.

    Attributes:
        status_code: The HTTP status of the refusal.
        error: The error code sent in the challenge and the body, or `None` when the
            request carried no credentials (RFC 6750 §3.1: no error details then).
        description: A fixed, client-safe description of the refusal.
        reason: A finer reason for logs only (for example `"revoked"`); never sent.
        credential_id: A non-secret id of the refused credential (an API key id),
            for logs only, when one is known.
        remember_for: The longest a verification cache may keep this refusal, in
            seconds, when that is shorter than its negative TTL (an unknown `kid`
            that a key set refetch may soon make known); `None` for no limit.
        headers: Response headers the refusal carries besides the challenge
            (`DPoP-Nonce`).
    """

    status_code: int = 401
    error: str | None = None
    description: str = "Authentication failed."

    def __init__(self, description: str | None = None, *, reason: str | None = None) -> None:
        if description is not None:
            self.description = description
        self.reason = reason or self.error or "refused"
        self.credential_id: str | None = None
        self.remember_for: float | None = None
        self.headers: tuple[tuple[str, str], ...] = ()
        super().__init__(self.description)


class InvalidRequest(AuthError):
    """The request is malformed, for example it carries two credentials."""

    status_code = 400
    error = "invalid_request"
    description = "The request carries malformed or conflicting credentials."


class MissingCredentials(AuthError):
    """The request carries no credentials at all."""

    status_code = 401
    error = None
    description = "Authentication is required."

    def __init__(self, description: str | None = None, *, reason: str | None = None) -> None:
        super().__init__(description, reason=reason or "missing")


class InvalidCredentials(AuthError):
    """The API key is malformed, unknown, expired or revoked; the response does not say which."""

    status_code = 401
    error = "invalid_key"
    description = "The API key is invalid."


class InvalidToken(AuthError):
    """The bearer token is expired, revoked, malformed or otherwise invalid."""

    status_code = 401
    error = "invalid_token"
    description = "The access token is invalid."


class InvalidDPoPProof(AuthError):
    """The DPoP proof is missing, malformed, replayed or does not fit the request (RFC 9449 §4.3)."""

    status_code = 401
    error = "invalid_dpop_proof"
    description = "The DPoP proof is invalid."


class UseDPoPNonce(AuthError):
    """The resource server requires a DPoP nonce: retry with the one in `DPoP-Nonce` (RFC 9449 §9)."""

    status_code = 401
    error = "use_dpop_nonce"
    description = "Resource server requires nonce in DPoP proof."

    def __init__(self, nonce: str, *, reason: str | None = None) -> None:
        super().__init__(reason=reason or "nonce required")
        # RFC 9449 §8.2: responses carrying a nonce are not to be cached.
        self.headers = (("dpop-nonce", nonce),)


class InsufficientScope(AuthError):
    """The credentials are valid but lack a scope the operation requires.

    Attributes:
        scopes: The scopes the operation requires, all of them (sent in one challenge).
    """

    status_code = 403
    error = "insufficient_scope"
    description = "The request requires more privileges than the credentials grant."

    def __init__(
        self,
        scopes: Collection[str] = (),
        description: str | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        self.scopes = tuple(sorted(scopes))
        super().__init__(description, reason=reason)


class RateLimitExceeded(AuthError):
    """A rate limit, quota or failed-authentication limit refused the request: 429.

    The response carries no challenge (the credentials are not at fault) but
    `Retry-After` and, where the policy sends them, the RateLimit fields.

    Attributes:
        retry_after: Whole seconds until the request may succeed (RFC 9110 §10.2.3).
        headers: Response header fields sent with the refusal, `Retry-After` included.
    """

    status_code = 429
    error = "rate_limited"
    description = "Too many requests; retry later."

    def __init__(
        self,
        retry_after: int,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(reason=reason)
        self.retry_after = max(0, retry_after)
        self.headers = (("retry-after", str(self.retry_after)), *headers)
