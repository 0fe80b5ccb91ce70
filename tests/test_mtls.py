"""Certificate-bound access tokens (RFC 8705 §3)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apiguard import AuthMiddleware, BearerAuth, ConfigurationError, DPoPAuth
from apiguard.tokens import ClientCertificates, certificate_thumbprint
from apiguard.types import ASGIApp, Receive, Scope, Send

from .dpop_support import CLIENT_KEY, dpop, proof, thumbprint
from .server_support import serve
from .test_bearer_middleware import active, make_app
from .tls_support import make_pki
from .token_support import TableIntrospector

pytestmark = pytest.mark.anyio

INVALID = (
    'Bearer realm="api", error="invalid_token", error_description="The access token is invalid."'
)
PROXY = "10.0.0.7"


def make_certificate(name: str) -> str:
    """A self-signed client certificate, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CERT = make_certificate("client")
OTHER_CERT = make_certificate("other")


def introspector() -> TableIntrospector:
    table = TableIntrospector()
    table.answers["bound"] = active(cnf={"x5t#S256": certificate_thumbprint(CERT)})
    table.answers["both"] = active(
        cnf={"x5t#S256": certificate_thumbprint(CERT), "jkt": thumbprint(CLIENT_KEY)}
    )
    table.answers["plain"] = active()
    return table


def with_tls(app: ASGIApp, pem: str | None) -> ASGIApp:
    """What a server filling the ASGI TLS extension would pass on."""

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        if pem is not None:
            scope["extensions"] = {"tls": {"client_cert_chain": [pem], "tls_version": 0x0304}}
        await app(scope, receive, send)

    return server


