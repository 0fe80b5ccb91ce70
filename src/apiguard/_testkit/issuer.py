"""`FakeIssuer`: an authorization server in memory, reached through `httpx.MockTransport`.

It signs JWT access tokens with its own keys, publishes RFC 8414 / OpenID Connect
discovery metadata and a JWKS, and answers RFC 7662 introspection requests for the
tokens it issued. No socket is opened: point a `JWTIntrospector` or a
`RemoteIntrospector` at it with `http_client=issuer.client()`.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from apiguard.exceptions import ConfigurationError
from apiguard.tokens import JWTIntrospector, RemoteIntrospector

__all__ = ["FakeIssuer", "make_signing_key", "public_jwk"]

_CURVES: dict[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}
_ALG_OF_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def make_signing_key(alg: str = "RS256") -> PrivateKey:
    """A new private key for `alg`: RS*/PS* (RSA 2048), ES256/384/512, or EdDSA (Ed25519)."""
    if alg[:2] in ("RS", "PS"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg])
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigurationError(f"no asymmetric key type for algorithm {alg!r}")


@functools.cache
def _shared_key(alg: str) -> PrivateKey:
    # RSA key generation takes tens of milliseconds: the default keys are made once
    # per process and shared by every FakeIssuer that is not given its own.
    return make_signing_key(alg)


def _alg_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _ALG_OF_CURVE[key.curve.name]
    return "EdDSA"


def public_jwk(private_key: Any, kid: str, **members: Any) -> dict[str, Any]:
    """The public JWK (RFC 7517) of `private_key`, with `kid` and any extra `members`."""
    public = private_key.public_key()
    if isinstance(private_key, rsa.RSAPrivateKey):
        jwk = json.loads(RSAAlgorithm.to_jwk(public))
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk = json.loads(ECAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(OKPAlgorithm.to_jwk(public))
    return {**jwk, "kid": kid, **members}


class FakeIssuer:
    """An authorization server for tests: mints tokens and serves metadata, keys and introspection.

    Args:
        issuer: The issuer identifier; its metadata lives under it (RFC 8414 §3.1
            and OpenID Connect Discovery §4), its JWKS at `{issuer}/jwks` and its
            introspection endpoint at `{issuer}/introspect`.
        audience: The `aud` of the tokens it mints unless told otherwise.
        signing_keys: `kid` -> private key. By default `rsa-1` (RSA, RS256) and
            `ec-1` (P-256, ES256), made once per process.
        client_id: The client id the introspection endpoint accepts (HTTP Basic,
            RFC 7662 §2.1, or in the form body).
        client_secret: That client's secret.

    Attributes you may change during a test:
        keys: The JWKS it publishes (public JWKs). Replace it to rotate keys.
        down: When true, every request fails to connect (an outage).
        oidc_only: Serve only the OpenID Connect discovery document, not RFC 8414.
        metadata_issuer: Name another issuer in the metadata (a misconfiguration).
        cache_control: A `Cache-Control` header for the JWKS response.
        requests: The path of every request it received, in order.
    """

    def __init__(
        self,
        issuer: str = "https://idp.example",
        *,
        audience: str = "https://api.example",
        signing_keys: Mapping[str, Any] | None = None,
        keys: list[dict[str, Any]] | None = None,
        client_id: str = "api",
        client_secret: str = "api-secret",  # noqa: S107 - a test credential
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        if signing_keys is None:
            signing_keys = {"rsa-1": _shared_key("RS256"), "ec-1": _shared_key("ES256")}
        self.signing_keys: dict[str, Any] = dict(signing_keys)
        if not self.signing_keys:
            raise ConfigurationError("a FakeIssuer needs at least one signing key")
        self.keys: list[dict[str, Any]] = (
            keys
            if keys is not None
            else [public_jwk(key, kid) for kid, key in self.signing_keys.items()]
        )
        self.client_id = client_id
        self.client_secret = client_secret
        self.down = False
        self.oidc_only = False
        self.metadata_issuer: str | None = None
        self.cache_control: str | None = None
        self.requests: list[str] = []
        self._issued: dict[str, dict[str, Any]] = {}
        self._revoked: set[str] = set()
        self._path = urlsplit(self.issuer).path.rstrip("/")

    def __repr__(self) -> str:
        return f"FakeIssuer({self.issuer!r})"

    # --- tokens ----------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """The claims of a token it would mint: `iss`, `sub`, `aud`, `client_id`,
        `iat`, `exp` (in 5 minutes), a new `jti`, and `scope`; `overrides` change
        them, and a claim given as `None` is left out."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "client-123",
            "aud": self.audience,
            "client_id": "client-123",
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "scope": "items:read items:write",
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def mint(
        self,
        key: Any = None,
        alg: str | None = None,
        kid: str | None = "",
        typ: str | None = "at+jwt",
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT access token (RFC 9068) with `claims(**claims)`.

        Args:
            key: The private key to sign with; by default the signing key named by
                `kid`, or the first one. Pass a key it does not publish to forge.
            alg: The algorithm; by default the one the key's type calls for.
            kid: The `kid` header; by default the first signing key's; `None` for none.
            typ: The `typ` header: `at+jwt` as RFC 9068 §2.1 asks, `"JWT"` as
                many providers send, `None` for none.
            headers: More header members (or replacements).
        """
        first = next(iter(self.signing_keys))
        if kid == "":
            kid = first
        if key is None:
            key = self.signing_keys.get(kid or first, self.signing_keys[first])
        header: dict[str, Any] = {"kid": kid, **(headers or {})}
        header = {k: v for k, v in header.items() if v is not None}
        header["typ"] = typ  # None: PyJWT would add "JWT" unless told not to
        payload = self.claims(**claims)
        token = jwt.encode(payload, key, algorithm=alg or _alg_for(key), headers=header)
        self._issued[token] = payload
        return token

    def opaque_token(self, **claims: Any) -> str:
        """A random token only its introspection endpoint knows, with `claims(**claims)`."""
        token = secrets.token_urlsafe(32)
        self._issued[token] = self.claims(**claims)
        return token

    def revoke(self, token: str) -> None:
        """From now on introspection answers `{"active": false}` for `token`."""
        self._revoked.add(token)

    # --- what it serves ----------------------------------------------------------

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer.rstrip('/')}/jwks"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer.rstrip('/')}/introspect"

    @property
    def jwks_fetches(self) -> int:
        """How many times its JWKS was requested."""
        return self.requests.count(urlsplit(self.jwks_uri).path)

    def metadata(self) -> dict[str, Any]:
        """Its authorization server metadata (RFC 8414 §2)."""
        return {
            "issuer": self.metadata_issuer or self.issuer,
            "jwks_uri": self.jwks_uri,
            "introspection_endpoint": self.introspection_endpoint,
            "token_endpoint": f"{self.issuer.rstrip('/')}/token",
            "grant_types_supported": ["client_credentials"],
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        """The `httpx.MockTransport` handler: one request in, one response out."""
        path = request.url.path
        self.requests.append(path)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if path == "/.well-known/oauth-authorization-server" + self._path and not self.oidc_only:
            return httpx.Response(200, json=self.metadata())
        if path == self._path + "/.well-known/openid-configuration":
            return httpx.Response(200, json=self.metadata())
        if path == urlsplit(self.jwks_uri).path:
            headers = {"cache-control": self.cache_control} if self.cache_control else {}
            return httpx.Response(200, json={"keys": self.keys}, headers=headers)
        if path == urlsplit(self.introspection_endpoint).path and request.method == "POST":
            return self._introspect(request)
        return httpx.Response(404)

    def _introspect(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        client = (form.get("client_id"), form.get("client_secret"))
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            pair = base64.b64decode(authorization[6:]).decode()
            name, _, secret = pair.partition(":")
            client = (unquote_plus(name), unquote_plus(secret))
        if client != (self.client_id, self.client_secret):
            # RFC 6749 §5.2: a failed client authentication is a 401 invalid_client.
            return httpx.Response(401, json={"error": "invalid_client"})
        token = form.get("token")
        if token is None:
            return httpx.Response(400, json={"error": "invalid_request"})
        claims = self._issued.get(token)
        if claims is None or token in self._revoked or claims.get("exp", 0) <= time.time():
            return httpx.Response(200, json={"active": False})  # RFC 7662 §2.2
        return httpx.Response(200, json={"active": True, "token_type": "Bearer", **claims})

    def transport(self) -> httpx.MockTransport:
        """An `httpx.MockTransport` that sends every request to this issuer."""
        return httpx.MockTransport(self.handler)

    def client(self) -> httpx.AsyncClient:
        """An `httpx.AsyncClient` whose requests all reach this issuer, and nothing else."""
        return httpx.AsyncClient(transport=self.transport())

    def jwt_introspector(
        self, *, audience: str | Collection[str] | None = None, **options: Any
    ) -> JWTIntrospector:
        """A `JWTIntrospector` trusting this issuer, through discovery, over `client()`.

        `options` are those of `JWTIntrospector.from_issuer` (`accept_jwt_typ`,
        `scope_claims`, `clock`, ...). Close it with `aclose()`: it closes the client.
        """
        introspector = JWTIntrospector.from_issuer(
            self.issuer,
            audience=audience or self.audience,
            http_client=self.client(),
            **options,
        )
        introspector._owns_client = True  # made here, for the introspector alone
        return introspector

    def remote_introspector(
        self, *, audience: str | Collection[str] | None = None, **options: Any
    ) -> RemoteIntrospector:
        """A `RemoteIntrospector` asking this issuer's introspection endpoint, over `client()`,
        with its client credentials. `options` are `RemoteIntrospector`'s; close it with
        `aclose()`."""
        introspector = RemoteIntrospector(
            self.introspection_endpoint,
            client_id=self.client_id,
            client_secret=self.client_secret,
            audience=audience or self.audience,
            issuer=self.issuer,
            http_client=self.client(),
            **options,
        )
        introspector._owns_client = True
        return introspector
