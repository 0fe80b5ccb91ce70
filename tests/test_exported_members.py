from __future__ import annotations

import inspect

import apiguard
import apiguard.fastapi
import apiguard.keys
import apiguard.proxies
import apiguard.pytest_plugin
import apiguard.ratelimit
import apiguard.testing
import apiguard.tokens


def test_public_api_is_pinned() -> None:
    """The names apiguard exports; a change here is a change of the public API."""
    assert apiguard.__all__ == [
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
    assert apiguard.keys.__all__ == [
        "BaseKeyStore",
        "CacheOptions",
        "GeneratedKey",
        "IssuedKey",
        "KeyHasher",
        "KeyManager",
        "KeyRecord",
        "KeyStatus",
        "KeyStore",
        "KeyVerifier",
        "MemoryKeyStore",
        "ParsedKey",
        "RedisKeyStore",
        "SQLKeyStore",
        "UsageBatch",
        "UsageBucket",
        "UsageOptions",
        "UsageRecorder",
        "UsageRetention",
        "UsageStore",
        "format_key",
        "generate_key",
        "open_store",
        "parse_key",
        "register_scheme",
    ]
    assert apiguard.tokens.__all__ == [
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
    assert apiguard.fastapi.__all__ == [
        "Guard",
        "GuardRefusal",
        "ScopedRoute",
        "current_principal",
        "install",
        "require_scopes",
    ]
    assert apiguard.testing.__all__ == [
        "TEST_PEPPER",
        "FakeClock",
        "FakeIssuer",
        "KeySpec",
        "KeyStoreContract",
        "make_keys",
        "make_record",
        "make_signing_key",
        "override_authentication",
        "public_jwk",
    ]
    assert apiguard.pytest_plugin.__all__ == ["fake_clock", "fake_issuer", "override_auth"]

    assert apiguard.ratelimit.__all__ == [
        "FailedAuthLimit",
        "HeaderStyle",
        "LimitStorage",
        "Quota",
        "QuotaUsage",
        "Quotas",
        "RateLimits",
        "RouteLimit",
        "Strategy",
        "parse_limits",
        "parse_quota",
    ]
    assert apiguard.proxies.__all__ == ["ForwardedHop", "TrustedProxies"]


def test_every_exported_name_exists_and_says_where_it_lives() -> None:
    for module in (
        apiguard,
        apiguard.fastapi,
        apiguard.keys,
        apiguard.tokens,
        apiguard.testing,
        apiguard.ratelimit,
        apiguard.proxies,
    ):
        for name in module.__all__:
            member = getattr(module, name)
            is_alias = getattr(member, "__origin__", None) is not None  # Literal aliases
            if is_alias or not (inspect.isclass(member) or inspect.isfunction(member)):
                continue
            assert member.__module__.startswith("apiguard"), name


def test_version_is_a_string() -> None:
    assert apiguard.__version__.count(".") == 2


def test_diagnostics_api_is_pinned() -> None:
    import apiguard.diagnostics

    assert apiguard.diagnostics.__all__ == ["Check", "Report", "explain_key", "explain_token"]


def test_observability_api_is_pinned() -> None:
    import apiguard.events
    import apiguard.otel
    import apiguard.prometheus

    assert apiguard.events.__all__ == [
        "BACKENDS",
        "REFUSAL_REASONS",
        "AuthEvent",
        "EventHook",
        "reason_label",
    ]
    assert apiguard.prometheus.__all__ == ["DEFAULT_BUCKETS", "PrometheusMetrics"]
    assert apiguard.otel.__all__ == ["OpenTelemetryTracing"]