def client(app: ASGIApp, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def test_thumbprint_is_base64url_sha256_of_der() -> None:
    """RFC 8705 §3.1: x5t#S256 = base64url(SHA-256(DER)), no padding."""
    der = x509.load_pem_x509_certificate(CERT.encode()).public_bytes(serialization.Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert certificate_thumbprint(CERT) == expected
    assert len(expected) == 43


@pytest.mark.parametrize(
    ("pem", "token", "status"),
    [
        pytest.param(CERT, "bound", 200, id="bound-certificate"),
        pytest.param(OTHER_CERT, "bound", 401, id="other-certificate"),
        pytest.param(None, "bound", 401, id="no-certificate"),
        pytest.param("-----BEGIN CERTIFICATE-----\nAAAA\n", "bound", 401, id="garbage-certificate"),
        pytest.param(None, "plain", 200, id="unbound-token-needs-none"),
        pytest.param(OTHER_CERT, "plain", 200, id="unbound-token-any-certificate"),
    ],
)
async def test_tls_extension(pem: str | None, token: str, status: int) -> None:
    """RFC 8705 §3: the certificate of the connection must be the one the token names."""
    auth = BearerAuth(introspector(), certificates=ClientCertificates())
    app = with_tls(AuthMiddleware(make_app(), authenticators=[auth]), pem)
    async with client(app) as http:
        response = await http.get("/", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == INVALID


async def test_bound_token_refused_when_certificates_are_not_configured() -> None:
    app = with_tls(AuthMiddleware(make_app(), authenticators=[BearerAuth(introspector())]), CERT)
    async with client(app) as http:
        response = await http.get("/", headers={"authorization": "Bearer bound"})
    assert response.status_code == 401


def _proxy_app(header: str = "X-Client-Cert") -> ASGIApp:
    certificates = ClientCertificates(header=header, trusted_proxies=["10.0.0.0/24"])
    return AuthMiddleware(
        make_app(), authenticators=[BearerAuth(introspector(), certificates=certificates)]
    )


def _xfcc(pem: str) -> str:
    return f'By=spiffe://api;Hash=abc;Cert="{quote(pem, safe="")}";Subject="CN=client"'


@pytest.mark.parametrize(
    ("address", "headers", "status"),
    [
        # nginx: proxy_set_header X-Client-Cert $ssl_client_escaped_cert;
        pytest.param(PROXY, [("x-client-cert", quote(CERT))], 200, id="nginx-escaped-pem"),
        pytest.param(PROXY, [("x-client-cert", quote(OTHER_CERT))], 401, id="other-cert"),
        pytest.param(PROXY, [], 401, id="no-header"),
        pytest.param(PROXY, [("x-client-cert", "garbage")], 401, id="garbage"),
        pytest.param(
            PROXY,
            [
                (
                    "x-client-cert",
                    quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
                )
            ],
            401,
            id="malformed-pem",
        ),
        pytest.param(PROXY, [("x-client-cert", "-" * 20000)], 401, id="oversized"),
        pytest.param(
            PROXY,
            [("x-client-cert", quote(CERT)), ("x-client-cert", quote(CERT))],
            401,
            id="sent-twice",
        ),
        # RFC 9700 §4.13: only a trusted proxy's header is believed.
        pytest.param("203.0.113.9", [("x-client-cert", quote(CERT))], 401, id="untrusted-client"),
    ],
)
async def test_certificate_from_trusted_proxy(
    address: str, headers: list[tuple[str, str]], status: int
) -> None:
    async with client(_proxy_app(), address) as http:
        response = await http.get("/", headers=[("authorization", "Bearer bound"), *headers])
    assert response.status_code == status


@pytest.mark.parametrize(
    ("value", "status"),
    [
        pytest.param(_xfcc(CERT), 200, id="envoy-xfcc"),
        pytest.param(_xfcc(OTHER_CERT), 401, id="envoy-xfcc-other"),
        pytest.param(_xfcc(CERT) + "," + _xfcc(OTHER_CERT), 401, id="envoy-two-elements"),
        pytest.param("By=spiffe://api;Hash=abc", 401, id="envoy-no-cert"),
    ],
)
async def test_envoy_forwarded_client_cert(value: str, status: int) -> None:
    app = _proxy_app("X-Forwarded-Client-Cert")
    async with client(app, PROXY) as http:
        response = await http.get(
            "/", headers={"authorization": "Bearer bound", "x-forwarded-client-cert": value}
        )
    assert response.status_code == status


async def test_dpop_and_certificate_bound_together() -> None:
    """A token bound to both needs both: the proof key and the certificate."""
    auth = DPoPAuth(introspector(), certificates=ClientCertificates())
    headers = dpop("both", proof("both"))
    async with client(with_tls(AuthMiddleware(make_app(), authenticators=[auth]), CERT)) as http:
        ok = await http.get("/", headers=headers)
    async with client(
        with_tls(AuthMiddleware(make_app(), authenticators=[auth]), OTHER_CERT)
    ) as http:
        wrong = await http.get("/", headers=dpop("both", proof("both")))
    assert ok.status_code == 200
    assert wrong.status_code == 401


@pytest.mark.parametrize(
    "options",
    [
        {"header": "X-Client-Cert"},
        {"tls_extension": False},
        {"header": "X-Client-Cert", "trusted_proxies": "10.0.0.1"},
        {"header": "X-Client-Cert", "trusted_proxies": ["not-an-address"]},
    ],
)
def test_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ClientCertificates(**options)


def test_repr() -> None:
    assert repr(ClientCertificates(header="X-Client-Cert", trusted_proxies=["10.0.0.1"])) == (
        "ClientCertificates(tls_extension=True, header='x-client-cert')"
    )


@pytest.mark.parametrize("peer", [None, ("testclient", 50000)])
async def test_header_from_no_or_unnamed_peer_is_ignored(peer: Any) -> None:
    """Unix sockets (no client) and non-IP peers are not trusted proxies."""
    seen: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["client"] = peer
        await _proxy_app()(scope, receive, send)
        seen.append(1)

    async with client(app) as http:
        response = await http.get(
            "/", headers={"authorization": "Bearer bound", "x-client-cert": quote(CERT)}
        )
    assert response.status_code == 401
    assert seen == [1]


async def test_unreadable_tls_chain_counts_as_none() -> None:
    auth = BearerAuth(introspector(), certificates=ClientCertificates())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {"tls": {"client_cert_chain": [b"\xff not text"]}}
        await AuthMiddleware(make_app(), authenticators=[auth])(scope, receive, send)

    async with client(app) as http:
        response = await http.get("/", headers={"authorization": "Bearer bound"})
    assert response.status_code == 401


def test_uvicorn_tls_does_not_fill_the_tls_extension(tmp_path: Path) -> None:
    """A real uvicorn with TLS and required client certificates: the handshake checks
    the certificate, but uvicorn (0.54) does not pass it to the app in
    `scope["extensions"]["tls"]`, so a certificate-bound token cannot be matched and
    is refused. With uvicorn, terminate TLS at a proxy and use the header route."""
    pki = make_pki(tmp_path)  # each PEM file holds its certificate, then its key
    client_cert = x509.load_pem_x509_certificate(Path(pki["client"]).read_bytes())
    pem = client_cert.public_bytes(serialization.Encoding.PEM).decode()
    table = TableIntrospector()
    table.answers["bound"] = active(cnf={"x5t#S256": certificate_thumbprint(pem)})
    extensions: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        extensions.append(scope.get("extensions", {}).get("tls"))
        guarded = AuthMiddleware(
            make_app(),
            authenticators=[BearerAuth(table, certificates=ClientCertificates())],
        )
        await guarded(scope, receive, send)

    options: dict[str, Any] = {
        "ssl_certfile": pki["server"],
        "ssl_ca_certs": pki["ca"],
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    context = ssl.create_default_context(cafile=pki["ca"])
    context.load_cert_chain(pki["client"])
    anonymous = ssl.create_default_context(cafile=pki["ca"])
    with serve(app, **options) as port:
        url = f"https://127.0.0.1:{port}/"
        response = httpx.get(url, headers={"authorization": "Bearer bound"}, verify=context)
        with pytest.raises(httpx.HTTPError):  # the server requires a client certificate
            httpx.get(url, verify=anonymous)
    assert extensions == [None]
    assert response.status_code == 401
