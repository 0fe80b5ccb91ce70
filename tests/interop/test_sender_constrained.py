"""DPoP-bound (RFC 9449) and certificate-bound (RFC 8705) tokens from a real
authorization server (panva/oidc-provider), checked by apiguard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiguard import AuthMiddleware, BearerAuth, DPoPAuth
from apiguard.tokens import ClientCertificates, JWTIntrospector, RemoteIntrospector

from ..dpop_support import OTHER_KEY, proof
from ..test_mtls import CERT, OTHER_CERT
from .conftest import API, INTROSPECTION_CLIENT, AuthorizationServer

pytestmark = pytest.mark.anyio

RS256, OPAQUE = f"{API}/rs256", f"{API}/opaque"
DPOP_CLIENT = ("dpop-service", "dpop-secret")
MTLS_CLIENT = ("mtls-service", "mtls-secret")
URL = "http://testserver/items"


async def items(request: Request) -> JSONResponse:
    return JSONResponse({"client_id": request.user.client_id})


def guarded(introspector: Any, **dpop_options: Any) -> AuthMiddleware:
    bearer = BearerAuth(introspector)
    return AuthMiddleware(
        Starlette(routes=[Route("/items", items, methods=["GET", "POST"])]),
        authenticators=[bearer, DPoPAuth(bearer.verifier, **dpop_options)],
    )


def dpop_token(server: AuthorizationServer, resource: str) -> str:
    """RFC 9449 §5: the token request carries a proof for the token endpoint."""
    token_proof = proof(None, htm="POST", htu=f"{server.issuer}/token")
    token, token_type = server.bound_token(resource, DPOP_CLIENT, {"DPoP": token_proof})
    assert token_type == "DPoP"
    return token


@pytest.fixture
async def jwt_app(authorization_server: AuthorizationServer) -> AsyncIterator[httpx.AsyncClient]:
    introspector = JWTIntrospector.from_issuer(authorization_server.issuer, audience=RS256)
    transport = httpx.ASGITransport(app=guarded(introspector))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await introspector.aclose()


async def test_dpop_bound_jwt_with_valid_proof(
    authorization_server: AuthorizationServer, jwt_app: httpx.AsyncClient
) -> None:
    token = dpop_token(authorization_server, RS256)
    response = await jwt_app.get(
        "/items", headers={"Authorization": f"DPoP {token}", "DPoP": proof(token, htu=URL)}
    )
    assert response.status_code == 200
    assert response.json() == {"client_id": "dpop-service"}


@pytest.mark.parametrize(
    ("make_headers", "error"),
    [
        pytest.param(lambda t: {"Authorization": f"DPoP {t}"}, "invalid_dpop_proof", id="no-proof"),
        pytest.param(lambda t: {"Authorization": f"Bearer {t}"}, "invalid_token", id="as-bearer"),
        pytest.param(
            lambda t: {"Authorization": f"DPoP {t}", "DPoP": proof(t, htu="http://testserver/x")},
            "invalid_dpop_proof",
            id="wrong-htu",
        ),
        pytest.param(
            lambda t: {"Authorization": f"DPoP {t}", "DPoP": proof(t, htu=URL, htm="POST")},
            "invalid_dpop_proof",
            id="wrong-htm",
        ),
        pytest.param(
            lambda t: {"Authorization": f"DPoP {t}", "DPoP": proof(t, htu=URL, key=OTHER_KEY)},
            "invalid_token",
            id="other-key",
        ),
    ],
)
async def test_dpop_bound_jwt_refused(
    authorization_server: AuthorizationServer,
    jwt_app: httpx.AsyncClient,
    make_headers: Any,
    error: str,
) -> None:
    """RFC 9449 §4.3, §7.1, §7.2 against the authorization server's own tokens."""
    token = dpop_token(authorization_server, RS256)
    response = await jwt_app.get("/items", headers=make_headers(token))
    assert response.status_code == 401
    assert f'error="{error}"' in response.headers["www-authenticate"]


async def test_replayed_proof_refused(
    authorization_server: AuthorizationServer, jwt_app: httpx.AsyncClient
) -> None:
    token = dpop_token(authorization_server, RS256)
    headers = {"Authorization": f"DPoP {token}", "DPoP": proof(token, htu=URL)}
    assert (await jwt_app.get("/items", headers=headers)).status_code == 200
    replayed = await jwt_app.get("/items", headers=headers)
    assert replayed.status_code == 401
    assert 'error="invalid_dpop_proof"' in replayed.headers["www-authenticate"]


async def test_dpop_bound_opaque_token_through_introspection(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 9449 §6.2: introspection returns `cnf.jkt`; the resource server checks it."""
    client_id, secret = INTROSPECTION_CLIENT
    introspector = RemoteIntrospector.from_issuer(
        authorization_server.issuer, client_id=client_id, client_secret=secret, audience=OPAQUE
    )
    token = dpop_token(authorization_server, OPAQUE)
    transport = httpx.ASGITransport(app=guarded(introspector))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        ok = await client.get(
            "/items", headers={"Authorization": f"DPoP {token}", "DPoP": proof(token, htu=URL)}
        )
        other = await client.get(
            "/items",
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": proof(token, htu=URL, key=OTHER_KEY),
            },
        )
        as_bearer = await client.get("/items", headers={"Authorization": f"Bearer {token}"})
    await introspector.aclose()
    assert ok.status_code == 200
    assert other.status_code == 401
    assert as_bearer.status_code == 401


async def test_certificate_bound_token(authorization_server: AuthorizationServer) -> None:
    """RFC 8705 §3: the authorization server binds the token to the certificate a proxy
    forwarded; apiguard accepts it only with that certificate."""
    token, token_type = authorization_server.bound_token(
        RS256, MTLS_CLIENT, {"X-Client-Cert": quote(CERT, safe="")}
    )
    assert token_type == "Bearer"  # RFC 8705 tokens keep the Bearer scheme
    introspector = JWTIntrospector.from_issuer(authorization_server.issuer, audience=RS256)
    certificates = ClientCertificates(header="X-Client-Cert", trusted_proxies=["127.0.0.1"])
    app = AuthMiddleware(
        Starlette(routes=[Route("/items", items)]),
        authenticators=[BearerAuth(introspector, certificates=certificates)],
    )
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        results = [
            await client.get(
                "/items", headers={"Authorization": f"Bearer {token}", "X-Client-Cert": quote(pem)}
            )
            for pem in (CERT, OTHER_CERT)
        ]
        missing = await client.get("/items", headers={"Authorization": f"Bearer {token}"})
    await introspector.aclose()
    assert [r.status_code for r in results] == [200, 401]
    assert missing.status_code == 401
