"""apiguard against a real authorization server: panva/oidc-provider on loopback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiguard import BearerTokenMiddleware, CacheOptions
from apiguard.tokens import CompositeIntrospector, JWTIntrospector, RemoteIntrospector
from apiguard.types import TokenIntrospector

from .conftest import API, INTROSPECTION_CLIENT, AuthorizationServer

pytestmark = pytest.mark.anyio

RS256, ES256, OPAQUE, SHORT = f"{API}/rs256", f"{API}/es256", f"{API}/opaque", f"{API}/short"


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"client_id": request.user.client_id, "scopes": request.auth.scopes})


def app_with(introspector: TokenIntrospector, **options: Any) -> httpx.AsyncClient:
    guarded = BearerTokenMiddleware(
        Starlette(routes=[Route("/", whoami)]), introspector=introspector, **options
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded), base_url="http://testserver"
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def local(
    server: AuthorizationServer, audience: Any = (RS256, ES256, SHORT), **options: Any
) -> JWTIntrospector:
    return JWTIntrospector.from_issuer(server.issuer, audience=audience, leeway=0, **options)


def remote(server: AuthorizationServer, **options: Any) -> RemoteIntrospector:
    client_id, secret = INTROSPECTION_CLIENT
    settings: dict[str, Any] = {
        "client_id": client_id,
        "client_secret": secret,
        "audience": OPAQUE,
    } | options
    return RemoteIntrospector.from_issuer(server.issuer, **settings)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[AuthorizationServer]:
    """A server of the test's own, for tests that restart or stop it."""
    server = AuthorizationServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def jwt_client(authorization_server: AuthorizationServer) -> AsyncIterator[httpx.AsyncClient]:
    introspector = local(authorization_server)
    async with app_with(introspector) as client:
        yield client
    await introspector.aclose()


@pytest.mark.parametrize(("resource", "alg"), [(RS256, "RS256"), (ES256, "ES256")])
async def test_valid_jwt_access_token(
    authorization_server: AuthorizationServer,
    jwt_client: httpx.AsyncClient,
    resource: str,
    alg: str,
) -> None:
    """RFC 9068 tokens from a real server: typ at+jwt, signed with the issuer's key."""
    token = authorization_server.token(resource)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"]) == (alg, "at+jwt")
    response = await jwt_client.get("/", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"client_id": "service", "scopes": ["items:read", "items:write"]}


async def test_wrong_audience_is_refused(authorization_server: AuthorizationServer) -> None:
    """RFC 9068 §4: aud must contain this API's identifier."""
    introspector = local(authorization_server, audience=RS256)
    async with app_with(introspector) as client:
        response = await client.get("/", headers=bearer(authorization_server.token(ES256)))
    await introspector.aclose()
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_expired_token_is_refused(
    authorization_server: AuthorizationServer, jwt_client: httpx.AsyncClient
) -> None:
    token = authorization_server.token(SHORT)  # expires in 2 seconds
    assert (await jwt_client.get("/", headers=bearer(token))).status_code == 200
    await anyio.sleep(3.1)
    response = await jwt_client.get("/", headers=bearer(token))  # the cache ends with exp
    assert response.status_code == 401


