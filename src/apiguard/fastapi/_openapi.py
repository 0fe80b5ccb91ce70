"""The OpenAPI document of a guarded FastAPI app: security schemes, requirements, refusals.

FastAPI's own document is completed, never replaced: each credential the guard
accepts becomes a security scheme (`apiKey` per header, OAuth 2.0
`clientCredentials` or HTTP `bearer` for tokens), each operation gets the
requirement that applies to it, and its refusals (401, 403, 429, 503) are documented
with the body the middleware sends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from apiguard._challenge import UNAVAILABLE_DESCRIPTION, UNAVAILABLE_ERROR
from apiguard.exceptions import (
    InsufficientScope,
    InvalidCredentials,
    InvalidToken,
    RateLimitExceeded,
)
from apiguard.fastapi._dependencies import SCOPES_ATTRIBUTE, current_principal
from apiguard.policies import ScopeRule

__all__ = ["Description", "complete"]

Requirement = tuple[frozenset[str], ...]  # alternatives: all scopes of any one suffice

RATE_LIMITED = RateLimitExceeded.description
ERROR_SCHEMA = "ApiGuardError"
PROBLEM_SCHEMA = "ApiGuardProblem"


@dataclass(frozen=True, slots=True)
class Description:
    """What the document says about the guard; made by `Guard`."""

    api_keys: tuple[tuple[str, str, str], ...]  # (scheme name, "header" | "query", name)
    bearer_scheme: str | None  # the bearer scheme's name, or None without tokens
    bearer_format: str | None
    token_url: str | None
    scope_descriptions: Mapping[str, str]
    everywhere: bool  # the middleware guards every route not excluded
    exclude_exact: frozenset[str]
    exclude_prefixes: tuple[str, ...]
    exclude_methods: frozenset[str]
    rules: tuple[ScopeRule, ...]
    optional: bool
    problem_details: bool
    custom_body: bool  # an `error_response` hook builds refusals: their body is unknown
    rate_limited: bool = False  # a rate limit, quota or failed-authentication limit: 429

    def excluded(self, path: str, method: str) -> bool:
        return (
            method in self.exclude_methods
            or path in self.exclude_exact
            or path.startswith(self.exclude_prefixes)
        )

    def rule_for(self, path: str, method: str) -> Requirement | None:
        for rule in self.rules:
            if rule.matches(path, method):
                return rule._alternatives
        return None

    @property
    def scheme_names(self) -> tuple[str, ...]:
        names = tuple(name for name, _, _ in self.api_keys)
        return (*names, self.bearer_scheme) if self.bearer_scheme else names


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    """The routes FastAPI documents, with included routers' prefixes and dependencies."""
    try:  # FastAPI 0.16x includes routers lazily, as route contexts
        from fastapi.openapi.utils import (  # type: ignore[attr-defined,unused-ignore]
            _get_api_route_for_openapi,
        )
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # pragma: no cover - earlier FastAPI: routes are copied in
        yield from (route for route in routes if isinstance(route, APIRoute))
        return
    for context in iter_route_contexts(routes):
        route = _get_api_route_for_openapi(context)
        if route is not None:
            yield route


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependants(sub)


def _security_scopes(dependant: Dependant) -> frozenset[str]:
    # The scopes FastAPI's `SecurityScopes` gives this dependency: its own and its
    # parents' (`Security(..., scopes=[...])`).
    parent = getattr(dependant, "parent_oauth_scopes", None) or []
    own = getattr(dependant, "own_oauth_scopes", None) or []
    return frozenset(parent) | frozenset(own)


def _route_requirements(
    route: Any, is_guard: Callable[[object], bool]
) -> tuple[bool, list[Requirement]]:
    """Whether the route depends on the guard itself, and the scopes its dependencies demand."""
    guarded = False
    requirements: list[Requirement] = []
    for dependant in _dependants(route.dependant):
        call = dependant.call
        demanded = getattr(call, SCOPES_ATTRIBUTE, None)
        if demanded is not None:
            requirements.append(demanded)
        elif call is current_principal or is_guard(call):
            guarded = guarded or is_guard(call)
            scopes = _security_scopes(dependant)
            if scopes:
                requirements.append((scopes,))
    return guarded, requirements


def _combine(requirements: Sequence[Requirement]) -> list[frozenset[str]]:
    """Every requirement must hold: one alternative of each, together."""
    combined: list[frozenset[str]] = []
    for choice in itertools.product(*requirements):
        scopes = frozenset().union(*choice)
        if scopes not in combined:
            combined.append(scopes)
    return combined


def _schemes(description: Description, scopes: Sequence[str]) -> dict[str, Any]:
    schemes: dict[str, Any] = {}
    for name, location, key_name in description.api_keys:
        schemes[name] = {
            "type": "apiKey",
            "in": location,
            "name": key_name,
            "description": "An API key.",
        }
    if description.bearer_scheme is None:
        return schemes
    if description.token_url is not None:
        # RFC 6749 §4.4: the client obtains the token itself, with its own credentials.
        schemes[description.bearer_scheme] = {
            "type": "oauth2",
            "description": "An OAuth 2.0 access token (RFC 6750 bearer token).",
            "flows": {
                "clientCredentials": {
                    "tokenUrl": description.token_url,
                    "scopes": {
                        s: description.scope_descriptions.get(s, "") for s in sorted(scopes)
                    },
                }
            },
        }
    else:
        bearer: dict[str, str] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An OAuth 2.0 access token (RFC 6750 bearer token).",
        }
        if description.bearer_format:
            bearer["bearerFormat"] = description.bearer_format
        schemes[description.bearer_scheme] = bearer
    return schemes


