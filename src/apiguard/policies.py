"""Checks that run after authentication: what an authenticated caller may do.

A `Policy` sees the principal and the request and may refuse it (403 for a missing
scope, 429 for a rate limit: `apiguard.ratelimit`). `ScopeRules` requires scopes by path and method,
for apps without per-route dependencies.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from apiguard.exceptions import (
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    MissingCredentials,
)
from apiguard.principal import Principal
from apiguard.types import Scope

__all__ = [
    "Policy",
    "ScopeRule",
    "ScopeRules",
    "check_scopes",
    "parse_requirement",
    "route_path",
    "validate_scopes",
]


# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def validate_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Return the scopes as a set, refusing any that is not an RFC 6749 §3.3 scope-token."""
    result = frozenset(scopes)
    for scope in result:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise ConfigurationError(
                f"invalid scope {scope!r}: use printable ASCII, no spaces, quotes or backslashes"
            )
    return result


def route_path(scope: Scope) -> str:
    """The request path as the app's routes see it: without the root path.

    Exclusions and `ScopeRule`s are matched on this path, so it is accepted only in
    normal form, where prefix matching and the app's router agree on what it names.

    Raises:
        InvalidRequest: The path has a `.` or `..` segment, or an empty one (`//`).
            Servers decode `%2E` and `%2F` before the app sees the path, so the
            encoded forms count too. Routers and `StaticFiles` resolve such a path
            differently from a prefix match (RFC 3986 §5.2.4 dot-segment removal,
            `//` collapsed), in both directions: `/public/../private/x` is served
            from `private/`, and `/private/../public/x` runs the `/private/{path}`
            route. Such paths are refused, not normalized.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    # As Starlette's routing does: the root path ends at a "/" or at the end.
    if root_path and path.startswith(root_path):
        if len(path) == len(root_path):
            path = "/"
        elif path[len(root_path)] == "/":
            path = path[len(root_path) :]
    if ("/." in path or "//" in path) and not _is_normal(path):
        raise InvalidRequest(_NOT_NORMAL, reason="path not in normal form")
    return path


_NOT_NORMAL = "The request path is not in normal form."
_DOT_SEGMENTS = frozenset({".", ".."})
_NOT_NORMAL_SEGMENTS = _DOT_SEGMENTS | {""}


def _is_normal(path: str) -> bool:
    segments = path.split("/")
    # segments[0] precedes the leading "/"; the last is empty after a trailing "/".
    inner = segments[1:-1]
    return segments[-1] not in _DOT_SEGMENTS and not any(s in _NOT_NORMAL_SEGMENTS for s in inner)


def _with_head(methods: frozenset[str]) -> frozenset[str]:
    # RFC 9110 §9.3.2: HEAD is GET without the content; routers run GET handlers for it.
    return methods | {"HEAD"} if "GET" in methods else methods


@runtime_checkable
class Policy(Protocol):
    """A check on an authenticated request, run by the middleware before the app."""

    async def check(
        self, principal: Principal, scope: Scope
    ) -> Sequence[tuple[bytes, bytes]] | None:
        """Return to allow; raise an `AuthError` (e.g. `InsufficientScope`) to refuse.

        May return header fields (lower-case name, value) that the middleware adds to
        the app's response (`RateLimit` fields, say).
        """


def parse_requirement(text: str) -> tuple[frozenset[str], ...]:
    """`"a b | c"` -> `({"a", "b"}, {"c"})`: all scopes of any one alternative suffice."""
    alternatives = tuple(validate_scopes(part.split()) for part in text.split("|"))
    if not all(alternatives):
        raise ConfigurationError(f"empty alternative in scope requirement {text!r}")
    return alternatives


def check_scopes(principal: Principal, alternatives: Sequence[frozenset[str]]) -> None:
    """Refuse unless the principal holds every scope of at least one alternative.

    Raises:
        MissingCredentials: The principal is anonymous (a credential is needed first).
        InsufficientScope: It is authenticated but lacks the scopes; the refusal
            lists every scope of the first alternative, in one challenge.
    """
    if any(required <= principal.scopes for required in alternatives):
        return
    if not principal.is_authenticated:
        raise MissingCredentials
    raise InsufficientScope(alternatives[0], reason="missing scope")


@dataclass(frozen=True, slots=True)
class ScopeRule:
    """Scopes required on a path, optionally for some methods only.

    Attributes:
        path: An exact path, or a prefix ending in `*` (`"/items/*"`), matched without
            the app's root path. Requests whose path is not in normal form (`.`,
            `..` or empty segments) are refused with 400 `invalid_request`
            (`route_path`).
        scopes: The scopes required: `"items:write"`, all of several
            (`"items:read items:write"`), or alternatives (`"items:write | admin"`).
        methods: The methods the rule applies to; all methods if empty. `"GET"`
            covers HEAD too (RFC 9110 §9.3.2: Starlette runs GET endpoints for HEAD).
    """

    path: str
    scopes: str
    methods: Collection[str] = ()
    _alternatives: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigurationError(f"rule paths start with '/': {self.path!r}")
        object.__setattr__(self, "_alternatives", parse_requirement(self.scopes))
        methods = _with_head(frozenset(m.upper() for m in self.methods))
        object.__setattr__(self, "methods", methods)

    def matches(self, path: str, method: str | None) -> bool:
        if self.methods and method not in self.methods:
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


class ScopeRules:
    """A `Policy` from `ScopeRule`s: the first rule matching the request applies.

    Requests no rule matches need no particular scope.
    """

    def __init__(self, rules: Sequence[ScopeRule]) -> None:
        self._rules = tuple(rules)

    @property
    def rules(self) -> tuple[ScopeRule, ...]:
        """The rules, in the order they are tried."""
        return self._rules

    async def check(self, principal: Principal, scope: Scope) -> None:
        path = route_path(scope)
        method = scope.get("method")
        for rule in self._rules:
            if rule.matches(path, method):
                check_scopes(principal, rule._alternatives)
                return
