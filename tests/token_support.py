"""A fake authorization server for unit tests: keys, metadata, JWKS and token minting."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from apiguard import BackendUnavailableError, InvalidToken
from apiguard.tokens import TokenInfo

ISSUER = "https://idp.example"
AUDIENCE = "https://api.example"

# Real-sized keys, made once per test session.
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def public_jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    else:
        jwk = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, **extra}


@dataclass
class FakeIssuer:
    """Serves RFC 8414 metadata and a JWKS; counts requests; can be switched off."""

    issuer: str = ISSUER
    keys: list[dict[str, Any]] = field(
        default_factory=lambda: [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]
    )
    down: bool = False
    oidc_only: bool = False
    metadata_issuer: str | None = None
    cache_control: str | None = None
    requests: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path.startswith("/.well-known/oauth-authorization-server") and not self.oidc_only:
            return httpx.Response(200, json=self.metadata())
        if path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json=self.metadata())
        if path == "/jwks":
            headers = {"cache-control": self.cache_control} if self.cache_control else {}
            return httpx.Response(200, json={"keys": self.keys}, headers=headers)
        return httpx.Response(404)

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.metadata_issuer or self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "introspection_endpoint": f"{self.issuer}/introspect",
        }

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    @property
    def jwks_fetches(self) -> int:
        return self.requests.count("/jwks")


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "client-123",
        "aud": AUDIENCE,
        "client_id": "client-123",
        "iat": now,
        "exp": now + 300,
        "jti": "jti-1",
        "scope": "items:read items:write",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "rsa-1",
    typ: str | None = "at+jwt",
    headers: dict[str, Any] | None = None,
    **claim_overrides: Any,
) -> str:
    header: dict[str, Any] = {"typ": typ, "kid": kid, **(headers or {})}
    header = {k: v for k, v in header.items() if v is not None}
    if typ is None:
        header["typ"] = None  # PyJWT adds "JWT" unless told not to
    return jwt.encode(claims(**claim_overrides), key, algorithm=alg, headers=header)


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
