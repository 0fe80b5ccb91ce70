"""The OpenAPI document `apiguard.fastapi.install` makes, and the pages it serves without credentials."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Security
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from apiguard import APIKeyAuth, BearerAuth, ConfigurationError, Principal, ScopeRule, ScopeRules
from apiguard.fastapi import Guard, current_principal, install, require_scopes
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.tokens import TokenInfo

from .conftest import MakeClient
from .interop.conftest import free_port
from .token_support import TableIntrospector

pytestmark = pytest.mark.anyio

TOKEN_URL = "https://idp.example/token"
ERROR_REF = {"$ref": "#/components/schemas/ApiGuardError"}


def build(hasher: KeyHasher, **options: Any) -> tuple[FastAPI, MemoryKeyStore, TableIntrospector]:
    """An app with every kind of scope requirement apiguard knows."""
    store, tokens = MemoryKeyStore(), TableIntrospector()
    app = FastAPI()
    options = {
        "token_url": TOKEN_URL,
        "exclude_paths": ["/health"],
        "policies": [ScopeRules([ScopeRule("/admin/*", "admin")])],
        **options,
    }
    guard = install(app, APIKeyAuth(store, hasher=hasher), BearerAuth(tokens), **options)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items")
    async def list_items(
        caller: Principal = Security(guard, scopes=["items:read"]),  # noqa: B008
    ) -> dict[str, str]:
        return {"caller": caller.identity}

    @app.post("/items", dependencies=[require_scopes("items:write | admin")])
    async def add_item() -> dict[str, str]:
        return {}

    @app.get("/me")
    async def me(caller: Annotated[Principal, Depends(current_principal)]) -> dict[str, str]:
        return {"caller": caller.identity}

    @app.delete("/admin/items/{item_id}")
    async def delete_item(
        item_id: int,
        caller: Annotated[Principal, Security(current_principal, scopes=["items:write"])],
    ) -> dict[str, int]:
        return {"deleted": item_id}

    return app, store, tokens


def document(app: FastAPI) -> dict[str, Any]:
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def test_the_document_is_valid_openapi_3_1(hasher: KeyHasher) -> None:
    """openapi-spec-validator accepts it against the OpenAPI 3.1 schema."""
    doc = document(build(hasher)[0])
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises OpenAPIValidationError


def test_security_schemes_from_the_configuration(hasher: KeyHasher) -> None:
    """The key's header as an apiKey scheme; tokens as the client credentials flow."""
    schemes = document(build(hasher)[0])["components"]["securitySchemes"]
    assert schemes == {
        "APIKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key.",
        },
        "OAuth2": {
            "type": "oauth2",
            "description": "An OAuth 2.0 access token (RFC 6750 bearer token).",
            "flows": {
                "clientCredentials": {
                    "tokenUrl": TOKEN_URL,
                    "scopes": {"admin": "", "items:read": "", "items:write": ""},
                }
            },
        },
    }


def test_each_operation_requires_what_applies_to_it(hasher: KeyHasher) -> None:
    """Key OR token (OpenAPI 3.1 §4.8.30: alternatives), with the scopes its rules demand."""
    paths = document(build(hasher)[0])["paths"]
    assert "security" not in paths["/health"]["get"]  # excluded: no credentials
    assert paths["/me"]["get"]["security"] == [{"APIKey": []}, {"OAuth2": []}]
    assert paths["/items"]["get"]["security"] == [
        {"APIKey": ["items:read"]},
        {"OAuth2": ["items:read"]},
    ]
    assert paths["/items"]["post"]["security"] == [
        {"APIKey": ["items:write"]},
        {"OAuth2": ["items:write"]},
        {"APIKey": ["admin"]},
        {"OAuth2": ["admin"]},
    ]
    # A ScopeRule and a Security dependency: both must hold.
    assert paths["/admin/items/{item_id}"]["delete"]["security"] == [
        {"APIKey": ["admin", "items:write"]},
        {"OAuth2": ["admin", "items:write"]},
    ]


