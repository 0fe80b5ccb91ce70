"""The application's own HTTP client, httpx or httpx2, for discovery, JWKS and introspection.

Each client talks to a real uvicorn server on loopback that plays the authorization
server (apiguard.testing's FakeIssuer behind a small ASGI bridge), over plain HTTP
and over TLS with a private CA and a required client certificate.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from apiguard import BackendUnavailableError, ConfigurationError
from apiguard.testing import FakeIssuer
from apiguard.tokens import JWTIntrospector, RemoteIntrospector, discover
from apiguard.types import Receive, Scope, Send

from .server_support import serve
from .tls_support import make_pki

pytestmark = pytest.mark.anyio


def _httpx2() -> ModuleType:
    if sys.version_info < (3, 11):  # pragma: no cover - httpx2 needs Python 3.11
        pytest.skip("httpx2 needs Python 3.11 or later")
    import httpx2

    return httpx2


@pytest.fixture(params=["httpx", "httpx2"])
def library(request: pytest.FixtureRequest) -> ModuleType:
    """The HTTP client library the application uses."""
    return httpx if request.param == "httpx" else _httpx2()


class IssuerServer:
    """An ASGI app that hands each request to a FakeIssuer, as it would reach it over
    MockTransport; `redirects` and `bodies` replace the answer for some paths."""

    def __init__(self) -> None:
        self.issuer = FakeIssuer()
        self.redirects: dict[str, str] = {}
        self.bodies: dict[str, tuple[bytes, list[tuple[bytes, bytes]]]] = {}
        self.headers: list[dict[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]]
        self.headers.append(dict(headers))
        path = scope["path"]
        if path in self.redirects:
            status, out, content = 302, [(b"location", self.redirects[path].encode())], b""
        elif path in self.bodies:
            status, (content, out) = 200, self.bodies[path]
        else:
            request = httpx.Request(
                scope["method"], f"{self.issuer.issuer}{path}", headers=headers, content=body
            )
            response = self.issuer.handler(request)
            status, content = response.status_code, response.content
            out = [(b"content-type", response.headers["content-type"].encode())]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": content})


@pytest.fixture
def server() -> Iterator[IssuerServer]:
    app = IssuerServer()
    with serve(app) as port:
        app.issuer = FakeIssuer(f"http://127.0.0.1:{port}")
        yield app


async def test_discovery_jwks_and_introspection_through_the_applications_client(
    library: ModuleType, server: IssuerServer
) -> None:
    issuer = server.issuer
    async with library.AsyncClient() as client:
        local = JWTIntrospector.from_issuer(
            issuer.issuer, audience=issuer.audience, http_client=client
        )
        remote = RemoteIntrospector.from_issuer(
            issuer.issuer,
            client_id=issuer.client_id,
            client_secret=issuer.client_secret,
            audience=issuer.audience,
            http_client=client,
        )
        token = issuer.mint(scope="items:read")
        assert (await local.introspect(token)).scopes == {"items:read"}
        assert (await remote.introspect(token)).scopes == {"items:read"}
        issuer.revoke(token)
        assert not (await remote.introspect(token)).active
        await local.aclose()
        await remote.aclose()
        assert not client.is_closed  # the application's client is the application's to close
    assert issuer.requests == [
        "/.well-known/oauth-authorization-server",
        "/jwks",
        "/.well-known/oauth-authorization-server",
        "/introspect",
        "/introspect",
    ]


async def test_the_clients_settings_do_not_loosen_apiguards_bounds(
    library: ModuleType, server: IssuerServer
) -> None:
    """Redirects are not followed, the size cap holds for decoded bodies, the client's
    own Accept-Encoding and auth are not used."""
    issuer = server.issuer
    server.redirects["/jwks"] = f"{issuer.issuer}/elsewhere"
    async with library.AsyncClient(
        follow_redirects=True,
        timeout=None,
        headers={"Accept-Encoding": "br, zstd"},
        auth=("someone", "else"),
    ) as client:
        local = JWTIntrospector.from_issuer(
            issuer.issuer, audience=issuer.audience, http_client=client
        )
        with pytest.raises(BackendUnavailableError, match="JWKS: HTTP 302"):
            await local.introspect(issuer.mint())
        assert "/elsewhere" not in issuer.requests
        assert server.headers[-1]["accept-encoding"] == "gzip, deflate"

        bomb = gzip.compress(b'{"a": "' + b"0" * 4_000_000 + b'"}')
        gzipped = [(b"content-encoding", b"gzip"), (b"content-type", b"application/json")]
        for path in (
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ):
            server.bodies[path] = (bomb, gzipped)
        with pytest.raises(BackendUnavailableError, match="larger than"):
            await discover(client, issuer.issuer)

        remote = RemoteIntrospector(
            issuer.introspection_endpoint,
            client_id=issuer.client_id,
            client_secret=issuer.client_secret,
            audience=issuer.audience,
            http_client=client,
        )
        assert (await remote.introspect(issuer.opaque_token())).active  # our Basic, not theirs


TIMED_OUT = r"(Read|Connect)Timeout"


async def test_apiguards_timeout_applies_to_a_client_without_one(library: ModuleType) -> None:
    """A server that accepts the connection and never answers: a 503, not a hang.

    Mostly a read timeout; on a loaded machine the connection itself may take longer
    than the 0.2 s (a connect timeout): either is apiguard's timeout at work."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        issuer = f"http://127.0.0.1:{silent.getsockname()[1]}"
        async with library.AsyncClient(timeout=None) as client:
            with pytest.raises(BackendUnavailableError, match=TIMED_OUT):
                await discover(client, issuer, timeout=0.2)
            remote = RemoteIntrospector(
                f"{issuer}/introspect",
                client_id="api",
                client_secret="secret",
                audience="https://api.example",
                http_client=client,
                timeout=0.2,
                retries=0,
            )
            with pytest.raises(BackendUnavailableError, match=TIMED_OUT):
                await remote.introspect("token")


