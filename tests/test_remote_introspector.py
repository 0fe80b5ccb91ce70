from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import anyio
import httpx
import pytest

from apiguard import BackendUnavailableError, ConfigurationError, InvalidToken
from apiguard.tokens import CompositeIntrospector, JWTIntrospector, RemoteIntrospector, TokenInfo

from .token_support import AUDIENCE, ISSUER, FakeIssuer, mint

pytestmark = pytest.mark.anyio

ENDPOINT = "https://idp.example/introspect"
CLIENT_ID = "api server:1"  # reserved characters on purpose
CLIENT_SECRET = "p@ss:w/rd+&=%"


class Endpoint:
    """An RFC 7662 endpoint: records requests, answers from a callable."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)

    def form(self, index: int = -1) -> dict[str, list[str]]:
        return parse_qs(self.requests[index].content.decode())


def json_answer(**members: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=members)


def active_answer(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "active": True,
        "client_id": "svc",
        "sub": "svc",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "scope": "items:read",
        "exp": now + 300,
        "iat": now,
        "token_type": "Bearer",
    }
    return {k: v for k, v in (base | overrides).items() if v is not None}


def introspector(endpoint: Endpoint, **options: Any) -> RemoteIntrospector:
    settings: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "audience": AUDIENCE,
        "issuer": ISSUER,
        "http_client": httpx.AsyncClient(transport=httpx.MockTransport(endpoint)),
    } | options
    return RemoteIntrospector(ENDPOINT, **settings)


async def test_active_token() -> None:
    endpoint = Endpoint(json_answer(**active_answer()))
    info = await introspector(endpoint).introspect("opaque-token")
    assert info.active
    assert (info.client_id, info.subject) == ("svc", "svc")
    assert info.scopes == {"items:read"}
    request = endpoint.requests[0]
    assert request.method == "POST"  # RFC 7662 §2.1
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert endpoint.form() == {"token": ["opaque-token"], "token_type_hint": ["access_token"]}


async def test_client_secret_basic_form_encodes_before_base64() -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined and Basic-encoded."""
    endpoint = Endpoint(json_answer(**active_answer()))
    await introspector(endpoint).introspect("t")
    scheme, encoded = endpoint.requests[0].headers["authorization"].split(" ")
    user, password = base64.b64decode(encoded).decode().split(":")
    assert scheme == "Basic"
    assert "%3A" in user  # the ':' inside the id is encoded, so the split is unambiguous
    assert (unquote_plus(user), unquote_plus(password)) == (CLIENT_ID, CLIENT_SECRET)


async def test_client_secret_post() -> None:
    endpoint = Endpoint(json_answer(**active_answer()))
    await introspector(endpoint, auth_method="client_secret_post", token_type_hint=None).introspect(
        "t"
    )
    assert "authorization" not in endpoint.requests[0].headers
    assert endpoint.form() == {
        "token": ["t"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }


async def test_inactive_token() -> None:
    """RFC 7662 §2.2: active false is an answer, not an error."""
    info = await introspector(Endpoint(json_answer(active=False))).introspect("t")
    assert info == TokenInfo(active=False)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://other.example"}, "wrong audience"),
        ({"aud": None}, "wrong audience"),
        ({"aud": ["https://x.example", "https://y.example"]}, "wrong audience"),
        ({"exp": 1}, "expired"),
        ({"iss": "https://evil.example"}, "wrong issuer"),
        ({"token_type": "refresh_token"}, "wrong token_type"),
    ],
)
async def test_active_answers_are_still_checked(overrides: dict[str, Any], reason: str) -> None:
    """An active answer is checked locally for aud, exp, iss and token_type."""
    with pytest.raises(InvalidToken) as info:
        await introspector(Endpoint(json_answer(**active_answer(**overrides)))).introspect("t")
    assert info.value.reason == reason


async def test_dpop_token_type_keeps_its_binding() -> None:
    """RFC 9449 §6.2: a DPoP-bound token's answer says `token_type` DPoP and `cnf.jkt`;
    the binding is for the authenticator to check (`BearerAuth` refuses it, §7.2)."""
    answer = active_answer(token_type="DPoP", cnf={"jkt": "abc"})
    info = await introspector(Endpoint(json_answer(**answer))).introspect("t")
    assert info.cnf == {"jkt": "abc"}
    assert info.claims["token_type"] == "DPoP"