def test_refusals_are_documented_with_the_body_that_is_sent(hasher: KeyHasher) -> None:
    doc = document(build(hasher)[0])
    me, items = doc["paths"]["/me"]["get"]["responses"], doc["paths"]["/items"]["get"]["responses"]
    assert set(me) == {"200", "401", "503"}  # no scope: no 403
    assert set(items) == {"200", "401", "403", "503"}
    assert set(doc["paths"]["/health"]["get"]["responses"]) == {"200"}
    unauthorized = items["401"]
    assert unauthorized["content"]["application/json"]["schema"] == ERROR_REF
    assert unauthorized["content"]["application/json"]["example"] == {
        "error": "invalid_key",
        "error_description": "The API key is invalid.",
    }
    assert set(unauthorized["headers"]) == {"WWW-Authenticate", "Cache-Control"}
    assert items["403"]["content"]["application/json"]["example"]["error"] == "insufficient_scope"
    unavailable = items["503"]
    assert set(unavailable["headers"]) == {"Retry-After", "Cache-Control"}
    assert unavailable["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert unavailable["content"]["application/json"]["example"]["error"] == (
        "temporarily_unavailable"
    )
    schema = doc["components"]["schemas"]["ApiGuardError"]
    assert schema["required"] == ["error_description"]
    assert set(schema["properties"]) == {"error", "error_description"}


async def test_the_documented_body_is_the_one_the_middleware_sends(
    hasher: KeyHasher, make_client: MakeClient
) -> None:
    """Each refusal's body has the documented fields (401 missing/invalid, 403, 503)."""
    app, store, tokens = build(hasher)
    schema = document(app)["components"]["schemas"]["ApiGuardError"]
    reader = await KeyManager(store, hasher).create("reader", scopes=["items:read"])
    tokens.down = True
    async with make_client(app) as client:
        refusals = [
            await client.get("/items"),
            await client.get("/items", headers={"X-API-Key": "apg_nope"}),
            await client.post("/items", headers={"X-API-Key": reader.key}),
            await client.get("/items", headers={"Authorization": "Bearer abc"}),
        ]
    assert [r.status_code for r in refusals] == [401, 401, 403, 503]
    for response in refusals:
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) <= set(schema["properties"])
        assert set(schema["required"]) <= set(body)


def test_problem_details_are_documented_as_such(hasher: KeyHasher) -> None:
    doc = document(build(hasher, problem_details=True)[0])
    validate(doc)
    refusal = doc["paths"]["/items"]["get"]["responses"]["403"]
    (media,) = refusal["content"]
    assert media == "application/problem+json"
    assert refusal["content"][media]["example"]["status"] == 403
    assert refusal["content"][media]["example"]["title"] == "Forbidden"
    assert doc["components"]["schemas"]["ApiGuardProblem"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
    ]


def test_an_error_response_hook_leaves_the_body_undocumented(hasher: KeyHasher) -> None:
    """The hook builds the refusals: their body is the app's, not apiguard's."""
    doc = document(build(hasher, error_response=lambda c, e: None)[0])
    assert "content" not in doc["paths"]["/items"]["get"]["responses"]["401"]
    assert "ApiGuardError" not in doc["components"].get("schemas", {})


def test_docs_are_served_without_credentials(hasher: KeyHasher) -> None:
    """/docs, /redoc, /openapi.json and the OAuth 2.0 redirect page; the API still needs one."""
    app = build(hasher)[0]
    with TestClient(app) as client:
        for path in ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]:
            assert client.get(path).status_code == 200, path
        assert client.get("/me").status_code == 401
        assert client.get("/docs/other").status_code == 401  # exact paths only


def test_public_docs_can_be_switched_off(hasher: KeyHasher) -> None:
    app = build(hasher, public_docs=False)[0]
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 401
        assert client.get("/openapi.json").status_code == 401


def test_without_a_token_url_tokens_are_http_bearer(hasher: KeyHasher) -> None:
    """No token URL known: `type: http, scheme: bearer` (RFC 6750), with its format."""
    doc = document(build(hasher, token_url=None)[0])
    validate(doc)
    assert doc["components"]["securitySchemes"]["OAuth2"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An OAuth 2.0 access token (RFC 6750 bearer token).",
    }
    no_format = document(build(hasher, token_url=None, bearer_format=None)[0])
    assert "bearerFormat" not in no_format["components"]["securitySchemes"]["OAuth2"]


def test_an_unreachable_issuer_leaves_http_bearer(
    hasher: KeyHasher, caplog: pytest.LogCaptureFixture
) -> None:
    """Discovery fails at startup: the document says HTTP bearer, and the log says why."""
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = build(hasher, token_url=None, issuer=issuer)[0]
    with caplog.at_level(logging.WARNING, logger="apiguard.fastapi"):
        doc = document(app)
    assert doc["components"]["securitySchemes"]["OAuth2"]["type"] == "http"
    assert f"no token endpoint from {issuer}" in caplog.text


