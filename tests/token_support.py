"""Tokens for the unit tests, from apiguard.testing's `FakeIssuer`, and a table introspector."""

from __future__ import annotations

from typing import Any

import anyio

from apiguard import BackendUnavailableError, InvalidToken
from apiguard.testing import FakeIssuer, make_signing_key, public_jwk
from apiguard.tokens import TokenInfo

__all__ = [
    "AUDIENCE",
    "EC_KEY",
    "ED_KEY",
    "ISSUER",
    "RSA_KEY",
    "RSA_KEY_2",
    "FakeIssuer",
    "TableIntrospector",
    "claims",
    "mint",
    "public_jwk",
]

# The default FakeIssuer: tokens minted here verify against any FakeIssuer() made
# in a test, since they share the process's default keys.
_IDP = FakeIssuer()
ISSUER = _IDP.issuer
AUDIENCE = _IDP.audience
RSA_KEY = _IDP.signing_keys["rsa-1"]
EC_KEY = _IDP.signing_keys["ec-1"]
RSA_KEY_2 = make_signing_key("RS256")
ED_KEY = make_signing_key("EdDSA")


def claims(**overrides: Any) -> dict[str, Any]:
    """The default issuer's claims, with the fixed `jti` the tests look for."""
    return _IDP.claims(**{"jti": "jti-1", **overrides})


def mint(*args: Any, **overrides: Any) -> str:
    """A token of the default issuer (`FakeIssuer.mint`), with `jti` "jti-1" unless given."""
    return _IDP.mint(*args, **{"jti": "jti-1", **overrides})


class TableIntrospector:
    """Answers from a table, counting calls, after `pause` seconds; `down` makes it an
    outage. It checks `exp` exactly (no leeway)."""

    leeway = 0.0

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.calls = 0
        self.down = False
        self.answers: dict[str, TokenInfo] = {}

    async def introspect(self, token: str) -> TokenInfo:
        self.calls += 1
        if self.pause:
            await anyio.sleep(self.pause)
        if self.down:
            raise BackendUnavailableError("authorization server down")
        if token not in self.answers:
            raise InvalidToken(reason="unknown")
        return self.answers[token]

    async def aclose(self) -> None:
        pass