async def test_audience_in_a_list_and_lower_case_token_type() -> None:
    answer = active_answer(aud=["https://x.example", AUDIENCE], token_type="bearer")
    assert (await introspector(Endpoint(json_answer(**answer))).introspect("t")).active


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, "invalid_client"), (401, "invalid_client"), (403, None), (404, None), (405, None)],
)
async def test_endpoint_refusing_our_credentials_is_503_and_loud(
    status: int, error: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 7662 §2.3: a refusal of the API's own credentials is a misconfiguration, not a 401."""
    body = {"error": error} if error else {}
    endpoint = Endpoint(lambda request: httpx.Response(status, json=body))
    with pytest.raises(BackendUnavailableError):
        await introspector(endpoint).introspect("t")
    assert len(endpoint.requests) == 1  # not retried
    assert "refused this API's request" in caplog.text
    assert CLIENT_SECRET not in caplog.text


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(400, json={"error": "invalid_request"}), "introspection: invalid_request"),
        (
            httpx.Response(400, json={"error": "unsupported_token_type"}),
            "introspection: unsupported_token_type",
        ),
        (httpx.Response(400, content=b"<html>bad request</html>"), "introspection: rejected"),
        (httpx.Response(400, json={"error": "x\nforged log line"}), "introspection: rejected"),
        (httpx.Response(413), "introspection: rejected"),
    ],
)
async def test_a_request_refused_for_its_token_is_an_invalid_token(
    response: httpx.Response, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 7662 §2.3: only 401 and 403 say the API's own credentials failed; a 400 about
    the token means the token is not valid here (401 invalid_token), quietly."""
    endpoint = Endpoint(lambda request: response)
    remote = introspector(endpoint)
    for _ in range(3):  # and no backoff: the server is fine
        with pytest.raises(InvalidToken) as info:
            await remote.introspect("t")
        assert info.value.reason == reason
    assert len(endpoint.requests) == 3  # never retried
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_tokens_larger_than_the_limit_are_refused_without_a_call() -> None:
    endpoint = Endpoint(json_answer(**active_answer()))
    remote = introspector(endpoint)
    with pytest.raises(InvalidToken) as info:
        await remote.introspect("a" * 60_000)
    assert info.value.reason == "token too large"
    assert (await introspector(endpoint, max_token_size=70_000).introspect("a" * 60_000)).active
    assert len(endpoint.requests) == 1


async def test_a_failing_endpoint_is_backed_off(caplog: pytest.LogCaptureFixture) -> None:
    """After a failure, calls fail at once for a short time: 100 requests, 2 calls (1 retry)."""
    endpoint = Endpoint(lambda request: httpx.Response(503))
    remote = introspector(endpoint)
    for _ in range(100):
        with pytest.raises(BackendUnavailableError):
            await remote.introspect("t")
    assert len(endpoint.requests) == 2

    misconfigured = Endpoint(lambda request: httpx.Response(401))
    remote = introspector(misconfigured)
    for _ in range(100):
        with pytest.raises(BackendUnavailableError):
            await remote.introspect("t")
    assert len(misconfigured.requests) == 1
    assert caplog.text.count("refused this API's request") == 1


async def test_a_slow_endpoint_is_cut_off_by_the_deadline() -> None:
    """Retries and slow bodies included, one introspection ends within `deadline`."""

    async def trickle() -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await anyio.sleep(0.05)

    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    remote = RemoteIntrospector(
        ENDPOINT,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        audience=AUDIENCE,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(answer)),
        deadline=0.3,
    )
    started = anyio.current_time()
    with pytest.raises(BackendUnavailableError, match=r"no answer within 0\.3 s"):
        await remote.introspect("t")
    assert anyio.current_time() - started < 3


async def test_leeway_for_exp() -> None:
    """The same rule as for JWTs: accepted until exp + leeway (30 s by default)."""
    now = int(time.time())
    answer = active_answer(exp=now - 10)
    assert (await introspector(Endpoint(json_answer(**answer))).introspect("t")).active
    with pytest.raises(InvalidToken):
        await introspector(Endpoint(json_answer(**answer)), leeway=0).introspect("t")
    answer = active_answer(exp=now - 60)
    with pytest.raises(InvalidToken):
        await introspector(Endpoint(json_answer(**answer))).introspect("t")


async def test_exp_must_be_a_number() -> None:
    """RFC 7662 §2.2: exp is an integer timestamp; a string cannot bound the cache."""
    answer = active_answer(exp=str(int(time.time()) + 300))
    with pytest.raises(InvalidToken) as info:
        await introspector(Endpoint(json_answer(**answer))).introspect("t")
    assert info.value.reason == "malformed time claim"


async def test_a_rate_limited_endpoint_is_an_outage_not_a_misconfiguration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 6585 §4: 429 means the server sheds load; 503 for our caller, backed off,
    without the misconfiguration ERROR."""
    endpoint = Endpoint(lambda request: httpx.Response(429, headers={"retry-after": "3"}))
    remote = introspector(endpoint)
    for _ in range(5):
        with pytest.raises(BackendUnavailableError, match="429"):
            await remote.introspect("t")
    assert len(endpoint.requests) == 1
    assert "refused this API's request" not in caplog.text


def _raise(error: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    return answer


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda request: httpx.Response(503), id="5xx"),
        pytest.param(_raise(httpx.ConnectError), id="connect-error"),
        pytest.param(_raise(httpx.ReadTimeout), id="timeout"),
    ],
)
async def test_outages_are_retried_then_503(
    answer: Callable[[httpx.Request], httpx.Response],
) -> None:
    endpoint = Endpoint(answer)
    with pytest.raises(BackendUnavailableError):
        await introspector(endpoint, retries=2).introspect("t")
    assert len(endpoint.requests) == 3


