"""The helpers apiguard ships for its users' test suites (docs/testing.md)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import timedelta

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from apiguard import (
    APIKeyMiddleware,
    BackendUnavailableError,
    BearerTokenMiddleware,
    ConfigurationError,
    InvalidToken,
    Policy,
    Principal,
    ScopeRule,
    ScopeRules,
)
from apiguard.fastapi import require_scopes
from apiguard.testing import (
    TEST_PEPPER,
    FakeIssuer,
    KeySpec,
    make_keys,
    make_signing_key,
    override_authentication,
)
from apiguard.tokens import ClientAuthMethod, RemoteIntrospector, TokenVerifier
from apiguard.types import Receive, Scope, Send

from .conftest import MakeClient

pytest_plugins = ["pytester"]


async def whoami(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse(
        {"kind": user.kind, "id": user.identity, "scopes": sorted(request.auth.scopes)}
    )


def starlette_app(policies: Sequence[Policy] = ()) -> Starlette:
    app = Starlette(routes=[Route("/", whoami), Route("/health", whoami)])
    app.add_middleware(
        APIKeyMiddleware,
        store="memory://",
        pepper=TEST_PEPPER,
        exclude_paths=["/health"],
        policies=policies,
    )
    return app


# --- override_authentication -------------------------------------------------------


def test_an_override_authenticates_every_request_and_ends_with_its_block() -> None:
    app = starlette_app()
    with TestClient(app) as client:
        assert client.get("/").status_code == 401
        with override_authentication(app, scopes=["items:read"], key_id="K" * 12) as principal:
            answer = client.get("/")
            assert answer.json() == {"kind": "api_key", "id": "K" * 12, "scopes": ["items:read"]}
            assert principal.key_id == "K" * 12
            # Excluded paths are served as before: anonymous.
            assert client.get("/health").json()["kind"] == "anonymous"
        assert client.get("/").status_code == 401


def test_an_override_is_for_the_app_it_was_given_only() -> None:
    overridden, other = starlette_app(), starlette_app()
    with (
        TestClient(overridden) as client,
        TestClient(other) as other_client,
        override_authentication(overridden, client_id="svc"),
    ):
        assert client.get("/").json() == {"kind": "bearer", "id": "svc", "scopes": []}
        assert other_client.get("/").status_code == 401


def test_nested_overrides_restore_the_outer_one() -> None:
    app = starlette_app()
    with TestClient(app) as client, override_authentication(app, scopes=["a"]):
        with override_authentication(app, scopes=["b"]):
            assert client.get("/").json()["scopes"] == ["b"]
        assert client.get("/").json()["scopes"] == ["a"]


def test_policies_still_check_the_overridden_principal() -> None:
    """A ScopeRules refusal is the usual 403 insufficient_scope (RFC 6750 §3.1)."""
    app = starlette_app(policies=[ScopeRules([ScopeRule("/", "items:write")])])
    with TestClient(app) as client:
        with override_authentication(app, scopes=["items:read"]):
            refused = client.get("/")
        assert refused.status_code == 403
        assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
        with override_authentication(app, scopes=["items:write"]):
            assert client.get("/").status_code == 200


def test_fastapi_route_checks_see_the_overridden_scopes() -> None:
    app = FastAPI()
    app.add_middleware(BearerTokenMiddleware, introspector=FakeIssuer().jwt_introspector())

    @app.get("/items", dependencies=[require_scopes("items:read")])
    async def items() -> list[str]:
        return ["hammer"]

    with TestClient(app) as client:
        with override_authentication(app, client_id="svc", scopes=["items:read"]):
            assert client.get("/items").json() == ["hammer"]
        with override_authentication(app, client_id="svc", scopes=["other"]):
            assert client.get("/items").status_code == 403


@pytest.mark.anyio
async def test_a_bare_asgi_app_is_overridden_through_its_middleware(
    make_client: MakeClient,
) -> None:
    guarded = APIKeyMiddleware(whoami_asgi, store="memory://", pepper=TEST_PEPPER)
    principal = Principal(identity="p", kind="api_key", key_id="p", scopes=frozenset({"x"}))
    async with make_client(guarded) as client:
        with override_authentication(guarded, principal=principal):
            assert (await client.get("/")).json() == {"id": "p", "scopes": ["x"]}
        assert (await client.get("/")).status_code == 401


async def whoami_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    user = scope["user"]
    assert isinstance(user, Principal)
    response = JSONResponse({"id": user.identity, "scopes": sorted(user.scopes)})
    await response(scope, receive, send)


def test_nothing_in_a_request_turns_an_override_on() -> None:
    """No header or query parameter reaches the override table: without the helper, 401."""
    app = starlette_app()
    with TestClient(app) as client:
        for headers in ({"X-Apiguard-Override": "1"}, {"X-Test-User": "admin"}):
            assert client.get("/?override=1", headers=headers).status_code == 401


def test_a_principal_and_its_parts_cannot_both_be_given() -> None:
    principal = Principal(identity="p", kind="api_key")
    with (
        pytest.raises(ConfigurationError),
        override_authentication(object(), principal=principal, scopes=["a"]),
    ):
        pass  # pragma: no cover
    with (
        pytest.raises(ConfigurationError),
        override_authentication(object(), key_id="k", client_id="c"),
    ):
        pass  # pragma: no cover


# --- make_keys ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_make_keys_gives_working_keys_with_their_scopes(make_client: MakeClient) -> None:
    store, keys = await make_keys(
        KeySpec("reader", scopes=["items:read"]),
        KeySpec("old", expires_in=timedelta(days=1), metadata={"team": "core"}),
        "plain",
    )
    app = Starlette(routes=[Route("/", whoami)])
    app.add_middleware(APIKeyMiddleware, store=store, pepper=TEST_PEPPER)
    async with make_client(app) as client:
        reader = await client.get("/", headers={"X-API-Key": keys["reader"]})
        assert reader.json()["scopes"] == ["items:read"]
        plain = await client.get("/", headers={"X-API-Key": keys["plain"]})
        assert plain.json()["scopes"] == []
        assert (await client.get("/", headers={"X-API-Key": keys["old"] + "x"})).status_code == 401
    (old,) = await store.list(name="old")
    assert old.expires_at is not None
    assert dict(old.metadata) == {"team": "core"}


@pytest.mark.anyio
async def test_make_keys_wants_distinct_names() -> None:
    with pytest.raises(ConfigurationError, match="different name"):
        await make_keys("a", KeySpec("a"))


# --- FakeIssuer ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_jwt_introspector_trusts_the_fake_issuer_through_discovery() -> None:
    issuer = FakeIssuer("https://login.example/realms/test", audience="https://api.test")
    introspector = issuer.jwt_introspector()
    try:
        info = await introspector.introspect(issuer.mint(scope="items:read", sub="svc"))
        assert info.scopes == {"items:read"}
        assert info.subject == "svc"
        es256 = issuer.mint(kid="ec-1")
        assert (await introspector.introspect(es256)).active
        with pytest.raises(InvalidToken):  # signed with a key the issuer does not publish
            await introspector.introspect(issuer.mint(make_signing_key("RS256")))
        with pytest.raises(InvalidToken) as refused:
            await introspector.introspect(issuer.mint(typ="JWT"))
        assert refused.value.reason == "wrong typ"
    finally:
        await introspector.aclose()
    assert issuer.requests[0] == "/.well-known/oauth-authorization-server/realms/test"
    assert issuer.jwks_fetches == 1


@pytest.mark.anyio
async def test_the_fake_issuer_answers_introspection_as_rfc_7662_says() -> None:
    issuer = FakeIssuer()
    introspector = issuer.remote_introspector()
    try:
        token = issuer.opaque_token(scope="items:read", client_id="svc")
        info = await introspector.introspect(token)
        assert info.active
        assert info.scopes == {"items:read"}
        assert info.client_id == "svc"
        assert (await introspector.introspect(issuer.mint())).active
        issuer.revoke(token)
        assert not (await introspector.introspect(token)).active  # RFC 7662 §2.2
        assert not (await introspector.introspect("never-issued")).active
        assert not (await introspector.introspect(issuer.opaque_token(exp=1))).active
    finally:
        await introspector.aclose()


@pytest.mark.anyio
async def test_the_fake_issuers_endpoint_checks_the_apis_credentials() -> None:
    """RFC 7662 §2.1: the endpoint requires client authentication; a wrong secret is 503 here."""
    issuer = FakeIssuer()
    methods: tuple[ClientAuthMethod, ...] = ("client_secret_basic", "client_secret_post")
    for auth_method in methods:
        wrong = RemoteIntrospector(
            issuer.introspection_endpoint,
            client_id=issuer.client_id,
            client_secret="wrong",
            auth_method=auth_method,
            audience=issuer.audience,
            http_client=issuer.client(),
        )
        right = issuer.remote_introspector(auth_method=auth_method)
        try:
            with pytest.raises(BackendUnavailableError, match="HTTP 401"):
                await wrong.introspect(issuer.opaque_token())
            assert (await right.introspect(issuer.opaque_token())).active
        finally:
            await wrong.aclose()
            await right.aclose()


@pytest.mark.anyio
async def test_a_down_issuer_is_a_503_and_nothing_else_is_served() -> None:
    issuer = FakeIssuer()
    async with issuer.client() as client:
        assert (await client.get(f"{issuer.issuer}/elsewhere")).status_code == 404
        assert (await client.get(issuer.introspection_endpoint)).status_code == 404  # POST only
        missing = await client.post(
            issuer.introspection_endpoint, data={"client_id": "api", "client_secret": "api-secret"}
        )
        assert missing.json() == {"error": "invalid_request"}
    issuer.down = True
    verifier = TokenVerifier(issuer.jwt_introspector())
    try:
        with pytest.raises(BackendUnavailableError):
            await verifier.verify(issuer.mint().encode())
    finally:
        await verifier.introspector.aclose()


def test_make_signing_key_refuses_symmetric_algorithms() -> None:
    assert make_signing_key("ES384").curve.name == "secp384r1"  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="HS256"):
        make_signing_key("HS256")
    with pytest.raises(ConfigurationError, match="at least one signing key"):
        FakeIssuer(signing_keys={})


# --- the pytest plugin --------------------------------------------------------------


def test_the_pytest_plugin_fixtures_in_a_users_test_file(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["apiguard.pytest_plugin"]')
    pytester.makepyfile(
        test_app=textwrap.dedent(
            """
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route
            from starlette.testclient import TestClient
            from apiguard import APIKeyMiddleware

            def hello(request):
                return PlainTextResponse(request.user.display_name)

            app = Starlette(routes=[Route("/", hello)])
            app.add_middleware(APIKeyMiddleware, store="memory://", pepper="p" * 32)

            def test_override(override_auth):
                with TestClient(app) as client:
                    override_auth(app, key_id="k1", name="alice", scopes=["a"])
                    assert client.get("/").text == "alice"

            def test_override_ended():
                with TestClient(app) as client:
                    assert client.get("/").status_code == 401

            def test_issuer_and_clock(fake_issuer, fake_clock):
                assert fake_issuer.mint().count(".") == 2
                fake_clock.advance(5)
                assert fake_clock() == 1005
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)
