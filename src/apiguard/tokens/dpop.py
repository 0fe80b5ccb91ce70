"""DPoP proofs (RFC 9449) checked at a resource server.

`DPoPProofChecker.check` runs every check of RFC 9449 §4.3 that needs only the
request and the proof: one well-formed JWT of `typ` `dpop+jwt`, an asymmetric `alg`
from an explicit allowlist, a public `jwk` (no private members) that verifies the
signature, `htm`, `htu` (normalised, without query and fragment), `iat` inside a
window, `ath` (§4.2, the access token's hash) and, when nonces are on, `nonce`
(§9). It returns the key's RFC 7638 thumbprint, which the caller compares with the
token's `cnf.jkt` (§6), and the proof's `jti` for the replay store (§11.1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError

from apiguard._origin import normalize_url
from apiguard.exceptions import ConfigurationError, InvalidDPoPProof, UseDPoPNonce

__all__ = [
    "DEFAULT_DPOP_ALGORITHMS",
    "DPoPNonces",
    "DPoPProofChecker",
    "ProofResult",
    "b64url",
    "jwk_thumbprint",
]

DEFAULT_DPOP_ALGORITHMS = ("ES256", "ES384", "PS256", "RS256", "EdDSA")
"""Proof algorithms accepted unless told otherwise: asymmetric only (RFC 9449 §4.3)."""

# alg -> (kty, allowed curves or None).
_KEY_TYPES: dict[str, tuple[str, frozenset[str] | None]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
# RFC 7638 §3.2: the members a thumbprint is computed over, by key type.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
# RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2: members that only private keys have.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MIN_RSA_BITS = 2048
MAX_PROOF = 8192  # bytes; an RSA-4096 proof is about 2,000
MAX_JTI = 256  # RFC 9449 §11.1: very large jti values are refused
_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: bytes) -> bytes:
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url-encoded.

    Raises:
        ValueError: The key type is not EC, RSA or OKP, or a required member is
            missing or not a string.
    """
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise ValueError("unsupported key type")
    required = {name: jwk.get(name) for name in members}
    if not all(isinstance(value, str) for value in required.values()):
        raise ValueError("missing key member")
    # RFC 7638 §3: members in lexicographic order, no whitespace, UTF-8.
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