async def test_a_retry_can_succeed() -> None:
    answers = iter([httpx.Response(502), httpx.Response(200, json=active_answer())])
    endpoint = Endpoint(lambda request: next(answers))
    assert (await introspector(endpoint).introspect("t")).active


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>"),
        httpx.Response(200, json=["active"]),
        httpx.Response(200, json={"active": "true"}),
        httpx.Response(200, json={"scope": "a"}),
        httpx.Response(200, content=b"{" + b" " * (600 * 1024) + b"}"),
        httpx.Response(200, content=b'{"active":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ],
    ids=["not-json", "not-object", "active-not-boolean", "no-active", "huge", "deeply-nested"],
)
async def test_garbage_answers_are_503(response: httpx.Response) -> None:
    with pytest.raises(BackendUnavailableError):
        await introspector(Endpoint(lambda request: response)).introspect("t")


async def test_endpoint_from_discovery() -> None:
    idp = FakeIssuer()

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/introspect":
            return httpx.Response(200, json=active_answer())
        return idp.handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(route)) as client:
        remote = RemoteIntrospector.from_issuer(
            ISSUER, client_id="a", client_secret="b", audience=AUDIENCE, http_client=client
        )
        assert (await remote.introspect("t")).active
        assert (await remote.introspect("t")).active
    assert idp.requests == ["/.well-known/oauth-authorization-server"]  # discovered once


async def test_metadata_without_introspection_endpoint() -> None:
    idp = FakeIssuer()
    idp.metadata = lambda: {"issuer": ISSUER}  # type: ignore[method-assign]
    async with idp.client() as client:
        remote = RemoteIntrospector.from_issuer(
            ISSUER, client_id="a", client_secret="b", audience=AUDIENCE, http_client=client
        )
        with pytest.raises(BackendUnavailableError, match="no introspection_endpoint"):
            await remote.introspect("t")


