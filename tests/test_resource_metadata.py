"""OAuth 2.0 Protected Resource Metadata (RFC 9728), served by the middleware."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apiguard import (
    APIKeyAuth,
    AuthMiddleware,
    BearerAuth,
    BearerTokenMiddleware,
    ConfigurationError,
    DPoPAuth,
    ProtectedResourceMetadata,
)
from apiguard.keys import MemoryKeyStore
from apiguard.tokens import ClientCertificates

from .conftest import PEPPER, MakeClient
from .test_bearer_middleware import make_app
from .token_support import TableIntrospector

pytestmark = pytest.mark.anyio

METADATA = ProtectedResourceMetadata(
    "https://api.example/",
    authorization_servers=["https://idp.example"],
    scopes_supported=["items:write", "items:read"],
    resource_name="Items API",
    resource_documentation="https://docs.example/items",
)
URL = "https://api.example/.well-known/oauth-protected-resource"


async def test_document_is_served_without_credentials(make_client: MakeClient) -> None:
    """RFC 9728 §3.1-3.2: GET the well-known URI, 200 application/json."""
    app = BearerTokenMiddleware(
        make_app(), introspector=TableIntrospector(), protected_resource=METADATA
    )
    async with make_client(app) as client:
        response = await client.get("/.well-known/oauth-protected-resource")
        head = await client.head("/.well-known/oauth-protected-resource")
        post = await client.post("/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert response.json() == {
        "resource": "https://api.example/",
        "authorization_servers": ["https://idp.example"],
        "scopes_supported": ["items:read", "items:write"],
        "resource_name": "Items API",
        "resource_documentation": "https://docs.example/items",
        "bearer_methods_supported": ["header"],
    }
    assert head.status_code == 200
    assert post.status_code == 401  # only GET and HEAD are the document


async def test_every_challenge_names_the_metadata(make_client: MakeClient) -> None:
    """RFC 9728 §5.1: `resource_metadata` in the challenges of every scheme."""
    table = TableIntrospector()
    bearer = BearerAuth(table)
    app = AuthMiddleware(
        make_app(),
        authenticators=[bearer, DPoPAuth(bearer.verifier, algorithms=["ES256"])],
        protected_resource=METADATA,
    )
    async with make_client(app) as client:
        missing = await client.get("/")
        invalid = await client.get("/", headers={"authorization": "Bearer nope"})
        document = (await client.get("/.well-known/oauth-protected-resource")).json()
    assert missing.headers.get_list("www-authenticate") == [
        f'Bearer realm="api", resource_metadata="{URL}"',
        f'DPoP realm="api", algs="ES256", resource_metadata="{URL}"',
    ]
    assert invalid.headers["www-authenticate"] == (
        'Bearer realm="api", error="invalid_token",'
        f' error_description="The access token is invalid.", resource_metadata="{URL}"'
    )
    assert document["dpop_signing_alg_values_supported"] == ["ES256"]
    assert document["dpop_bound_access_tokens_required"] is False


async def test_explicit_resource_metadata_is_not_repeated(make_client: MakeClient) -> None:
    bearer = BearerAuth(TableIntrospector(), resource_metadata="https://elsewhere.example/m")
    app = AuthMiddleware(make_app(), authenticators=[bearer], protected_resource=METADATA)
    async with make_client(app) as client:
        response = await client.get("/")
    assert response.headers["www-authenticate"] == (
        'Bearer realm="api", resource_metadata="https://elsewhere.example/m"'
    )


async def test_path_suffixed_well_known_uri(make_client: MakeClient) -> None:
    """RFC 9728 §3.1: a resource with a path puts it after the well-known suffix."""
    metadata = ProtectedResourceMetadata("https://api.example/public/mcp")
    assert metadata.url == "https://api.example/.well-known/oauth-protected-resource/public/mcp"
    app = BearerTokenMiddleware(
        make_app(), introspector=TableIntrospector(), protected_resource=metadata
    )
    async with make_client(app) as client:
        found = await client.get("/.well-known/oauth-protected-resource/public/mcp")
        bare = await client.get("/.well-known/oauth-protected-resource")
    assert found.json()["resource"] == "https://api.example/public/mcp"
    assert bare.status_code == 401


async def test_served_under_the_root_path() -> None:
    app = BearerTokenMiddleware(
        make_app(), introspector=TableIntrospector(), protected_resource=METADATA
    )
    transport = httpx.ASGITransport(app=app, root_path="/v1")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/v1/.well-known/oauth-protected-resource")
    assert response.status_code == 200


async def test_certificates_and_api_keys(make_client: MakeClient) -> None:
    """tls_client_certificate_bound_access_tokens when certificates are read (RFC 9728 §2)."""
    app = AuthMiddleware(
        make_app(),
        authenticators=[
            APIKeyAuth(MemoryKeyStore(), pepper=PEPPER),
            BearerAuth(TableIntrospector(), certificates=ClientCertificates()),
        ],
        protected_resource=ProtectedResourceMetadata(
            "https://api.example", extra={"jwks_uri": "https://api.example/jwks"}, max_age=60
        ),
    )
    async with make_client(app) as client:
        response = await client.get("/.well-known/oauth-protected-resource")
        challenges = (await client.get("/")).headers.get_list("www-authenticate")
    assert response.json()["tls_client_certificate_bound_access_tokens"] is True
    assert response.json()["jwks_uri"] == "https://api.example/jwks"
    assert response.headers["cache-control"] == "public, max-age=60"
    assert challenges[0] == f'ApiKey realm="api", resource_metadata="{URL}"'


def test_api_keys_alone_advertise_no_bearer_methods() -> None:
    document = METADATA.document([APIKeyAuth(MemoryKeyStore(), pepper=PEPPER)])
    assert "bearer_methods_supported" not in document
    assert repr(METADATA) == "ProtectedResourceMetadata(resource='https://api.example/')"


@pytest.mark.parametrize(
    ("resource", "options"),
    [
        ("http://api.example/", {}),
        ("https://api.example/#x", {}),
        ("https://api.example/?q=1", {}),
        ("https://api.example/", {"authorization_servers": ["http://idp.example"]}),
        ("https://api.example/", {"max_age": -1}),
        ("https://api.example/", {"extra": {"resource": "https://other.example"}}),
        ("https://api.example/", {"resource_documentation": "http://docs.example"}),
    ],
)
def test_configuration_errors(resource: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ProtectedResourceMetadata(resource, **options)
