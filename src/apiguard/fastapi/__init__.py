"""apiguard on FastAPI: one call for the middleware and the OpenAPI document, and dependencies.

    from apiguard import APIKeyAuth
    from apiguard.fastapi import install, require_scopes

    guard = install(app, APIKeyAuth(store))           # middleware + OpenAPI + public /docs

    @app.post("/items", dependencies=[require_scopes("items:write")])

Routes declared after `install` are `ScopedRoute`s, which check `require_scopes`
without FastAPI's dependency machinery; other routers take `route_class=ScopedRoute`.

Without the middleware, per route: `Guard(...).install(app, middleware=False)` and
`APIRouter(dependencies=[Depends(guard)])`. See docs/fastapi.md.

Needs FastAPI (`pip install 'apiguard-asgi[fastapi]'`).
"""

from __future__ import annotations

from apiguard.exceptions import ConfigurationError

try:
    import fastapi  # noqa: F401 - fails without the extra
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "apiguard.fastapi needs FastAPI: pip install 'apiguard-asgi[fastapi]'"
    ) from exc

from apiguard.fastapi._dependencies import current_principal, require_scopes
from apiguard.fastapi._guard import Guard, GuardRefusal, install
from apiguard.fastapi._route import ScopedRoute

__all__ = [
    "Guard",
    "GuardRefusal",
    "ScopedRoute",
    "current_principal",
    "install",
    "require_scopes",
]