@pytest.mark.parametrize(
    "options",
    [
        {"audience": []},
        {"client_secret": ""},
        {"auth_method": "private_key_jwt"},
        {"retries": -1},
    ],
)
def test_bad_configuration(options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {
        "client_id": "a",
        "client_secret": "b",
        "audience": AUDIENCE,
    } | options
    with pytest.raises(ConfigurationError):
        RemoteIntrospector(ENDPOINT, **settings)
    with pytest.raises(ConfigurationError):
        RemoteIntrospector(None, client_id="a", client_secret="b", audience=AUDIENCE)
    with pytest.raises(ConfigurationError):
        RemoteIntrospector(
            "http://idp.example/introspect", client_id="a", client_secret="b", audience=AUDIENCE
        )


async def test_secret_not_in_repr_and_owned_client_closed() -> None:
    remote = RemoteIntrospector(ENDPOINT, client_id="a", client_secret="s3cret", audience=AUDIENCE)
    assert "s3cret" not in repr(remote)
    await remote.aclose()
    assert remote._client.is_closed


# --- JWT and opaque tokens on one API ------------------------------------------


async def test_composite_routes_by_shape() -> None:
    idp = FakeIssuer()
    endpoint = Endpoint(json_answer(**active_answer(client_id="opaque-client")))
    async with idp.client() as client:
        local = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        composite = CompositeIntrospector(jwt=local, remote=introspector(endpoint))
        assert (await composite.introspect(mint())).client_id == "client-123"
        assert (await composite.introspect("2YotnFZFEjr1zCsicMWpAA")).client_id == "opaque-client"
        assert len(endpoint.requests) == 1
        with pytest.raises(InvalidToken):
            await composite.introspect(mint(aud="https://other.example"))  # never sent remotely
        assert len(endpoint.requests) == 1


async def test_composite_can_introspect_jwts_for_revocation() -> None:
    idp = FakeIssuer()
    endpoint = Endpoint(json_answer(active=False))  # revoked at the server
    async with idp.client() as client:
        local = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        composite = CompositeIntrospector(
            jwt=local, remote=introspector(endpoint), introspect_jwts=True
        )
        assert not (await composite.introspect(mint())).active
        endpoint.answer = json_answer(**active_answer())
        assert (await composite.introspect(mint())).client_id == "client-123"  # local claims
        await composite.aclose()


async def test_composite_against_a_server_that_cannot_introspect_jwts() -> None:
    """A 400 unsupported_token_type for a JWT is a refusal (401), not an outage (503)."""
    idp = FakeIssuer()
    endpoint = Endpoint(
        lambda request: httpx.Response(400, json={"error": "unsupported_token_type"})
    )
    async with idp.client() as client:
        local = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        composite = CompositeIntrospector(
            jwt=local, remote=introspector(endpoint), introspect_jwts=True
        )
        with pytest.raises(InvalidToken):
            await composite.introspect(mint())
        assert composite.leeway == 30


async def test_private_key_jwt_client_assertion() -> None:
    """RFC 7523 §2.2/§3: a signed assertion per call: iss = sub = client id, aud, unique jti, exp."""
    import jwt as pyjwt

    from .token_support import EC_KEY

    endpoint = Endpoint(json_answer(**active_answer()))
    remote = introspector(
        endpoint,
        client_id="api-jwt",
        client_secret=None,
        auth_method="private_key_jwt",
        private_key=EC_KEY,
        signing_alg="ES256",
        key_id="client-key-1",
    )
    await remote.introspect("t1")
    await remote.introspect("t2")
    jtis = []
    for index in (0, 1):
        form = endpoint.form(index)
        assert "authorization" not in endpoint.requests[index].headers
        assert form["client_assertion_type"] == [
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ]
        assertion = form["client_assertion"][0]
        assert pyjwt.get_unverified_header(assertion)["kid"] == "client-key-1"
        claims = pyjwt.decode(assertion, EC_KEY.public_key(), algorithms=["ES256"], audience=ISSUER)
        assert (claims["iss"], claims["sub"]) == ("api-jwt", "api-jwt")
        assert 0 < claims["exp"] - time.time() <= 60
        jtis.append(claims["jti"])
    assert len(set(jtis)) == 2


@pytest.mark.parametrize(
    "options",
    [
        {"private_key": None},
        {"signing_alg": "HS256"},
        {"signing_alg": "RS256"},  # an EC key cannot sign RS256
        {"private_key": "not a PEM key"},
    ],
)
def test_private_key_jwt_configuration(options: dict[str, Any]) -> None:
    from .token_support import EC_KEY

    settings: dict[str, Any] = {
        "client_id": "a",
        "audience": AUDIENCE,
        "auth_method": "private_key_jwt",
        "private_key": EC_KEY,
        "signing_alg": "ES256",
    } | options
    with pytest.raises(ConfigurationError):
        RemoteIntrospector(ENDPOINT, **settings)