class MetadataHandler(http.server.BaseHTTPRequestHandler):
    """Authorization server metadata (RFC 8414) that names no token endpoint."""

    def do_GET(self) -> None:
        host, port = self.headers["host"].rsplit(":", 1)
        issuer = f"http://{host}:{port}"
        body = json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}/jwks"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_metadata_without_a_token_endpoint_leaves_http_bearer(
    hasher: KeyHasher, caplog: pytest.LogCaptureFixture
) -> None:
    with http.server.HTTPServer(("127.0.0.1", 0), MetadataHandler) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            issuer = f"http://127.0.0.1:{server.server_address[1]}"
            app = build(hasher, token_url=None, issuer=issuer)[0]
            with caplog.at_level(logging.WARNING, logger="apiguard.fastapi"):
                doc = document(app)
        finally:
            server.shutdown()
            thread.join()
    assert doc["components"]["securitySchemes"]["OAuth2"]["type"] == "http"
    assert "names no token_endpoint" in caplog.text


def test_several_key_headers_and_a_query_parameter(hasher: KeyHasher) -> None:
    """Each place a key may come in is a scheme, each an alternative."""
    app = FastAPI()
    auth = APIKeyAuth(
        MemoryKeyStore(), hasher=hasher, header_names=["X-API-Key", "Api-Key"], query_param="key"
    )
    install(app, auth)

    @app.get("/items")
    async def items() -> list[str]:
        return []

    doc = document(app)
    validate(doc)
    schemes = doc["components"]["securitySchemes"]
    assert {name: (s["in"], s["name"]) for name, s in schemes.items()} == {
        "APIKey": ("header", "X-API-Key"),
        "APIKey-Api-Key": ("header", "Api-Key"),
        "APIKey-key": ("query", "key"),
    }
    assert doc["paths"]["/items"]["get"]["security"] == [
        {"APIKey": []},
        {"APIKey-Api-Key": []},
        {"APIKey-key": []},
    ]


def test_optional_mode_documents_anonymous_access(hasher: KeyHasher) -> None:
    """`optional=True`: the empty requirement `{}` (no credential) is one alternative."""
    paths = document(build(hasher, optional=True)[0])["paths"]
    assert paths["/me"]["get"]["security"] == [{"APIKey": []}, {"OAuth2": []}, {}]
    assert "401" not in paths["/me"]["get"]["responses"]
    assert {} not in paths["/items"]["get"]["security"]  # a scope is required


def test_routes_added_after_the_first_document_are_documented(hasher: KeyHasher) -> None:
    app = build(hasher)[0]
    first = app.openapi()
    assert app.openapi() is first  # made once while the routes stay the same

    @app.get("/later", dependencies=[require_scopes("later")])
    async def later() -> dict[str, str]:
        return {}

    assert app.openapi()["paths"]["/later"]["get"]["security"] == [
        {"APIKey": ["later"]},
        {"OAuth2": ["later"]},
    ]


def test_scope_descriptions(hasher: KeyHasher) -> None:
    doc = document(build(hasher, scope_descriptions={"items:read": "Read the inventory"})[0])
    flow = doc["components"]["securitySchemes"]["OAuth2"]["flows"]["clientCredentials"]
    assert flow["scopes"]["items:read"] == "Read the inventory"


def test_an_app_without_guarded_operations_is_left_alone(hasher: KeyHasher) -> None:
    app = FastAPI()
    install(app, APIKeyAuth(MemoryKeyStore(), hasher=hasher), exclude_paths=["/health"])

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {}

    doc = document(app)
    assert "securitySchemes" not in doc.get("components", {})


def test_guard_configuration_errors(hasher: KeyHasher) -> None:
    auth = APIKeyAuth(MemoryKeyStore(), hasher=hasher)
    with pytest.raises(ConfigurationError, match="at least one authenticator"):
        Guard()
    with pytest.raises(ConfigurationError, match="token_url or issuer"):
        Guard(auth, token_url=TOKEN_URL, issuer="https://idp.example")
    with pytest.raises(ConfigurationError, match="https URL"):
        Guard(auth, token_url="http://idp.example/token")
    app = FastAPI()
    install(app, auth)
    with pytest.raises(ConfigurationError, match="installed once"):
        install(app, auth)


