"""DPoP proofs minted the way a client makes them (RFC 9449 §4.2), for tests."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from apiguard.tokens import jwk_thumbprint
from apiguard.tokens.dpop import b64url

CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_CLIENT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_CLIENT_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk_of(key: Any, *, private: bool = False) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm: Any = RSAAlgorithm
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = ECAlgorithm
    else:
        algorithm = OKPAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key if private else key.public_key()))
    return jwk


def thumbprint(key: Any) -> str:
    return jwk_thumbprint(jwk_of(key))


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def proof(
    token: str | None,
    *,
    htm: str | None = "GET",
    htu: str | None = "http://testserver/",
    key: Any = CLIENT_KEY,
    alg: str = "ES256",
    jwk: dict[str, Any] | None = None,
    typ: str | None = "dpop+jwt",
    iat: float | str | None = None,
    jti: str | None = None,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed proof; any claim can be overridden, `None` leaves it out."""
    body: dict[str, Any] = {
        "jti": jti if jti is not None else str(uuid.uuid4()),
        "htm": htm,
        "htu": htu,
        "iat": int(time.time()) if iat is None else iat,
    }
    if token is not None:
        body["ath"] = ath(token)
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    header: dict[str, Any] = {"typ": typ, "jwk": jwk if jwk is not None else jwk_of(key)}
    header.update(headers or {})
    return jwt.encode(body, key, algorithm=alg, headers=header)


def dpop(token: str, proof_value: str) -> dict[str, str]:
    return {"authorization": f"DPoP {token}", "dpop": proof_value}
