from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection

from apiguard import (
    BackendUnavailableError,
    ConfigurationError,
    InsufficientScope,
    InvalidCredentials,
    InvalidToken,
    MissingCredentials,
    Principal,
)
from apiguard._challenge import ErrorResponder, build_challenge
from apiguard.policies import validate_scopes
from apiguard.types import Scope

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 'Bearer realm="api"'),
        ({"error": "invalid_token"}, 'Bearer realm="api", error="invalid_token"'),
        (
            {"error": "invalid_token", "description": "The token expired"},
            'Bearer realm="api", error="invalid_token", error_description="The token expired"',
        ),
        (
            {"error": "insufficient_scope", "scope": ["a:read", "b:write"]},
            'Bearer realm="api", scope="a:read b:write", error="insufficient_scope"',
        ),
        (
            {"extra": [("resource_metadata", "https://api.example/.well-known/x")]},
            'Bearer realm="api", resource_metadata="https://api.example/.well-known/x"',
        ),
    ],
)
def test_build_challenge(kwargs: dict[str, object], expected: str) -> None:
    """RFC 6750 §3: auth-params realm, scope, error, error_description, each at most once."""
    assert build_challenge("Bearer", "api", **kwargs) == expected  # type: ignore[arg-type]


def test_description_is_sanitized() -> None:
    """RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E: no quote, no backslash."""
    challenge = build_challenge(
        "Bearer", 'a"pi', error="invalid_token", description='bad "token"\\\r\nInjected: é'
    )
    assert challenge == (
        'Bearer realm="api", error="invalid_token", error_description="bad tokenInjected: "'
    )


def test_a_challenge_without_params_is_the_bare_scheme() -> None:
    """RFC 9110 §11.6.1: a challenge is an auth-scheme with optional parameters."""
    assert build_challenge("ApiKey", None) == "ApiKey"


def connection_scope() -> Scope:
    return {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}


@pytest.mark.parametrize(
    ("error", "status", "challenge"),
    [
        (MissingCredentials(), 401, ['ApiKey realm="api"', 'Bearer realm="api"']),
        (
            InvalidToken(),
            401,
            [
                'Bearer realm="api", error="invalid_token", error_description="The access token is invalid."'
            ],
        ),
        (
            InsufficientScope(["b", "a"]),
            403,
            [
                'Bearer realm="api", scope="a b", error="insufficient_scope", '
                'error_description="The request requires more privileges than the credentials grant."'
            ],
        ),
        (BackendUnavailableError("x"), 503, []),
    ],
)
async def test_refusals_per_error(error: Exception, status: int, challenge: list[str]) -> None:
    """No credentials: every scheme's bare challenge (RFC 6750 §3.1); else the tried scheme's."""
    responder = ErrorResponder(schemes=[("ApiKey", ()), ("Bearer", ())], realm="api")
    response = await responder.response(error, "Bearer", connection_scope(), _no_receive)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.headers.getlist("www-authenticate") == challenge


async def _no_receive() -> dict[str, object]:
    raise AssertionError("not read")


def test_insufficient_scope_lists_every_required_scope_once_sorted() -> None:
    error = InsufficientScope({"items:write", "items:read"})
    assert error.scopes == ("items:read", "items:write")
    assert error.status_code == 403


def test_auth_error_fields() -> None:
    error = InvalidCredentials(reason="revoked")
    assert (error.status_code, error.error, error.reason) == (401, "invalid_key", "revoked")
    assert str(error) == "The API key is invalid."
    assert MissingCredentials().reason == "missing"
    assert MissingCredentials("Custom.").description == "Custom."


@pytest.mark.parametrize("scope", ["items:read", "a", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"])
def test_scope_tokens_accepted(scope: str) -> None:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )."""
    assert validate_scopes([scope]) == {scope}


@pytest.mark.parametrize("scope", ["", "two words", 'quo"te', "back\\slash", "é", "tab\t"])
def test_scope_tokens_refused(scope: str) -> None:
    with pytest.raises(ConfigurationError):
        validate_scopes([scope])


def test_principal_is_a_starlette_user() -> None:
    principal = Principal(identity="K1", kind="api_key", name="billing", scopes=frozenset({"a"}))
    assert principal.is_authenticated
    assert principal.display_name == "billing"
    assert principal.identity == "K1"
    assert Principal(identity="K1", kind="api_key").display_name == "K1"
    assert HTTPConnection({"type": "http", "user": principal}).user is principal
    with pytest.raises(AttributeError):
        principal.name = "other"
