"""FastAPI helpers: per-route scope requirements as dependencies.

    from apiguard.fastapi import require_scopes

    @app.post("/items", dependencies=[require_scopes("items:write")])

Needs FastAPI (`pip install 'apiguard-asgi[fastapi]'`) and an apiguard middleware in
front of the app, which puts the caller in `request.user` and answers the refusal.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection

from apiguard.exceptions import ConfigurationError
from apiguard.policies import check_scopes, parse_requirement
from apiguard.principal import Principal

try:
    from fastapi import Depends
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "apiguard.fastapi needs FastAPI: pip install 'apiguard-asgi[fastapi]'"
    ) from exc

__all__ = ["require_scopes"]


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
        principal = connection.scope.get("user")
        if not isinstance(principal, Principal):
            raise ConfigurationError(
                "require_scopes needs an apiguard middleware in front of the app"
            )
        check_scopes(principal, alternatives)  # raises InsufficientScope, MissingCredentials
        return principal

    return Depends(dependency)
