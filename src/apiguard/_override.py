"""Authentication overrides for tests: a grant the middleware uses instead of credentials.

Only `apiguard.testing.override_authentication` writes here, for the length of a
`with` block, and only for the app (or middleware) object it is given. Nothing
from a request, the environment or the middleware's options can add an entry: an
app that never calls that helper has an empty table, and the middleware's only
cost is reading `installed`.
"""

from __future__ import annotations

from apiguard.principal import Grant
from apiguard.types import Scope

__all__ = ["grant_for", "install", "installed", "remove"]

installed = False
"""Whether any override is in place (read by the middleware on every request)."""

# id(target) -> (target, grant). The target is held, so its id is not reused while here.
_grants: dict[int, tuple[object, Grant]] = {}


def install(target: object, grant: Grant) -> Grant | None:
    """Install `grant` for `target`; returns the one it replaces, for `remove`."""
    global installed
    previous = _grants.get(id(target))
    _grants[id(target)] = (target, grant)
    installed = True
    return None if previous is None else previous[1]


def remove(target: object, previous: Grant | None = None) -> None:
    """Take `target`'s grant away, putting back `previous` (an enclosing override) if any."""
    global installed
    if previous is None:
        _grants.pop(id(target), None)
    else:
        _grants[id(target)] = (target, previous)
    installed = bool(_grants)


def grant_for(middleware: object, scope: Scope) -> Grant | None:
    """The grant installed for this middleware, or for the app that received the request."""
    entry = _grants.get(id(middleware)) or _grants.get(id(scope.get("app")))
    return None if entry is None else entry[1]
