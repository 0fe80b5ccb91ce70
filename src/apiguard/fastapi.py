"""FastAPI helpers: per-route scope requirements as dependencies.

    from apiguard.fastapi import require_scopes

    @app.post("/items", dependencies=[require_scopes("items:write")])

Needs FastAPI (`pip install 'apiguard-asgi[fastapi]'`) and an apiguard middleware in
front of the app, which puts the caller in `request.user`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection

from apiguard._challenge import build_challenge
from apiguard.exceptions import AuthError, ConfigurationError
from apiguard.policies import check_scopes, parse_requirement
from apiguard.principal import Principal

try:
    from fastapi import Depends, HTTPException
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "apiguard.fastapi needs FastAPI: pip install 'apiguard-asgi[fastapi]'"
    ) from exc

__all__ = ["require_scopes"]

_SCHEMES = {"api_key": "ApiKey", "bearer": "Bearer"}


def require_scopes(*scopes: str, realm: str | None = "api") -> Any:
    """A dependency that requires every one of `scopes` (or, with `"a | b"`, any alternative).

    A caller without them gets 403 `insufficient_scope` with one RFC 6750 §3
    challenge listing every required scope; an anonymous caller (optional mode)
    gets 401.
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
        try:
            check_scopes(principal, alternatives)
        except AuthError as error:
            scheme = _SCHEMES.get(principal.kind, "Bearer")
            required = getattr(error, "scopes", ())
            challenge = build_challenge(
                scheme,
                realm,
                error=error.error,
                description=error.description,
                scope=required,
            )
            detail: dict[str, Any] = {"error_description": error.description}
            if error.error is not None:
                detail = {"error": error.error, **detail}
            if required:
                detail["scope"] = " ".join(required)
            raise HTTPException(
                error.status_code, detail=detail, headers={"WWW-Authenticate": challenge}
            ) from None
        return principal

    return Depends(dependency)