def _example(description: Description, status: int, error: str, text: str) -> dict[str, Any]:
    if description.problem_details:
        title = HTTPStatus(status).phrase
        return {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": text,
            "error": error,
        }
    return {"error": error, "error_description": text}


def _invalid(description: Description) -> tuple[str, str]:
    error = InvalidCredentials if description.api_keys else InvalidToken
    return str(error.error), error.description


def _refusal(
    description: Description,
    text: str,
    example: dict[str, Any],
    *,
    retry_after: bool = False,
    rate_limit_fields: bool = False,
) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "Cache-Control": {"description": "`no-store`.", "schema": {"type": "string"}},
    }
    if retry_after:
        headers["Retry-After"] = {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer"},
        }
        if rate_limit_fields:
            headers["RateLimit-Policy"] = {
                "description": "The limits that apply (draft-ietf-httpapi-ratelimit-headers),"
                " when the policy sends the fields.",
                "schema": {"type": "string"},
            }
            headers["RateLimit"] = {
                "description": "The limit reached, with `r` (remaining) and `t` (seconds"
                " to reset).",
                "schema": {"type": "string"},
            }
    else:
        headers["WWW-Authenticate"] = {
            "description": "The challenge of each accepted scheme (RFC 9110 §11.6.1,"
            " RFC 6750 §3), with the error of the credential that was sent.",
            "schema": {"type": "string"},
        }
    response: dict[str, Any] = {"description": text, "headers": headers}
    if not description.custom_body:
        media, schema = (
            ("application/problem+json", PROBLEM_SCHEMA)
            if description.problem_details
            else ("application/json", ERROR_SCHEMA)
        )
        response["content"] = {
            media: {"schema": {"$ref": f"#/components/schemas/{schema}"}, "example": example}
        }
    return response


def _body_schemas(description: Description) -> dict[str, Any]:
    if description.custom_body:
        return {}
    if description.problem_details:  # RFC 9457 §3.1
        return {
            PROBLEM_SCHEMA: {
                "type": "object",
                "description": "A refusal, as an RFC 9457 problem.",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "error": {"type": "string", "description": "The RFC 6750 error code."},
                },
                "required": ["type", "title", "status", "detail"],
            }
        }
    return {
        ERROR_SCHEMA: {
            "type": "object",
            "description": "A refusal. `error` is absent when no credential was sent"
            " (RFC 6750 §3.1).",
            "properties": {
                "error": {
                    "type": "string",
                    "description": "The error code (RFC 6750 §3.1).",
                    "examples": ["invalid_token", "invalid_key", "insufficient_scope"],
                },
                "error_description": {"type": "string"},
            },
            "required": ["error_description"],
        }
    }


def complete(
    document: dict[str, Any],
    routes: Sequence[BaseRoute],
    description: Description,
    is_guard: Callable[[object], bool],
) -> dict[str, Any]:
    """Add the guard's security schemes, requirements and refusals to FastAPI's `document`."""
    paths: dict[str, Any] = document.get("paths", {})
    operations: list[tuple[dict[str, Any], list[frozenset[str]]]] = []
    every_scope: dict[str, None] = dict.fromkeys(sorted(description.scope_descriptions))
    for route in _api_routes(routes):
        if not route.include_in_schema:
            continue
        guarded, requirements = _route_requirements(route, is_guard)
        for method in sorted(route.methods or ()):
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            needs = list(requirements)
            # The middleware runs no policy on excluded paths; route-level checks still run.
            excluded = description.everywhere and description.excluded(route.path_format, method)
            if (excluded and not needs) or not (description.everywhere or guarded):
                continue  # served without credentials
            rule = None if excluded else description.rule_for(route.path_format, method)
            if rule is not None:
                needs.append(rule)
            alternatives = _combine(needs)
            for scopes in alternatives:
                every_scope.update(dict.fromkeys(sorted(scopes)))
            operations.append((operation, alternatives))

    if not operations:
        return document
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(_schemes(description, list(every_scope)))
    components.setdefault("schemas", {}).update(_body_schemas(description))
    for operation, alternatives in operations:
        # OpenAPI 3.1 §4.8.30: a list of requirement objects is "any one of";
        # for non-OAuth schemes the list names the roles (here, the key's scopes).
        security: list[dict[str, list[str]]] = [
            {scheme: sorted(scopes)}
            for scopes in alternatives
            for scheme in description.scheme_names
        ]
        anonymous = description.optional and alternatives == [frozenset()]
        if anonymous:
            security.append({})  # an empty requirement: no credential needed
        operation["security"] = security
        responses = operation.setdefault("responses", {})
        if not anonymous:
            responses.setdefault(
                "401",
                _refusal(
                    description,
                    "No credential was sent, or it is not valid.",
                    _example(description, 401, *_invalid(description)),
                ),
            )
        if any(alternatives):  # some scope is required
            responses.setdefault(
                "403",
                _refusal(
                    description,
                    "The credential lacks a scope this operation requires.",
                    _example(description, 403, "insufficient_scope", InsufficientScope.description),
                ),
            )
        if description.rate_limited:
            responses.setdefault(
                "429",
                _refusal(
                    description,
                    "Too many requests: a rate limit, quota or failed-authentication limit.",
                    _example(description, 429, RateLimitExceeded.error, RATE_LIMITED),
                    retry_after=True,
                    rate_limit_fields=True,
                ),
            )
        responses.setdefault(
            "503",
            _refusal(
                description,
                "The key store or the authorization server cannot be reached.",
                _example(description, 503, UNAVAILABLE_ERROR, UNAVAILABLE_DESCRIPTION),
                retry_after=True,
            ),
        )
    return document
