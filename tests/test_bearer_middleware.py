from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiguard import (
    APIKeyAuth,
    AuthMiddleware,
    BearerAuth,
    BearerTokenMiddleware,
    CacheOptions,
)
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.tokens import JWTIntrospector, TokenInfo

from .conftest import MakeClient
from .token_support import AUDIENCE, ISSUER, FakeIssuer, TableIntrospector, mint

pytestmark = pytest.mark.anyio

BARE = 'Bearer realm="api"'
INVALID = (
    'Bearer realm="api", error="invalid_token", error_description="The access token is invalid."'
)


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {
            "kind": user.kind,
            "identity": user.identity,
            "client_id": getattr(user, "client_id", None),
            "scopes": request.auth.scopes,
            "has_authorization": "authorization" in request.headers,
        }
    )


def make_app() -> Starlette:
    return Starlette(routes=[Route("/", whoami)])


class CountingIntrospector(TableIntrospector):
    """Answers from a table after a short pause, counting calls."""

    def __init__(self) -> None:
        super().__init__(pause=0.01)


def active(**fields: Any) -> TokenInfo:
    base: dict[str, Any] = {
        "active": True,
        "subject": "svc",
        "client_id": "svc",
        "scopes": frozenset({"items:read"}),
        "expires_at": datetime.now(timezone.utc) + timedelta(minutes=5),
    }
    return TokenInfo(**(base | fields))


@pytest.fixture
def counting() -> CountingIntrospector:
    introspector = CountingIntrospector()
    introspector.answers["good-token"] = active()
    return introspector


@pytest.fixture
async def jwt_client(make_client: MakeClient) -> AsyncIterator[httpx.AsyncClient]:
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        async with make_client(
            BearerTokenMiddleware(make_app(), introspector=introspector)
        ) as client:
            yield client


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