async def test_signing_key_rotation(fresh_server: AuthorizationServer) -> None:
    """An unknown kid refetches the JWKS; a dropped key's tokens are refused."""
    introspector = local(fresh_server, refresh_cooldown=0)
    async with app_with(introspector) as client:
        assert (await client.get("/", headers=bearer(fresh_server.token(RS256)))).status_code == 200
        old = fresh_server.token(RS256)  # signed with rsa-1, not yet seen
        fresh_server.restart_with_new_rsa_key("rsa-2")
        new = fresh_server.token(RS256)
        assert jwt.get_unverified_header(new)["kid"] == "rsa-2"
        assert (await client.get("/", headers=bearer(new))).status_code == 200
        assert (await client.get("/", headers=bearer(old))).status_code == 401
    assert introspector.key_fetches(fresh_server.issuer) == 3  # first, rsa-2 miss, rsa-1 miss
    await introspector.aclose()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="client_secret_basic-reserved-characters"),
        pytest.param(
            {
                "client_id": "api-post",
                "client_secret": "post-secret",
                "auth_method": "client_secret_post",
            },
            id="client_secret_post",
        ),
        pytest.param({"private_key_jwt": True}, id="private_key_jwt"),
    ],
)
async def test_opaque_token_introspected(
    authorization_server: AuthorizationServer, options: dict[str, Any]
) -> None:
    """RFC 7662 against the real endpoint, with each client authentication method."""
    if options.get("private_key_jwt"):
        # RFC 7523: the API's key is registered with the server; no secret at all.
        options = {
            "client_id": "api-jwt",
            "client_secret": None,
            "auth_method": "private_key_jwt",
            "private_key": authorization_server.client_key,
            "signing_alg": "ES256",
            "key_id": "client-key-1",
        }
    token = authorization_server.token(OPAQUE)
    assert token.count(".") == 0  # opaque, not a JWT
    introspector = remote(authorization_server, **options)
    async with app_with(introspector) as client:
        response = await client.get("/", headers=bearer(token))
        assert response.status_code == 200
        assert response.json() == {"client_id": "service", "scopes": ["items:read", "items:write"]}
        assert (await client.get("/", headers=bearer("not-a-real-token"))).status_code == 401
    await introspector.aclose()


async def test_revoked_opaque_token_refused_once_its_cache_entry_ends(
    authorization_server: AuthorizationServer,
) -> None:
    """RFC 7662 §4: a revocation is seen when the cached answer expires."""
    token = authorization_server.token(OPAQUE)
    introspector = remote(authorization_server)
    async with app_with(introspector, cache=CacheOptions(ttl=1)) as client:
        assert (await client.get("/", headers=bearer(token))).status_code == 200
        authorization_server.revoke(token)
        assert (await client.get("/", headers=bearer(token))).status_code == 200  # cached
        await anyio.sleep(1.1)
        assert (await client.get("/", headers=bearer(token))).status_code == 401
    await introspector.aclose()


async def test_jwt_and_opaque_on_one_api(authorization_server: AuthorizationServer) -> None:
    introspector = CompositeIntrospector(
        jwt=local(authorization_server), remote=remote(authorization_server)
    )
    async with app_with(introspector) as client:
        for resource in (RS256, OPAQUE):
            response = await client.get("/", headers=bearer(authorization_server.token(resource)))
            assert response.status_code == 200, resource
    await introspector.aclose()


async def test_authorization_server_stopped_is_503(fresh_server: AuthorizationServer) -> None:
    """Fail closed: an unreachable server is 503 with Retry-After, never a 401."""
    opaque = fresh_server.token(OPAQUE)
    signed = fresh_server.token(RS256)
    fresh_server.stop()
    introspectors: list[TokenIntrospector] = [remote(fresh_server), local(fresh_server)]
    for introspector, token in zip(introspectors, (opaque, signed), strict=True):
        async with app_with(introspector) as client:
            response = await client.get("/", headers=bearer(token))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        await introspector.aclose()


async def test_tokens_the_server_will_not_introspect_are_401_not_503(
    authorization_server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 7662 §2.3: only a refusal of the API's own credentials is a misconfiguration.

    oidc-provider does not introspect its JWT access tokens (400
    `unsupported_token_type`), and a 60 KB garbage token is not worth a call: both are
    an invalid token for the caller, cached, with no ERROR in the logs.
    """
    server = remote(authorization_server)
    introspector = CompositeIntrospector(
        jwt=local(authorization_server), remote=server, introspect_jwts=True
    )
    async with app_with(introspector) as client:
        for token in (authorization_server.token(RS256), "x" * 60_000):
            for _ in range(3):
                response = await client.get("/", headers=bearer(token))
                assert response.status_code == 401
                assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert server.calls == 1  # the JWT, once; the garbage never
    await introspector.aclose()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
