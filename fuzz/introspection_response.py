"""RFC 7662 answers: any body, any content coding, through the bounded reader and checks.

Every input is a `TokenInfo`, `InvalidToken` (401) or `BackendUnavailableError`
(503); the decoded body never exceeds `MAX_RESPONSE_BYTES`.
"""

from __future__ import annotations

import contextlib

import httpx

from apiguard import BackendUnavailableError, InvalidToken
from apiguard.tokens import RemoteIntrospector, TokenInfo
from apiguard.tokens._http import MAX_RESPONSE_BYTES, _BoundedBody, read_json
from apiguard.tokens.introspection import require_active
from fuzz._drive import drive

INTROSPECTOR = RemoteIntrospector(
    "https://idp.example/introspect",
    client_id="api",
    client_secret="fuzz-4Jx8Qm2Vt7Rb",
    audience="https://api.example",
    issuer="https://idp.example",
)
CODINGS = ["identity", "gzip", "deflate", "br", "gzip, gzip"]


def test_one_input(data: bytes) -> None:
    coding = CODINGS[data[0] % len(CODINGS)] if data else "identity"
    body = data[1:]
    if coding in ("identity", "gzip", "deflate"):
        bounded = _BoundedBody(coding, "introspection")
        with contextlib.suppress(BackendUnavailableError):
            bounded.feed(body)
        assert len(bounded.data) <= MAX_RESPONSE_BYTES + 1
    response = httpx.Response(
        200, headers={"content-encoding": coding}, stream=httpx.ByteStream(body)
    )
    try:
        # What `RemoteIntrospector.introspect` does with a body: read, require a
        # boolean `active`, check.
        answer = require_active(drive(read_json(response, "introspection")))
        info = INTROSPECTOR._check(answer)
    except (BackendUnavailableError, InvalidToken):
        return
    assert isinstance(info, TokenInfo)


if __name__ == "__main__":
    from fuzz._run import fuzz

    fuzz(test_one_input)
