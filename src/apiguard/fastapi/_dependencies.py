"""Dependencies for routes behind an apiguard middleware: the caller, and the scopes it needs."""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from fastapi.security import SecurityScopes
from starlette.requests import HTTPConnection

from apiguard.exceptions import ConfigurationError
from apiguard.policies import check_scopes, parse_requirement
from apiguard.principal import Principal

__all__ = ["SCOPES_ATTRIBUTE", "current_principal", "require_scopes"]

# Set on the dependencies `require_scopes` makes: the alternatives they demand, read
# by the OpenAPI document (`apiguard.fastapi.Guard.install`).
SCOPES_ATTRIBUTE = "__apiguard_scopes__"


def _principal(connection: HTTPConnection, what: str) -> Principal:
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):
        raise ConfigurationError(f"{what} needs an apiguard middleware in front of the app")
    return principal


async def current_principal(
    connection: HTTPConnection, security_scopes: SecurityScopes
) -> Principal:
    """The caller the apiguard middleware authenticated: a dependency.

    `caller: Annotated[Principal, Depends(current_principal)]`, or with FastAPI's scope
    machinery, `Security(current_principal, scopes=["items:write"])`: every scope
    demanded by the route and its dependencies (`SecurityScopes`) is required. A
    caller without them gets 403 `insufficient_scope` (an anonymous one, 401),
    answered by the middleware like its own refusals. The scopes appear in the
    OpenAPI document `apiguard.fastapi.install` makes.

    Raises:
        ConfigurationError: No apiguard middleware is in front of the app.
    """
    principal = _principal(connection, "current_principal")
    if security_scopes.scopes:
        check_scopes(principal, (frozenset(security_scopes.scopes),))
    return principal


def require_scopes(*scopes: str) -> Any:
    """A dependency that requires every one of `scopes` (or, with `"a | b"`, any alternative).

    A caller without them gets 403 `insufficient_scope` with one RFC 6750 §3
    challenge listing every required scope; an anonymous caller (optional mode, an
    excluded path) gets 401. The apiguard middleware in front of the app answers,
    exactly as it answers its own refusals: the same JSON (or problem+json) body,
    challenge, `Cache-Control: no-store` and `error_response` hook. The dependency
    returns the caller's `Principal`.

    Raises:
        ConfigurationError: No scope is given, or (at request time) no apiguard
            middleware is in front of the app.
    """
    if not scopes:
        raise ConfigurationError("require_scopes needs at least one scope")
    alternatives = parse_requirement(" ".join(scopes))

    async def dependency(connection: HTTPConnection) -> Principal:
        principal = _principal(connection, "require_scopes")
        check_scopes(principal, alternatives)  # raises InsufficientScope, MissingCredentials
        return principal

    setattr(dependency, SCOPES_ATTRIBUTE, alternatives)
    return Depends(dependency)
