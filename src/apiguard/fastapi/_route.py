"""`ScopedRoute`: `require_scopes` checked by the route, without FastAPI's dependency machinery.

FastAPI resolves every dependency of a route on each request, which costs about
10 µs of CPU for any dependency however small. A `require_scopes(...)` in a route's (or
router's) `dependencies=[...]` only reads the caller the middleware put in the
scope, so this route class takes it out of what FastAPI resolves and checks it
itself, before the body is read and the other dependencies run. The route keeps
its dependencies as declared: the OpenAPI document shows the same scopes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import routing
from fastapi.dependencies.models import Dependant
from starlette.requests import Request
from starlette.responses import Response

from apiguard.fastapi._dependencies import SCOPES_ATTRIBUTE
from apiguard.policies import check_scopes
from apiguard.principal import Principal

__all__ = ["ScopedRoute"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
Requirement = tuple[frozenset[str], ...]

# FastAPI 0.16x builds the handler of a route in an included router with the
# inclusion's dependencies (its "effective context"), named by this variable while
# `get_route_handler` runs; earlier versions copy the route, and use its own.
_building: Any = getattr(routing, "_effective_route_context_var", None)


class ScopedRoute(routing.APIRoute):
    """An `APIRoute` that checks `require_scopes` itself: the fast form of per-route scopes.

    `install` makes it the app's route class; pass it to your routers yourself:
    `APIRouter(route_class=ScopedRoute)`. Every `require_scopes(...)` in the
    `dependencies=[...]` of the route, its router or `include_router` is then
    checked against the caller the apiguard middleware authenticated before
    FastAPI runs the route: the same refusal (403 `insufficient_scope`, 401 for
    an anonymous caller), without the cost of a dependency. They are checked in
    the order declared, before the request body is read and before the route's
    other dependencies. A `require_scopes` taken as a parameter (for its
    `Principal`) stays a dependency.

    Without an apiguard `Principal` in the scope (no middleware in front, or a
    per-route `Guard` that authenticates in a dependency) the route runs every
    dependency as declared, exactly as `APIRoute` does.
    """

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        context = _building.get() if _building is not None else None
        target: Any = context if context is not None and context.original_route is self else self
        dependant: Dependant = target.dependant
        requirements: list[Requirement] = []
        kept: list[Dependant] = []
        for sub in dependant.dependencies:
            demanded = getattr(sub.call, SCOPES_ATTRIBUTE, None)
            if demanded is not None and sub.name is None:  # in `dependencies=[...]`
                requirements.append(demanded)
            else:
                kept.append(sub)
        if not requirements:
            return full
        target.dependant = dataclasses.replace(dependant, dependencies=kept)
        try:
            fast = super().get_route_handler()
        finally:
            target.dependant = dependant
        return _checking(tuple(requirements), fast, full)


def _checking(requirements: tuple[Requirement, ...], fast: Handler, full: Handler) -> Handler:
    async def handler(request: Request) -> Response:
        principal = request.scope.get("user")
        if not isinstance(principal, Principal):
            return await full(request)  # the dependencies decide, in their order
        held = principal.scopes
        for alternatives in requirements:
            for required in alternatives:
                if required <= held:
                    break
            else:
                check_scopes(principal, alternatives)  # raises, for the middleware to answer
        return await fast(request)

    return handler
