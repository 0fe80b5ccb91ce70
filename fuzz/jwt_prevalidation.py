"""JWT pre-validation: any text as a bearer token to `JWTIntrospector.introspect`.

The issuer's key set is fetched once at start-up and forged `kid`s never cause a
refetch (a long cooldown), so every input is decided locally: a `TokenInfo`, or
`InvalidToken`; never another exception, never a wait on the network.
"""

from __future__ import annotations

import contextlib

import anyio
from tests.token_support import AUDIENCE, ISSUER, FakeIssuer, mint

from apiguard import InvalidToken
from apiguard.tokens import JWTIntrospector, TokenInfo
from fuzz._drive import drive

_IDP = FakeIssuer()
INTROSPECTOR = JWTIntrospector.from_issuer(
    ISSUER,
    audience=AUDIENCE,
    http_client=_IDP.client(),
    refresh_cooldown=10**9,
    jwks_ttl=10**9,
    jwks_min_ttl=10**9,
    jwks_max_ttl=10**9,
)
anyio.run(INTROSPECTOR.introspect, mint())  # the key set, fetched once
with contextlib.suppress(InvalidToken):  # and the one refetch an unknown kid may cause
    anyio.run(INTROSPECTOR.introspect, mint(kid="unknown"))
assert _IDP.jwks_fetches == 2


def test_one_input(data: bytes) -> None:
    token = data.decode("latin-1")
    try:
        info = drive(INTROSPECTOR.introspect(token))
    except InvalidToken as exc:
        assert exc.reason
        return
    assert isinstance(info, TokenInfo)
    assert info.active


if __name__ == "__main__":
    from fuzz._run import fuzz

    fuzz(test_one_input)
