"""`AuthEvent`: one record per authentication decision, for logs, hooks, metrics and traces.

Every request apiguard decides on (http or websocket, allowed or refused) makes
one event, when something observes it: the `apiguard` loggers at the level the
decision is logged at, an `on_event` hook, `PrometheusMetrics` or
`OpenTelemetryTracing`. Requests on excluded paths and methods, and CORS
preflights passed through, are not decided and make no event, unless the app
refuses them with an `AuthError` (a refused event then).

An event never holds a key, a secret or a token: credentials are named by their
key id or client id. See docs/observability.md for the fields and their log names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BACKENDS", "REFUSAL_REASONS", "AuthEvent", "EventHook", "reason_label"]

BACKENDS = ("store", "jwks", "discovery", "introspection", "shared_cache", "replay_store")
"""The backends whose calls events count: key store, JWKS, authorization server
metadata, RFC 7662 introspection, the shared (Redis) token cache, the shared (Redis)
DPoP proof replay store."""

REFUSAL_REASONS = frozenset(
    {
        # Credentials absent, malformed, twice, or in a path not in normal form.
        "missing",
        "several credentials",
        "credential sent twice",
        "empty bearer token",
        "path not in normal form",
        "invalid_request",
        # API keys.
        "malformed",
        "unknown prefix",
        "bad checksum",
        "unknown key",
        "wrong secret",
        "revoked",
        "expired",
        "invalid_key",
        # Bearer tokens.
        "not a compact JWS",
        "algorithm not allowed",
        "malformed kid",
        "malformed payload",
        "malformed header",
        "malformed time claim",
        "untrusted issuer",
        "issuer mismatch",
        "wrong typ",
        "no key for kid and alg",
        "unusable key",
        "not yet valid",
        "wrong audience",
        "wrong issuer",
        "bad signature",
        "missing claim",
        "bad iat",
        "invalid",
        "inactive",
        "wrong token_type",
        "token too large",
        "sender-constrained token without proof",
        "introspection: invalid_request",
        "introspection: invalid_token",
        "introspection: unsupported_token_type",
        "introspection: rejected",
        "invalid_token",
        # Sender-constrained tokens: DPoP proofs (RFC 9449), certificates (RFC 8705).
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "nonce required",
        "no DPoP proof",
        "several DPoP headers",
        "empty DPoP token",
        "DPoP-bound token presented as Bearer",
        "DPoP key does not match cnf.jkt",
        "replayed proof",
        "no usable Host header",
        "proof too large",
        "typ is not dpop+jwt",
        "no jwk",
        "signature does not verify",
        "claims are not JSON",
        "claims are not an object",
        "header is not JSON",
        "header is not an object",
        "jwk holds a private key",
        "jwk does not fit alg",
        "jwk is not a valid key",
        "RSA key too small",
        "jti missing or too long",
        "htm does not match",
        "htu does not match",
        "iat missing",
        "iat outside the window",
        "ath does not match the token",
        "certificate does not match cnf.x5t#S256",
        # Policies and route-level checks.
        "missing scope",
        "insufficient_scope",
        "rate limit",
        "quota",
        "too many failed authentications",
        "rate_limited",
        # 503s, and an `AuthError` raised without a reason.
        "backend unavailable",
        "configuration error",
        "refused",
    }
)
"""Every refusal reason apiguard gives. Metrics label any other reason `other`, so
that their label values stay bounded whatever an extension raises."""


def reason_label(reason: str | None) -> str:
    """`reason` if it is one of `REFUSAL_REASONS`, `"other"` otherwise; `""` for none."""
    if reason is None:
        return ""
    return reason if reason in REFUSAL_REASONS else "other"


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One authentication decision.

    Attributes:
        outcome: `"allowed"` or `"refused"`.
        reason: Why it was refused (one of `REFUSAL_REASONS` for apiguard's own
            refusals); `None` when allowed.
        status: The HTTP status of the refusal (400, 401, 403, 429, 503, ...);
            `None` when allowed, since the app answers.
        connection: `"http"` or `"websocket"`.
        method: The HTTP method; `None` for a websocket.
        route: The matched route's path template (`/items/{item_id}`) when the
            app's router knows one, else the request path; escaped (no line breaks
            or other unprintable characters).
        credential_kind: `"api_key"`, `"bearer"` (or another authenticator's
            scheme, lower-case) for the credential presented; `"anonymous"` for
            the anonymous grant of optional mode; `None` when none was found.
        credential_id: The API key id, or the token's client id (or subject);
            `None` when unknown (an unknown token, a missing credential).
        issuer: The token's issuer (`iss`) when allowed; `None` otherwise.
        latency: Seconds the decision took (finding and checking the credential,
            the policies); `None` when the decision was not timed (see
            docs/observability.md).
        cache: `"hit"` when a cached verdict decided, `"miss"` when the
            credential was checked anew, `None` when no cache was asked (no
            credential, or one refused before any lookup) or the decision was not
            timed.
        backend_calls: The backend calls this request made, in order (each one of
            `BACKENDS`); empty on a cache hit; `None` when not counted.
    """

    outcome: Literal["allowed", "refused"]
    reason: str | None
    status: int | None
    connection: str
    method: str | None
    route: str
    credential_kind: str | None
    credential_id: str | None
    issuer: str | None
    latency: float | None
    cache: Literal["hit", "miss"] | None
    backend_calls: tuple[str, ...] | None

    def log_fields(self) -> dict[str, Any]:
        """The event as `logging` `extra` attributes, each named `apiguard_<field>`.

        Values are strings, numbers, lists of strings or `None`, so that JSON
        formatters and the OpenTelemetry logging bridge take them as they are.
        """
        return {
            "apiguard_outcome": self.outcome,
            "apiguard_reason": self.reason,
            "apiguard_status": self.status,
            "apiguard_connection": self.connection,
            "apiguard_method": self.method,
            "apiguard_route": self.route,
            "apiguard_credential_kind": self.credential_kind,
            "apiguard_credential_id": self.credential_id,
            "apiguard_issuer": self.issuer,
            "apiguard_latency_ms": None if self.latency is None else round(self.latency * 1e3, 3),
            "apiguard_cache": self.cache,
            "apiguard_backend_calls": (
                None if self.backend_calls is None else list(self.backend_calls)
            ),
        }


EventHook = Callable[[AuthEvent], "Awaitable[None] | None"]
"""`on_event(event)`: a plain function (run in a worker thread) or a coroutine
function (run on the event loop), never on the request's path."""