class DPoPNonces:
    """Server-issued DPoP nonces (RFC 9449 §9), stateless: a time and its HMAC.

    A nonce is valid for `lifetime` seconds after it is issued, at any worker that
    shares `secret`. Without a `secret` a random one is made: nonces are then valid
    only in this process, so pass the same secret to every worker.

    Args:
        secret: At least 32 bytes, kept secret.
        lifetime: Seconds a nonce stays valid.
    """

    def __init__(self, secret: bytes | None = None, *, lifetime: float = 300.0) -> None:
        if secret is not None and len(secret) < 32:
            raise ConfigurationError("the DPoP nonce secret needs at least 32 bytes")
        if lifetime <= 0:
            raise ConfigurationError("the DPoP nonce lifetime must be positive")
        self._secret = secret or secrets.token_bytes(32)
        self.lifetime = lifetime

    def __repr__(self) -> str:
        return f"DPoPNonces(lifetime={self.lifetime})"

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._secret, stamp, hashlib.sha256).digest()[:16]

    def issue(self, now: float) -> str:
        """A new nonce, valid from `now` (Unix time)."""
        stamp = struct.pack(">Q", int(now))
        return b64url(stamp + self._mac(stamp))

    def valid(self, nonce: str, now: float) -> bool:
        """Whether `nonce` was issued here and has not expired."""
        if len(nonce) != 32:
            return False
        try:
            raw = _b64decode(nonce.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            return False
        if len(raw) != 24 or not hmac.compare_digest(raw[8:], self._mac(raw[:8])):
            return False
        issued: int = struct.unpack(">Q", raw[:8])[0]
        return issued - 5 <= now <= issued + self.lifetime


@dataclass(frozen=True, slots=True)
class ProofResult:
    """What a valid proof says: the key's RFC 7638 thumbprint and the proof's `jti`."""

    jkt: str
    jti: str


class DPoPProofChecker:
    """The request-level checks of RFC 9449 §4.3 on one `DPoP` header value.

    Args:
        algorithms: The proof algorithms accepted; asymmetric only.
        max_age: Seconds a proof is accepted after its `iat`.
        clock_skew: Seconds a proof's `iat` may be ahead of this server's clock.
        nonces: Require server-issued nonces (§9), or `None` for none.
    """

    def __init__(
        self,
        *,
        algorithms: Collection[str] = DEFAULT_DPOP_ALGORITHMS,
        max_age: float = 60.0,
        clock_skew: float = 5.0,
        nonces: DPoPNonces | None = None,
    ) -> None:
        if isinstance(algorithms, str):
            raise ConfigurationError("algorithms takes a collection, not str")
        if not algorithms:
            raise ConfigurationError("at least one DPoP algorithm is required")
        unknown = sorted(set(algorithms) - _KEY_TYPES.keys())
        if unknown:
            raise ConfigurationError(
                f"DPoP proofs need asymmetric algorithms; not supported: {', '.join(unknown)}"
            )
        if max_age <= 0 or clock_skew < 0:
            raise ConfigurationError("max_age must be positive and clock_skew not negative")
        self.algorithms = tuple(dict.fromkeys(algorithms))
        self._allowed = frozenset(self.algorithms)
        self.max_age = max_age
        self.clock_skew = clock_skew
        self.nonces = nonces
        # PyJWT's implementations, used directly: the proof's form is checked here.
        supported = get_default_algorithms()
        self._algorithms: dict[str, Algorithm] = {name: supported[name] for name in self.algorithms}

    @property
    def replay_window(self) -> float:
        """How long a proof may still be accepted after it is first seen."""
        return self.max_age + self.clock_skew

    def check(
        self, proof: bytes, *, method: str, url: str, token: bytes, now: float
    ) -> ProofResult:
        """Check `proof` for a request `method url` carrying access `token`.

        `url` is the request's external URL without its query (`_origin.request_url`).

        Raises:
            InvalidDPoPProof: A check failed; `reason` says which (for logs).
            UseDPoPNonce: Nonces are required and the proof has none, or an old one.
        """
        if len(proof) > MAX_PROOF:
            raise InvalidDPoPProof(reason="proof too large")
        if not _COMPACT.fullmatch(proof):
            raise InvalidDPoPProof(reason="not a compact JWS")
        header = self._header(proof)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise InvalidDPoPProof(reason="algorithm not allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != "dpop+jwt":  # RFC 7515 §4.1.9
            raise InvalidDPoPProof(reason="typ is not dpop+jwt")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise InvalidDPoPProof(reason="no jwk")
        algorithm = self._algorithms[alg]
        key, jkt = self._key(jwk, alg, algorithm)
        header_part, payload_part, signature_part = proof.split(b".")
        try:
            valid = algorithm.verify(
                header_part + b"." + payload_part, key, _b64decode(signature_part)
            )
        except (PyJWTError, ValueError, TypeError):
            valid = False
        if not valid:
            raise InvalidDPoPProof(reason="signature does not verify")
        try:
            claims = json.loads(_b64decode(payload_part))
        except (binascii.Error, ValueError):
            raise InvalidDPoPProof(reason="claims are not JSON") from None
        if not isinstance(claims, dict):
            raise InvalidDPoPProof(reason="claims are not an object")
        jti = self._claims(claims, method=method, url=url, token=token, now=now)
        return ProofResult(jkt=jkt, jti=jti)

    def _header(self, proof: bytes) -> dict[str, Any]:
        segment = proof.partition(b".")[0]
        try:
            header = json.loads(_b64decode(segment))
        except (binascii.Error, ValueError):
            raise InvalidDPoPProof(reason="header is not JSON") from None
        if not isinstance(header, dict):
            raise InvalidDPoPProof(reason="header is not an object")
        return header

    def _key(self, jwk: dict[str, Any], alg: str, algorithm: Algorithm) -> tuple[Any, str]:
        if _PRIVATE_MEMBERS & jwk.keys():
            raise InvalidDPoPProof(reason="jwk holds a private key")  # RFC 9449 §4.3 check 7
        kty, curves = _KEY_TYPES[alg]
        if jwk.get("kty") != kty or (curves is not None and jwk.get("crv") not in curves):
            raise InvalidDPoPProof(reason="jwk does not fit alg")
        try:
            jkt = jwk_thumbprint(jwk)
            key = algorithm.from_jwk(jwk)
        except (PyJWTError, ValueError, TypeError, KeyError):
            raise InvalidDPoPProof(reason="jwk is not a valid key") from None
        if kty == "RSA" and getattr(key, "key_size", 0) < _MIN_RSA_BITS:
            raise InvalidDPoPProof(reason="RSA key too small")
        return key, jkt

    def _claims(
        self, claims: dict[str, Any], *, method: str, url: str, token: bytes, now: float
    ) -> str:
        jti, htm, htu, iat = (claims.get(name) for name in ("jti", "htm", "htu", "iat"))
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
            raise InvalidDPoPProof(reason="jti missing or too long")
        if htm != method:
            raise InvalidDPoPProof(reason="htm does not match")
        try:
            matches = isinstance(htu, str) and normalize_url(htu) == normalize_url(url)
        except ValueError:
            matches = False
        if not matches:
            raise InvalidDPoPProof(reason="htu does not match")
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise InvalidDPoPProof(reason="iat missing")
        if not now - self.max_age <= iat <= now + self.clock_skew:
            raise InvalidDPoPProof(reason="iat outside the window")
        ath = claims.get("ath")
        expected = b64url(hashlib.sha256(token).digest())
        if not isinstance(ath, str) or not hmac.compare_digest(ath.encode(), expected.encode()):
            raise InvalidDPoPProof(reason="ath does not match the token")
        if self.nonces is not None:
            nonce = claims.get("nonce")
            if not isinstance(nonce, str) or not self.nonces.valid(nonce, now):
                raise UseDPoPNonce(self.nonces.issue(now))
        return jti