async def test_valid_jwt_reaches_the_app(jwt_client: httpx.AsyncClient) -> None:
    response = await jwt_client.get("/", headers=bearer(mint()))
    assert response.status_code == 200
    assert response.json() == {
        "kind": "bearer",
        "identity": "client-123",
        "client_id": "client-123",
        "scopes": ["items:read", "items:write"],
        "has_authorization": True,
    }


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_scheme_is_case_insensitive(jwt_client: httpx.AsyncClient, scheme: str) -> None:
    """RFC 9110 §11.1: auth-scheme names are case-insensitive."""
    assert (await jwt_client.get("/", headers=bearer(mint(), scheme))).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="other-scheme"),
    ],
)
async def test_no_bearer_token_gets_a_challenge_without_error(
    jwt_client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """RFC 6750 §3.1: without credentials, no error code or other error information."""
    response = await jwt_client.get("/", headers=headers)
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == [BARE]


async def test_query_and_body_tokens_are_ignored(jwt_client: httpx.AsyncClient) -> None:
    """OAuth 2.1 §5.1: a resource server ignores access tokens in the query string."""
    response = await jwt_client.post(
        "/", params={"access_token": mint()}, data={"access_token": mint()}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BARE


def _deeply_nested_header() -> str:
    import base64

    header = base64.urlsafe_b64encode(b'{"alg":' + b"[" * 2500 + b"]" * 2500 + b"}")
    return header.decode().rstrip("=") + ".e30.c2ln"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "x" * 10_000,
        "abc$%^",
        mint(aud="https://other.example"),
        mint(exp=1),
        mint(exp=str(int(time.time()) + 300)),  # RFC 7519 §2: a NumericDate is a number
        _deeply_nested_header(),
    ],
)
async def test_invalid_tokens(jwt_client: httpx.AsyncClient, token: str) -> None:
    """RFC 6750 §3.1: invalid_token with 401."""
    response = await jwt_client.get("/", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == [INVALID]
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "The access token is invalid.",
    }


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("Authorization", "Bearer")], id="no-token"),
        pytest.param([("Authorization", "Bearer ")], id="blank-token"),
        pytest.param(
            [("Authorization", "Bearer a"), ("Authorization", "Bearer b")], id="two-tokens"
        ),
    ],
)
async def test_malformed_requests(
    jwt_client: httpx.AsyncClient, headers: list[tuple[str, str]]
) -> None:
    """RFC 6750 §3.1: invalid_request with 400 for a malformed request or several tokens."""
    response = await jwt_client.get("/", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert 'Bearer realm="api", error="invalid_request"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("second", ["same-token", "basic"])
async def test_two_authorization_headers_are_a_bad_request(
    jwt_client: httpx.AsyncClient, second: str
) -> None:
    """RFC 9110 §5.3: Authorization is a singleton field; RFC 6750 §3.1: invalid_request."""
    token = mint()
    other = f"Bearer {token}" if second == "same-token" else "Basic dXNlcjpwYXNz"
    response = await jwt_client.get(
        "/", headers=[("Authorization", f"Bearer {token}"), ("Authorization", other)]
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_resource_metadata_in_every_challenge(
    counting: CountingIntrospector, make_client: MakeClient
) -> None:
    """RFC 9728 §5.1: resource_metadata in WWW-Authenticate."""
    url = "https://api.example/.well-known/oauth-protected-resource"
    guarded = BearerTokenMiddleware(make_app(), introspector=counting, resource_metadata=url)
    async with make_client(guarded) as client:
        bare = await client.get("/")
        invalid = await client.get("/", headers=bearer("nope"))
    assert bare.headers["www-authenticate"] == f'Bearer realm="api", resource_metadata="{url}"'
    assert invalid.headers["www-authenticate"].endswith(f', resource_metadata="{url}"')
    assert 'error="invalid_token"' in invalid.headers["www-authenticate"]


async def test_authorization_server_down_is_503(
    counting: CountingIntrospector, make_client: MakeClient
) -> None:
    counting.down = True
    async with make_client(BearerTokenMiddleware(make_app(), introspector=counting)) as client:
        response = await client.get("/", headers=bearer("good-token"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "www-authenticate" not in response.headers
        counting.down = False  # outages are not cached
        assert (await client.get("/", headers=bearer("good-token"))).status_code == 200


async def test_repeated_token_is_introspected_once(
    counting: CountingIntrospector, make_client: MakeClient
) -> None:
    async with make_client(BearerTokenMiddleware(make_app(), introspector=counting)) as client:
        for _ in range(10):
            assert (await client.get("/", headers=bearer("good-token"))).status_code == 200
        for _ in range(3):
            assert (await client.get("/", headers=bearer("bad-token"))).status_code == 401
    assert counting.calls == 2  # one grant, one refusal, each cached


async def test_concurrent_requests_with_a_new_token_make_one_call(
    counting: CountingIntrospector, make_client: MakeClient
) -> None:
    statuses: list[int] = []
    async with make_client(BearerTokenMiddleware(make_app(), introspector=counting)) as client:

        async def call() -> None:
            statuses.append((await client.get("/", headers=bearer("good-token"))).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(call)
    assert statuses == [200] * 200
    assert counting.calls == 1


async def test_leeway_is_one_rule_end_to_end(jwt_client: httpx.AsyncClient) -> None:
    """A JWT the validator accepts within its leeway (30 s past exp) is not refused by the
    cache, and is refused past it."""
    now = int(time.time())
    assert (await jwt_client.get("/", headers=bearer(mint(exp=now - 10)))).status_code == 200
    assert (await jwt_client.get("/", headers=bearer(mint(exp=now - 10)))).status_code == 200
    assert (await jwt_client.get("/", headers=bearer(mint(exp=now - 40)))).status_code == 401


async def test_an_introspector_without_a_leeway_gets_none(make_client: MakeClient) -> None:
    """RFC 7662 §4: a custom introspector that says nothing of clock skew has its tokens
    refused from `exp` on, as before the leeway existed."""

    class Plain:
        async def introspect(self, token: str) -> TokenInfo:
            return active(expires_at=datetime.now(timezone.utc) - timedelta(seconds=20))

        async def aclose(self) -> None:
            pass

    async with make_client(BearerTokenMiddleware(make_app(), introspector=Plain())) as client:
        assert (await client.get("/", headers=bearer("t"))).status_code == 401


async def test_cached_grant_ends_with_the_leeway(make_client: MakeClient) -> None:
    class Lenient(CountingIntrospector):
        leeway = 1.0

    introspector = Lenient()
    introspector.answers["short"] = active(
        expires_at=datetime.now(timezone.utc) + timedelta(seconds=0.5)
    )
    guarded = BearerTokenMiddleware(
        make_app(), introspector=introspector, cache=CacheOptions(ttl=3600)
    )
    async with make_client(guarded) as client:
        assert (await client.get("/", headers=bearer("short"))).status_code == 200
        await anyio.sleep(0.7)  # past exp, within the leeway: still the cached grant
        assert (await client.get("/", headers=bearer("short"))).status_code == 200
        assert introspector.calls == 1
        await anyio.sleep(1.0)
        assert (await client.get("/", headers=bearer("short"))).status_code == 401


async def test_cached_grant_ends_with_the_token(
    counting: CountingIntrospector, make_client: MakeClient
) -> None:
    """RFC 7662 §4: a cached answer is not used beyond the token's exp."""
    counting.answers["short"] = active(
        expires_at=datetime.now(timezone.utc) + timedelta(seconds=0.3)
    )
    guarded = BearerTokenMiddleware(make_app(), introspector=counting, cache=CacheOptions(ttl=3600))
    async with make_client(guarded) as client:
        assert (await client.get("/", headers=bearer("short"))).status_code == 200
        await anyio.sleep(0.35)
        assert (await client.get("/", headers=bearer("short"))).status_code == 401


@pytest.mark.parametrize(
    "info",
    [
        pytest.param(TokenInfo(active=False), id="inactive"),
        pytest.param(active(expires_at=datetime(2020, 1, 1, tzinfo=timezone.utc)), id="expired"),
        pytest.param(
            active(cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}), id="dpop-bound"
        ),
        pytest.param(
            active(cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}), id="mtls-bound"
        ),
    ],
)
async def test_unusable_token_info_is_refused(
    counting: CountingIntrospector, make_client: MakeClient, info: TokenInfo
) -> None:
    """Inactive (RFC 7662 §2.2), expired, or sender-constrained without proof (RFC 9449 §7.2)."""
    counting.answers["t"] = info
    async with make_client(BearerTokenMiddleware(make_app(), introspector=counting)) as client:
        response = await client.get("/", headers=bearer("t"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == INVALID


async def test_hide_credentials(counting: CountingIntrospector, make_client: MakeClient) -> None:
    guarded = BearerTokenMiddleware(make_app(), introspector=counting, hide_credentials=True)
    async with make_client(guarded) as client:
        response = await client.get("/", headers=bearer("good-token"))
    assert response.json()["has_authorization"] is False


async def test_hide_credentials_on_excluded_paths(
    counting: CountingIntrospector, make_client: MakeClient
) -> None:
    """The app never sees the token, on a path that needs none too."""
    guarded = BearerTokenMiddleware(
        make_app(), introspector=counting, hide_credentials=True, exclude_paths=["/"]
    )
    async with make_client(guarded) as client:
        response = await client.get("/", headers=bearer("good-token"))
    assert response.json()["kind"] == "anonymous"
    assert response.json()["has_authorization"] is False


async def test_token_claims_cannot_forge_log_records(
    counting: CountingIntrospector, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A subject is the authorization server's to choose; logged, it stays on one line."""
    caplog.set_level(logging.DEBUG, logger="apiguard")
    counting.answers["t"] = active(subject="svc\nrefused status=401")
    async with make_client(BearerTokenMiddleware(make_app(), introspector=counting)) as client:
        assert (await client.get("/", headers=bearer("t"))).status_code == 200
    (message,) = [record.getMessage() for record in caplog.records]
    assert message == "allowed kind=bearer id=svc\\nrefused status=401 path=/"


def test_websocket_with_a_bearer_token(counting: CountingIntrospector) -> None:
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient, WebSocketDenialResponse
    from starlette.websockets import WebSocket

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"client": websocket.user.client_id})
        await websocket.close()

    app = BearerTokenMiddleware(
        Starlette(routes=[WebSocketRoute("/ws", ws)]), introspector=counting
    )
    with TestClient(app) as client:
        with client.websocket_connect("/ws", headers=bearer("good-token")) as connection:
            assert connection.receive_json() == {"client": "svc"}
        with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect("/ws"):
            pass  # pragma: no cover - the handshake is refused
    assert info.value.status_code == 401


# --- API key OR bearer token on the same routes ------------------------------


@pytest.fixture
async def either(
    counting: CountingIntrospector, hasher: KeyHasher, make_client: MakeClient
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    store = MemoryKeyStore()
    key = (await KeyManager(store, hasher).create("billing", scopes=["k"])).key
    guarded = AuthMiddleware(
        make_app(), authenticators=[APIKeyAuth(store, hasher=hasher), BearerAuth(counting)]
    )
    async with make_client(guarded) as client:
        yield client, key


async def test_either_credential_works(either: tuple[httpx.AsyncClient, str]) -> None:
    client, key = either
    by_key = await client.get("/", headers={"X-API-Key": key})
    by_token = await client.get("/", headers=bearer("good-token"))
    assert (by_key.status_code, by_key.json()["kind"]) == (200, "api_key")
    assert (by_token.status_code, by_token.json()["kind"]) == (200, "bearer")


async def test_no_credential_offers_both_challenges(either: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = either
    response = await client.get("/")
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == ['ApiKey realm="api"', BARE]


async def test_a_bad_credential_is_never_skipped(either: tuple[httpx.AsyncClient, str]) -> None:
    """A bad key beside a good token is not silently dropped: two credentials are a 400."""
    client, _ = either
    both = await client.get("/", headers={"X-API-Key": "bad", **bearer("good-token")})
    assert both.status_code == 400
    assert both.json()["error"] == "invalid_request"
    bad_key = await client.get("/", headers={"X-API-Key": "bad"})
    assert bad_key.headers["www-authenticate"].startswith('ApiKey realm="api", error="invalid_key"')
    bad_token = await client.get("/", headers=bearer("bad-token"))
    assert bad_token.headers["www-authenticate"] == INVALID


def test_auth_middleware_needs_an_authenticator() -> None:
    from apiguard import ConfigurationError

    with pytest.raises(ConfigurationError):
        AuthMiddleware(make_app(), authenticators=[])
    with pytest.raises(ConfigurationError):
        BearerAuth(CountingIntrospector(), resource_metadata="ftp://x")