async def test_security_scopes_are_enforced_behind_the_middleware(
    hasher: KeyHasher, make_client: MakeClient
) -> None:
    """`Security(guard, scopes=[...])` and `Security(current_principal, ...)`: 403 without them."""
    app, store, tokens = build(hasher)
    manager = KeyManager(store, hasher)
    reader = await manager.create("reader", scopes=["items:read"])
    admin = await manager.create("admin", scopes=["admin"])
    expires = datetime.now(timezone.utc) + timedelta(minutes=5)
    tokens.answers["t"] = TokenInfo(True, client_id="c", scopes=frozenset(), expires_at=expires)
    async with make_client(app) as client:
        allowed = await client.get("/items", headers={"X-API-Key": reader.key})
        assert allowed.json() == {"caller": reader.record.key_id}
        refused = await client.get("/items", headers={"Authorization": "Bearer t"})
        assert refused.status_code == 403
        assert refused.headers["www-authenticate"] == (
            'Bearer realm="api", scope="items:read", error="insufficient_scope",'
            ' error_description="The request requires more privileges than the credentials grant."'
        )
        # Rule (admin) met, Security scope (items:write) not.
        refused = await client.delete("/admin/items/1", headers={"X-API-Key": admin.key})
        assert refused.status_code == 403
        assert 'scope="items:write"' in refused.headers["www-authenticate"]
        both = await manager.create("both", scopes=["admin", "items:write"])
        deleted = await client.delete("/admin/items/1", headers={"X-API-Key": both.key})
        assert deleted.json() == {"deleted": 1}
        assert (await client.post("/items", headers={"X-API-Key": admin.key})).json() == {}
        me = await client.get("/me", headers={"Authorization": "Bearer t"})
        assert me.json() == {"caller": "c"}
        assert (await client.get("/health")).json() == {"status": "ok"}


def test_an_excluded_path_with_a_route_check_documents_only_that(hasher: KeyHasher) -> None:
    """The middleware runs no ScopeRule on an excluded path; `require_scopes` still refuses."""
    app = FastAPI()
    rules = ScopeRules([ScopeRule("/public/*", "admin")])
    install(
        app,
        APIKeyAuth(MemoryKeyStore(), hasher=hasher),
        exclude_paths=["/public/*"],
        policies=[rules],
    )

    @app.get("/public/report", dependencies=[require_scopes("reports")])
    async def report() -> dict[str, str]:
        return {}

    operation = document(app)["paths"]["/public/report"]["get"]
    assert operation["security"] == [{"APIKey": ["reports"]}]
    with TestClient(app) as client:
        assert client.get("/public/report").status_code == 401  # anonymous: 401


@pytest.mark.usefixtures("frozen_limits_clock")  # no window boundary between the requests
async def test_rate_limits_are_documented_as_the_429_they_send(
    hasher: KeyHasher, make_client: MakeClient
) -> None:
    """With `RateLimits` (or a failed-authentication limit) each guarded operation
    documents 429 (RFC 6585 §4) with `Retry-After` and the RateLimit fields, and the
    429 sent has the documented body and headers."""
    from apiguard.ratelimit import FailedAuthLimit, RateLimits

    limited = [ScopeRules([ScopeRule("/admin/*", "admin")]), RateLimits("2/minute")]
    app, store, _ = build(hasher, policies=limited)
    doc = document(app)
    too_many = doc["paths"]["/me"]["get"]["responses"]["429"]
    assert set(too_many["headers"]) == {
        "Retry-After",
        "Cache-Control",
        "RateLimit-Policy",
        "RateLimit",
    }
    assert too_many["content"]["application/json"]["example"] == {
        "error": "rate_limited",
        "error_description": "Too many requests; retry later.",
    }
    assert "429" not in doc["paths"]["/health"]["get"]["responses"]
    assert "429" not in document(build(hasher)[0])["paths"]["/me"]["get"]["responses"]
    failures = build(hasher, failed_auth_limit=FailedAuthLimit("5/minute"))[0]
    assert "429" in document(failures)["paths"]["/me"]["get"]["responses"]

    reader = await KeyManager(store, hasher).create("reader", scopes=["items:read"])
    async with make_client(app) as client:
        answers = [await client.get("/me", headers={"X-API-Key": reader.key}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[-1]
    schema = doc["components"]["schemas"]["ApiGuardError"]
    assert set(refused.json()) <= set(schema["properties"])
    assert refused.json()["error"] == "rate_limited"
    assert {"retry-after", "cache-control", "ratelimit-policy", "ratelimit"} <= set(refused.headers)
