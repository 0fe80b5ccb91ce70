"""Reading credentials from request headers and the query string."""

from __future__ import annotations

from collections.abc import Callable, Collection
from urllib.parse import parse_qsl, urlencode

from apiguard.exceptions import ConfigurationError, InvalidRequest
from apiguard.types import Scope

__all__ = [
    "AUTHORIZATION",
    "authorization_reader",
    "header_names",
    "header_reader",
    "read_bearer",
    "read_headers",
    "read_headers_or_query",
    "read_query",
    "strip_headers",
    "strip_query",
]


AUTHORIZATION = frozenset({b"authorization"})


def header_names(names: Collection[str]) -> frozenset[bytes]:
    """Header names as ASGI carries them: lower-case latin-1 bytes."""
    if isinstance(names, str):
        raise ConfigurationError("header names take a collection, not str")
    result = frozenset(name.strip().lower().encode("latin-1") for name in names)
    if not result or b"" in result:
        raise ConfigurationError("at least one non-empty header name is required")
    return result


def read_headers(scope: Scope, names: frozenset[bytes]) -> bytes | None:
    """The value of the one header among `names` the request carries.

    A credential is sent once: `Authorization` is a singleton field (RFC 9110 §5.3)
    and several tokens are an `invalid_request` (RFC 6750 §3.1), even the same one
    twice; API-key headers follow the same rule.

    Raises:
        InvalidRequest: Two such headers were sent, whatever their values.
    """
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name in names:
            if found is not None:
                raise InvalidRequest(reason="credential sent twice")
            found = value
    return found


def header_reader(names: frozenset[bytes]) -> Callable[[Scope], bytes | None]:
    """`read_headers` with `names` bound: `reader(scope)`, one call per request."""

    def read(scope: Scope) -> bytes | None:
        found: bytes | None = None
        for name, value in scope["headers"]:
            if name in names:
                if found is not None:
                    raise InvalidRequest(reason="credential sent twice")
                found = value
        return found

    return read


def read_query(scope: Scope, param: str) -> bytes | None:
    """The one value of query parameter `param`, like `read_headers`."""
    query: bytes = scope.get("query_string", b"")
    if param.encode() not in query:  # cheap test before parsing
        return None
    # Percent-escapes decoded as latin-1: one character per byte, so the value's
    # bytes come back exactly, whatever they encode.
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    values = [v for k, v in pairs if k == param]
    if len(values) > 1:
        raise InvalidRequest(reason="credential sent twice")
    return values[0].encode("latin-1") if values else None


def read_headers_or_query(scope: Scope, names: frozenset[bytes], param: str) -> bytes | None:
    """The one value sent in the headers `names` or the query parameter `param`."""
    found = read_headers(scope, names)
    in_query = read_query(scope, param)
    if in_query is not None:
        if found is not None:
            raise InvalidRequest(reason="credential sent twice")
        found = in_query
    return found


def authorization_reader(scheme: bytes, *, reason: str) -> Callable[[Scope], bytes | None]:
    """`reader(scope)`: the token of an `Authorization: <scheme> <token>` header, or `None`.

    `scheme` is given in lower case and matched case-insensitively (RFC 9110 §11.1);
    any other scheme (`Basic`, or `DPoP` when `bearer` is asked for) is not this
    credential: `None`. One call per request.

    The reader raises `InvalidRequest` for two Authorization headers, or the scheme
    with no token (`reason` for logs).
    """

    def read(scope: Scope) -> bytes | None:
        value: bytes | None = None
        for name, field in scope["headers"]:
            if name == b"authorization":
                if value is not None:
                    raise InvalidRequest(reason="credential sent twice")
                value = field
        if value is None:
            return None
        name, _, token = value.partition(b" ")
        if name.lower() != scheme:
            return None
        token = token.lstrip(b" ")
        if not token:
            raise InvalidRequest(reason=reason)
        return token

    return read


read_bearer = authorization_reader(b"bearer", reason="empty bearer token")
"""`read_bearer(scope)`: the token of an `Authorization: Bearer <token>` header, or `None`.

The token's characters are checked by the verifier, once per token, not here on
every request. Raises `InvalidRequest` for two Authorization headers, or `Bearer`
with no token.
"""


def strip_headers(scope: Scope, names: frozenset[bytes]) -> None:
    """Remove the headers `names` from the request the app sees."""
    scope["headers"] = [(n, v) for n, v in scope["headers"] if n not in names]


def strip_query(scope: Scope, param: str) -> None:
    """Remove query parameter `param` from the request the app sees."""
    query: bytes = scope.get("query_string", b"")
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    kept = [(k, v) for k, v in pairs if k != param]
    scope["query_string"] = urlencode(kept, encoding="latin-1").encode("latin-1")
