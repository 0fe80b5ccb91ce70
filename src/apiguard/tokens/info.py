"""`TokenInfo`: what an introspector learned about a token, and the scopes it grants."""

from __future__ import annotations

import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from apiguard.exceptions import InvalidToken

__all__ = ["DEFAULT_SCOPE_CLAIMS", "TokenInfo", "scopes_from_claims"]

DEFAULT_SCOPE_CLAIMS = ("scope", "scp")
"""Claims read for scopes unless told otherwise: `scope` (RFC 8693 §4.2, RFC 9068 §2.2.3)
and `scp` (a string or a list, as several providers send it)."""

MAX_SCOPES = 256  # bounds the work and memory one token can cause


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY  # one empty mapping for every TokenInfo without claims


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A verified token, or the verdict that it is not active.

    Attributes:
        active: Whether the token may be used (RFC 7662 §2.2 `active`).
        subject: `sub`.
        client_id: The OAuth client the token was issued to.
        scopes: The scopes granted, from the scope claims (`scopes_from_claims`).
        audience: `aud`, always as a tuple.
        issuer: `iss`.
        expires_at: `exp`, as an aware UTC datetime.
        issued_at: `iat`.
        token_type: The JWT `typ` header or the introspection `token_type`.
        cnf: The confirmation claim (RFC 7800) of sender-constrained tokens.
        claims: Every claim, as verified; left out of the repr.
    """

    active: bool
    subject: str | None = None
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    audience: tuple[str, ...] = ()
    issuer: str | None = None
    expires_at: datetime | None = None
    issued_at: datetime | None = None
    token_type: str | None = None
    cnf: Mapping[str, Any] | None = field(default=None, repr=False)
    claims: Mapping[str, Any] = field(default_factory=_empty, repr=False)

    @classmethod
    def from_claims(
        cls,
        claims: Mapping[str, Any],
        *,
        scope_claims: Collection[str] = DEFAULT_SCOPE_CLAIMS,
        token_type: str | None = None,
    ) -> TokenInfo:
        """Build an active `TokenInfo` from verified claims (copied, not kept).

        Raises `InvalidToken` when `exp` or `iat` is not a NumericDate (RFC 7519
        §2, §4.1.4: a JSON number; `"1700000000"` is not one), since an expiry that
        cannot be read would let a grant outlive its token.
        """
        claims = _shared(claims)
        get = claims.get
        exp, iat = get("exp"), get("iat")
        expires_at = None if exp is None else _time(exp)
        issued_at = None if iat is None else _time(iat)
        if (expires_at is None and exp is not None) or (issued_at is None and iat is not None):
            raise InvalidToken(reason="malformed time claim")
        aud = get("aud")
        # RFC 7519 §4.1.3: a string or an array of strings; anything else names no one.
        audience = (
            (aud,)
            if isinstance(aud, str)
            else tuple(a for a in aud if isinstance(a, str))
            if isinstance(aud, list)
            else ()
        )
        cnf = get("cnf")
        return cls(
            active=True,
            subject=_str(get("sub")),
            client_id=_str(get("client_id")) or _str(get("azp")),
            scopes=scopes_from_claims(claims, scope_claims),
            audience=audience,
            issuer=_str(get("iss")),
            expires_at=expires_at,
            issued_at=issued_at,
            token_type=token_type or _str(get("token_type")),
            cnf=MappingProxyType(dict(cnf)) if isinstance(cnf, Mapping) else None,
            claims=MappingProxyType(claims),
        )


# Claims whose values recur across the tokens of one client: interned, a cache of
# thousands of tokens holds one copy of each (claims are only ever verified ones).
_SHARED_CLAIMS = frozenset({"iss", "aud", "sub", "client_id", "azp", "scope", "scp", "token_type"})
_MAX_INTERNED = 256


def _intern(value: object) -> object:
    if type(value) is str and len(value) <= _MAX_INTERNED:
        return sys.intern(value)
    if type(value) is list:
        return [_intern(item) for item in value]
    return value


def _shared(claims: Mapping[str, Any]) -> dict[str, Any]:
    intern = sys.intern
    copy = {
        intern(name) if len(name) <= _MAX_INTERNED else name: value
        for name, value in claims.items()
    }
    for name in _SHARED_CLAIMS.intersection(copy):
        value = copy[name]
        if type(value) is str:
            if len(value) <= _MAX_INTERNED:
                copy[name] = intern(value)
        elif type(value) is list:
            copy[name] = [_intern(item) for item in value]
    return copy


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _time(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def scopes_from_claims(claims: Mapping[str, Any], scope_claims: Collection[str]) -> frozenset[str]:
    """Collect scopes from the named claims.

    A claim may be a space-delimited string (`"a b"`) or a list of strings; a dotted
    name reads a nested claim (`"realm_access.roles"`). Anything else is ignored.
    Call this only on verified claims.
    """
    found: set[str] = set()
    for name in scope_claims:
        value: Any = claims.get(name)
        if value is None and "." in name:
            value = claims
            for part in name.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str) and v and " " not in v)
        if len(found) > MAX_SCOPES:
            return frozenset(sorted(found)[:MAX_SCOPES])
    return frozenset(found)
