"""`requires_scopes`: Starlette's `@requires`, refusing the way apiguard refuses.

    from apiguard import requires_scopes

    @requires_scopes("items:write")
    async def add_item(request: Request) -> Response: ...

Starlette's own `@requires("items:write")` works with apiguard's scopes too, but
answers 403 `text/plain` "Forbidden" without a challenge or `Cache-Control: no-store`
(or redirects, with `redirect=`), and closes a websocket after accepting it. This one
raises the refusal for the apiguard middleware to answer, like its own refusals.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from starlette.requests import HTTPConnection

from apiguard.exceptions import ConfigurationError
from apiguard.policies import check_scopes, parse_requirement
from apiguard.principal import Principal

__all__ = ["requires_scopes"]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def requires_scopes(*scopes: str) -> Callable[[Endpoint], Endpoint]:
    """Require every one of `scopes` (or, with `"a | b"`, any alternative) on an endpoint.

    Decorates a Starlette endpoint, sync or async, function or `HTTPEndpoint`
    method, with a `request` or `websocket` argument, as Starlette's `@requires`.
    A caller without the scopes gets 403 `insufficient_scope` with one RFC 6750 §3
    challenge listing every required scope; an anonymous caller (optional mode, an
    excluded path) gets 401; a websocket is refused before it is accepted. The
    apiguard middleware in front of the app sends the refusal: same body, challenge,
    `Cache-Control: no-store` and `error_response` hook as its own.

    Raises:
        ConfigurationError: No scope is given; the endpoint has no `request` or
            `websocket` argument; or (at request time) no apiguard middleware is
            in front of the app.
    """
    if not scopes:
        raise ConfigurationError("requires_scopes needs at least one scope")
    alternatives = parse_requirement(" ".join(scopes))

    def decorator(endpoint: Endpoint) -> Endpoint:
        names = list(inspect.signature(endpoint).parameters)
        found = [n for n in names if n in ("request", "websocket")]
        if not found:
            raise ConfigurationError(
                f"requires_scopes: {endpoint.__qualname__} has no 'request' or 'websocket' argument"
            )
        name = found[0]
        index = names.index(name)

        def check(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            connection: HTTPConnection = kwargs[name] if name in kwargs else args[index]
            principal = connection.scope.get("user")
            if not isinstance(principal, Principal):
                raise ConfigurationError(
                    "requires_scopes needs an apiguard middleware in front of the app"
                )
            check_scopes(principal, alternatives)  # raises InsufficientScope, MissingCredentials

        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
                check(args, kwargs)
                return await endpoint(*args, **kwargs)

            return cast("Endpoint", async_endpoint)

        @functools.wraps(endpoint)
        def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
            check(args, kwargs)
            return endpoint(*args, **kwargs)

        return cast("Endpoint", sync_endpoint)

    return decorator