def test_only_async_clients_of_httpx_or_httpx2_are_accepted() -> None:
    for wrong in (httpx.Client(), object()):
        with pytest.raises(ConfigurationError, match=r"httpx\.AsyncClient or an httpx2"):
            JWTIntrospector.from_issuer(
                "https://idp.example",
                audience="a",
                http_client=wrong,  # type: ignore[arg-type]
            )
        with pytest.raises(ConfigurationError, match=r"httpx\.AsyncClient or an httpx2"):
            RemoteIntrospector(
                "https://idp.example/introspect",
                client_id="api",
                client_secret="secret",
                audience="a",
                http_client=wrong,  # type: ignore[arg-type]
            )
    with pytest.raises(ConfigurationError, match="timeout"):
        JWTIntrospector.from_issuer("https://idp.example", audience="a", timeout=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        RemoteIntrospector(
            "https://idp.example/introspect",
            client_id="a",
            client_secret="s",
            audience="a",
            timeout=0,
        )


# --- TLS with a private CA and a client certificate (mTLS) ---------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    return make_pki(tmp_path)


async def test_a_client_with_a_private_ca_and_a_client_certificate(
    library: ModuleType, pki: dict[str, str]
) -> None:
    """The authorization server requires mTLS: the application's client brings the CA
    bundle and the certificate; without them the issuer cannot be reached (503)."""
    app = IssuerServer()
    options: dict[str, Any] = {
        "ssl_certfile": pki["server"],
        "ssl_ca_certs": pki["ca"],
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    with serve(app, **options) as port:
        issuer = app.issuer = FakeIssuer(f"https://127.0.0.1:{port}")
        context = ssl.create_default_context(cafile=pki["ca"])
        context.load_cert_chain(pki["client"])
        async with library.AsyncClient(verify=context) as client:
            local = JWTIntrospector.from_issuer(
                issuer.issuer, audience=issuer.audience, http_client=client
            )
            remote = RemoteIntrospector.from_issuer(
                issuer.issuer,
                client_id=issuer.client_id,
                client_secret=issuer.client_secret,
                audience=issuer.audience,
                http_client=client,
            )
            token = issuer.mint()
            assert (await local.introspect(token)).active
            assert (await remote.introspect(token)).active
        without_certificate = ssl.create_default_context(cafile=pki["ca"])
        async with library.AsyncClient(verify=without_certificate) as client:
            with pytest.raises(BackendUnavailableError):
                await discover(client, issuer.issuer)
        async with library.AsyncClient() as client:  # the system's CAs: not this one
            with pytest.raises(BackendUnavailableError, match="ConnectError"):
                await discover(client, issuer.issuer)
