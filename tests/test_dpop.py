"""DPoP-bound access tokens at the resource server (RFC 9449)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from apiguard import AuthMiddleware, BearerAuth, DPoPAuth, ProtectedResourceMetadata
from apiguard.proxies import TrustedProxies
from apiguard.tokens import DPoPNonces, MemoryReplayStore, RedisReplayStore, TokenInfo

from .conftest import MakeClient
from .dpop_support import (
    CLIENT_KEY,
    ED_CLIENT_KEY,
    OTHER_KEY,
    RSA_CLIENT_KEY,
    ath,
    dpop,
    jwk_of,
    proof,
    thumbprint,
)
from .test_bearer_middleware import active, make_app
from .token_support import TableIntrospector

pytestmark = pytest.mark.anyio

TOKEN = "dpop-bound-token"
ALGS = "ES256 ES384 PS256 RS256 EdDSA"
BARE_DPOP = f'DPoP realm="api", algs="{ALGS}"'
BAD_PROOF = (
    'DPoP realm="api", error="invalid_dpop_proof",'
    f' error_description="The DPoP proof is invalid.", algs="{ALGS}"'
)
BAD_TOKEN = (
    'DPoP realm="api", error="invalid_token",'
    f' error_description="The access token is invalid.", algs="{ALGS}"'
)


def introspector() -> TableIntrospector:
    table = TableIntrospector()
    table.answers[TOKEN] = active(cnf={"jkt": thumbprint(CLIENT_KEY)})
    table.answers["plain"] = active()
    table.answers["rsa-bound"] = active(cnf={"jkt": thumbprint(RSA_CLIENT_KEY)})
    table.answers["ed-bound"] = active(cnf={"jkt": thumbprint(ED_CLIENT_KEY)})
    table.answers["typed"] = TokenInfo(
        active=True, subject="svc", claims={"token_type": "DPoP", "sub": "svc"}
    )
    return table


def guarded(**options: Any) -> AuthMiddleware:
    return AuthMiddleware(make_app(), authenticators=[DPoPAuth(introspector(), **options)])


async def test_valid_proof_is_accepted(make_client: MakeClient) -> None:
    """RFC 9449 §7.1: `Authorization: DPoP` with a proof from the bound key."""
    app = AuthMiddleware(
        make_app(), authenticators=[DPoPAuth(introspector())], hide_credentials=True
    )
    async with make_client(app) as client:
        response = await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))
    assert response.status_code == 200
    assert response.json()["identity"] == "svc"
    assert response.json()["has_authorization"] is False


@pytest.mark.parametrize(
    ("key", "alg", "token"),
    [
        (RSA_CLIENT_KEY, "PS256", "rsa-bound"),
        (RSA_CLIENT_KEY, "RS256", "rsa-bound"),
        (ED_CLIENT_KEY, "EdDSA", "ed-bound"),
    ],
)
async def test_other_allowed_algorithms(
    make_client: MakeClient, key: Any, alg: str, token: str
) -> None:
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=dpop(token, proof(token, key=key, alg=alg)))
    assert response.status_code == 200


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "c2ln") -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{signature}"


def _none_proof() -> str:
    claims = {
        "jti": "x",
        "htm": "GET",
        "htu": "http://testserver/",
        "iat": int(time.time()),
        "ath": ath(TOKEN),
    }
    return _unsigned({"typ": "dpop+jwt", "alg": "none", "jwk": jwk_of(CLIENT_KEY)}, claims)


def _hs256_proof() -> str:
    # A MAC keyed with the public key's own bytes: key confusion (RFC 8725 §2.1).
    return proof(TOKEN, key=b"k" * 32, alg="HS256", jwk=jwk_of(CLIENT_KEY))


def _tampered() -> str:
    header, claims, signature = proof(TOKEN).split(".")
    payload = json.loads(base64.urlsafe_b64decode(claims + "=="))
    payload["htm"] = "POST"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _wrong_curve() -> str:
    jwk = {**jwk_of(CLIENT_KEY), "crv": "P-384"}
    return proof(TOKEN, jwk=jwk)


@pytest.mark.parametrize(
    ("proof_value", "why"),
    [
        pytest.param(lambda: proof(TOKEN, htm="POST"), "htm", id="wrong-htm"),
        pytest.param(lambda: proof(TOKEN, htu="http://testserver/other"), "htu", id="wrong-htu"),
        pytest.param(lambda: proof(TOKEN, htu="https://testserver/"), "htu", id="wrong-scheme"),
        pytest.param(lambda: proof(TOKEN, htu="http://evil.example/"), "htu", id="wrong-host"),
        pytest.param(lambda: proof(TOKEN, htu="/"), "htu", id="relative-htu"),
        pytest.param(lambda: proof(TOKEN, htu=None), "htu", id="no-htu"),
        pytest.param(lambda: proof(TOKEN, htm=None), "htm", id="no-htm"),
        pytest.param(lambda: proof("another-token"), "ath", id="wrong-ath"),
        pytest.param(lambda: proof(None), "ath", id="no-ath"),
        pytest.param(lambda: proof(TOKEN, jti=""), "jti", id="empty-jti"),
        pytest.param(lambda: proof(TOKEN, jti="j" * 257), "jti", id="huge-jti"),
        pytest.param(lambda: proof(TOKEN, iat=time.time() + 120), "iat", id="iat-future"),
        pytest.param(lambda: proof(TOKEN, iat=time.time() - 120), "iat", id="iat-past"),
        pytest.param(lambda: proof(TOKEN, iat="now"), "iat", id="iat-string"),
        pytest.param(lambda: proof(TOKEN, typ="JWT"), "typ", id="typ-jwt"),
        pytest.param(lambda: proof(TOKEN, typ=None), "typ", id="no-typ"),
        pytest.param(_none_proof, "alg", id="alg-none"),
        pytest.param(_hs256_proof, "alg", id="alg-hs256"),
        pytest.param(
            lambda: proof("rsa-bound", alg="RS512", key=RSA_CLIENT_KEY), "alg", id="alg-not-allowed"
        ),
        pytest.param(
            lambda: proof(TOKEN, jwk=jwk_of(CLIENT_KEY, private=True)),
            "private",
            id="private-key-in-jwk",
        ),
        pytest.param(
            lambda: proof(TOKEN, jwk=jwk_of(OTHER_KEY)), "signature", id="jwk-not-the-signer"
        ),
        pytest.param(_wrong_curve, "fit", id="jwk-curve-not-alg"),
        pytest.param(
            lambda: proof(TOKEN, jwk={"kty": "oct", "k": "c2VjcmV0"}), "private", id="symmetric-jwk"
        ),
        pytest.param(
            lambda: proof(TOKEN, jwk={"kty": "EC", "crv": "P-256"}), "valid", id="incomplete-jwk"
        ),
        pytest.param(_tampered, "signature", id="tampered-claims"),
        pytest.param(lambda: "not-a-jwt", "compact", id="not-a-jwt"),
        pytest.param(lambda: "e30.e30.e30.e30", "compact", id="four-parts"),
        pytest.param(lambda: "W10.e30.c2ln", "object", id="header-not-object"),
        pytest.param(lambda: "x" * 9000, "too large", id="oversized"),
    ],
)
async def test_bad_proofs_are_refused(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, proof_value: Any, why: str
) -> None:
    """RFC 9449 §4.3: each check, failed alone, refuses with invalid_dpop_proof (§7.1)."""
    caplog.set_level("INFO", logger="apiguard.middleware")
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=dpop(TOKEN, proof_value()))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_PROOF
    assert response.json()["error"] == "invalid_dpop_proof"
    assert why in caplog.text


async def test_replayed_proof_is_refused(make_client: MakeClient) -> None:
    """RFC 9449 §11.1: a proof is accepted once."""
    once = proof(TOKEN)
    async with make_client(guarded()) as client:
        assert (await client.get("/", headers=dpop(TOKEN, once))).status_code == 200
        replayed = await client.get("/", headers=dpop(TOKEN, once))
    assert replayed.status_code == 401
    assert replayed.headers["www-authenticate"] == BAD_PROOF


async def test_proof_from_another_key_is_refused(make_client: MakeClient) -> None:
    """RFC 9449 §7.1 / §6: a valid proof, but not from the key the token is bound to."""
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=dpop(TOKEN, proof(TOKEN, key=OTHER_KEY)))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_TOKEN


async def test_unbound_token_with_dpop_scheme_is_refused(make_client: MakeClient) -> None:
    """A token without `cnf.jkt` is not bound to the proof's key (RFC 9449 §7.1)."""
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=dpop("plain", proof("plain")))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_TOKEN


async def test_two_dpop_headers_are_refused(make_client: MakeClient) -> None:
    """RFC 9449 §4.3 check 1: not more than one DPoP header, even two valid proofs."""
    headers = [("authorization", f"DPoP {TOKEN}"), ("dpop", proof(TOKEN)), ("dpop", proof(TOKEN))]
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_PROOF


async def test_token_without_proof_is_refused(make_client: MakeClient) -> None:
    async with make_client(guarded()) as client:
        response = await client.get("/", headers={"authorization": f"DPoP {TOKEN}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_PROOF


async def test_proof_without_token_is_no_credential(make_client: MakeClient) -> None:
    """A DPoP header alone is not a credential: the bare challenge, no error (RFC 6750 §3.1)."""
    async with make_client(guarded()) as client:
        response = await client.get("/", headers={"dpop": proof(TOKEN)})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BARE_DPOP


async def test_empty_dpop_token_is_invalid_request(make_client: MakeClient) -> None:
    async with make_client(guarded()) as client:
        response = await client.get("/", headers={"authorization": "DPoP ", "dpop": proof(TOKEN)})
    assert response.status_code == 400


async def test_invalid_token_with_valid_proof(make_client: MakeClient) -> None:
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=dpop("unknown", proof("unknown")))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_TOKEN


async def test_htu_is_compared_normalised_without_query(make_client: MakeClient) -> None:
    """RFC 9449 §4.3 check 9: query and fragment ignored, RFC 3986 §6.2.2-6.2.3 applied."""
    htu = "HTTP://TestServer:80/./a/../items/%7e%7Bx%7D"
    async with make_client(
        AuthMiddleware(make_app(), authenticators=[DPoPAuth(introspector())]),
    ) as client:
        response = await client.get(
            "/items/~%7bx%7d?q=1", headers=dpop(TOKEN, proof(TOKEN, htu=htu + "?other#f"))
        )
    # No route there: past the middleware, the app answers 404.
    assert response.status_code == 404


async def test_public_url_is_the_expected_origin(make_client: MakeClient) -> None:
    """Behind a proxy the configured public URL, not the Host header, names the API."""
    app = guarded(public_url="https://api.example/")
    async with make_client(app) as client:
        ok = await client.get("/", headers=dpop(TOKEN, proof(TOKEN, htu="https://api.example/")))
        local = await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))
    assert ok.status_code == 200
    assert local.status_code == 401


async def test_origin_function_seam(make_client: MakeClient) -> None:
    seen: list[str] = []

    def origin(scope: Any) -> str:
        seen.append(scope["path"])
        return "https://edge.example:8443"

    htu = "https://edge.example:8443/"
    async with make_client(guarded(origin=origin)) as client:
        response = await client.get("/", headers=dpop(TOKEN, proof(TOKEN, htu=htu)))
    assert response.status_code == 200
    assert seen == ["/"]


async def test_hostile_host_header_is_refused(make_client: MakeClient) -> None:
    headers = {**dpop(TOKEN, proof(TOKEN)), "host": "a b"}
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == BAD_PROOF


async def test_token_verdict_is_cached_but_proof_checked_each_time(
    make_client: MakeClient,
) -> None:
    """The token is introspected once; every request still needs its own proof."""
    table = introspector()
    app = AuthMiddleware(make_app(), authenticators=[DPoPAuth(table)])
    async with make_client(app) as client:
        for _ in range(3):
            assert (await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))).status_code == 200
        bad = await client.get("/", headers=dpop(TOKEN, proof(TOKEN, key=OTHER_KEY)))
    assert table.calls == 1
    assert bad.status_code == 401


async def test_dpop_bound_token_as_bearer_is_refused(make_client: MakeClient) -> None:
    """RFC 9449 §7.2: with both schemes accepted, a DPoP-bound token sent as Bearer."""
    table = introspector()
    bearer = BearerAuth(table)
    app = AuthMiddleware(make_app(), authenticators=[bearer, DPoPAuth(bearer.verifier)])
    async with make_client(app) as client:
        as_bearer = await client.get("/", headers={"authorization": f"Bearer {TOKEN}"})
        typed = await client.get("/", headers={"authorization": "Bearer typed"})
        as_dpop = await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))
        none = await client.get("/")
    assert as_bearer.status_code == 401
    assert as_bearer.headers["www-authenticate"].startswith(
        'Bearer realm="api", error="invalid_token"'
    )
    assert typed.status_code == 401  # RFC 9449 §6.2: introspected token_type DPoP
    assert as_dpop.status_code == 200  # the same token, cached, with its proof
    assert table.calls == 2
    # No credentials: both challenges, without error (RFC 9449 §7.2, RFC 6750 §3.1).
    assert none.headers.get_list("www-authenticate") == ['Bearer realm="api"', BARE_DPOP]


async def test_bearer_token_with_a_dpop_header(make_client: MakeClient) -> None:
    """An unbound token sent as Bearer is a bearer token (RFC 6750 §2.1); a DPoP header
    beside it is not read: it binds nothing (RFC 9449 §7.1 defines it for the DPoP scheme)."""
    table = introspector()
    app = AuthMiddleware(make_app(), authenticators=[BearerAuth(table), DPoPAuth(table)])
    async with make_client(app) as client:
        response = await client.get(
            "/", headers={"authorization": "Bearer plain", "dpop": "garbage"}
        )
    assert response.status_code == 200


async def test_nonce_required(make_client: MakeClient) -> None:
    """RFC 9449 §9: no nonce → 401 use_dpop_nonce with DPoP-Nonce; retry with it passes."""
    nonces = DPoPNonces(b"n" * 32)
    async with make_client(guarded(nonces=nonces)) as client:
        first = await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))
        nonce = first.headers["dpop-nonce"]
        retry = await client.get("/", headers=dpop(TOKEN, proof(TOKEN, nonce=nonce)))
        forged = await client.get("/", headers=dpop(TOKEN, proof(TOKEN, nonce="A" * 32)))
    assert first.status_code == 401
    assert first.headers["www-authenticate"] == (
        'DPoP realm="api", error="use_dpop_nonce",'
        f' error_description="Resource server requires nonce in DPoP proof.", algs="{ALGS}"'
    )
    assert first.headers["cache-control"] == "no-store"  # RFC 9449 §8.2
    assert retry.status_code == 200
    assert forged.status_code == 401
    assert forged.headers["www-authenticate"].startswith('DPoP realm="api", error="use_dpop_nonce"')


def test_nonces_expire_and_are_bound_to_their_secret() -> None:
    nonces = DPoPNonces(b"s" * 32, lifetime=60)
    nonce = nonces.issue(1000.0)
    assert nonces.valid(nonce, 1059.0)
    assert not nonces.valid(nonce, 1061.0)
    assert not DPoPNonces(b"t" * 32).valid(nonce, 1000.0)
    assert not nonces.valid("!" * 32, 1000.0)
    assert not nonces.valid("short", 1000.0)


async def test_metadata_names_dpop(make_client: MakeClient) -> None:
    """RFC 9728 §2: algorithms and whether DPoP is required follow the configuration."""
    meta = ProtectedResourceMetadata("https://api.example/")
    only_dpop = AuthMiddleware(
        make_app(),
        authenticators=[DPoPAuth(introspector(), algorithms=["ES256"])],
        protected_resource=meta,
    )
    async with make_client(only_dpop) as client:
        document = (await client.get("/.well-known/oauth-protected-resource")).json()
        challenge = (await client.get("/")).headers["www-authenticate"]
    assert document["dpop_signing_alg_values_supported"] == ["ES256"]
    assert document["dpop_bound_access_tokens_required"] is True
    assert challenge == (
        'DPoP realm="api", algs="ES256",'
        ' resource_metadata="https://api.example/.well-known/oauth-protected-resource"'
    )


@pytest.mark.redis
async def test_redis_replay_store_is_shared(redis_url: str, make_client: MakeClient) -> None:
    """Two workers sharing Redis: a proof used at one is refused at the other (SET NX PX)."""
    one, two = RedisReplayStore.from_url(redis_url), RedisReplayStore.from_url(redis_url)
    try:
        once = proof(TOKEN)
        async with (
            make_client(guarded(replay=one)) as first,
            make_client(guarded(replay=two)) as second,
        ):
            assert (await first.get("/", headers=dpop(TOKEN, once))).status_code == 200
            replayed = await second.get("/", headers=dpop(TOKEN, once))
            fresh = await second.get("/", headers=dpop(TOKEN, proof(TOKEN)))
        assert replayed.status_code == 401
        assert fresh.status_code == 200
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.redis
async def test_redis_down_fails_closed(make_redis_server: Any, make_client: MakeClient) -> None:
    """The replay store out of reach: 503 with Retry-After, never a pass."""
    server = make_redis_server()
    store = RedisReplayStore.from_url(server.url(), socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        async with make_client(guarded(replay=store)) as client:
            assert (await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))).status_code == 200
            server.stop()
            response = await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))
        assert response.status_code == 503
        assert "retry-after" in response.headers
    finally:
        await store.aclose()


async def test_memory_replay_store_is_bounded() -> None:
    now = [0.0]
    store = MemoryReplayStore(max_entries=2, clock=lambda: now[0])
    assert await store.first_use(b"a", 10)
    assert not await store.first_use(b"a", 10)
    assert await store.first_use(b"b", 10)
    from apiguard import BackendUnavailableError

    with pytest.raises(BackendUnavailableError):
        await store.first_use(b"c", 10)  # full: refuse, never forget a live entry
    now[0] = 11.0  # the window has passed: entries expire, room again
    assert await store.first_use(b"c", 10)
    assert await store.first_use(b"a", 10)
    assert len(store) == 2


async def test_full_memory_store_answers_503(make_client: MakeClient) -> None:
    app = guarded(replay=MemoryReplayStore(max_entries=1))
    async with make_client(app) as client:
        assert (await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))).status_code == 200
        response = await client.get("/", headers=dpop(TOKEN, proof(TOKEN)))
    assert response.status_code == 503


def test_websocket_proof_uses_get_and_http_url() -> None:
    """A websocket handshake is an HTTP GET: the proof says htm GET and an http(s) htu."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.user.identity)
        await websocket.close()

    app = AuthMiddleware(
        Starlette(routes=[WebSocketRoute("/ws", echo)]),
        authenticators=[DPoPAuth(introspector())],
    )
    with TestClient(app) as client:
        headers = dpop(TOKEN, proof(TOKEN, htu="http://testserver/ws"))
        with client.websocket_connect("/ws", headers=headers) as websocket:
            assert websocket.receive_text() == "svc"
        wrong = dpop(TOKEN, proof(TOKEN, htu="http://testserver/ws", htm="POST"))
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws", headers=wrong):
            pytest.fail("a proof for POST opened a websocket")


def test_configuration_errors() -> None:
    from apiguard import ConfigurationError

    with pytest.raises(ConfigurationError):
        DPoPAuth(introspector(), algorithms=["HS256"])
    with pytest.raises(ConfigurationError):
        DPoPAuth(introspector(), algorithms="ES256")
    with pytest.raises(ConfigurationError):
        DPoPAuth(introspector(), algorithms=[])
    with pytest.raises(ConfigurationError):
        DPoPAuth(introspector(), max_age=0)
    with pytest.raises(ConfigurationError):
        DPoPAuth(introspector(), public_url="https://a.example", origin=lambda s: "x")
    with pytest.raises(ConfigurationError):
        DPoPAuth(introspector(), public_url="ftp://a.example")
    with pytest.raises(ConfigurationError):
        DPoPNonces(b"short")
    with pytest.raises(ConfigurationError):
        DPoPNonces(lifetime=0)
    with pytest.raises(ConfigurationError):
        MemoryReplayStore(max_entries=0)
    bearer = BearerAuth(introspector())
    with pytest.raises(ConfigurationError):
        DPoPAuth(bearer.verifier, cache=__import__("apiguard").CacheOptions())


def test_reprs_hold_no_secret() -> None:
    assert "nnnn" not in repr(DPoPNonces(b"n" * 32))


def _small_rsa_proof() -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    # Signed by hand: PyJWT refuses to sign with a key this short.
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    claims = {
        "jti": "j",
        "htm": "GET",
        "htu": "http://testserver/",
        "iat": int(time.time()),
        "ath": ath(TOKEN),
    }
    unsigned = _unsigned({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk_of(small)}, claims, "")
    signature = small.sign(unsigned[:-1].encode(), padding.PKCS1v15(), hashes.SHA256())
    return unsigned + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def _array_claims() -> str:
    import jwt

    header = {"typ": "dpop+jwt", "jwk": jwk_of(CLIENT_KEY)}
    return jwt.api_jws.encode(b"[]", CLIENT_KEY, algorithm="ES256", headers=header)


def _signed_payload(payload: bytes) -> str:
    import jwt

    header = {"typ": "dpop+jwt", "jwk": jwk_of(CLIENT_KEY)}
    return jwt.api_jws.encode(payload, CLIENT_KEY, algorithm="ES256", headers=header)


def _bad_signature_encoding() -> str:
    header, claims, _ = proof(TOKEN).split(".")
    return f"{header}.{claims}.A"  # not base64url of anything


def _no_jwk() -> str:
    import jwt

    claims = {"jti": "j", "htm": "GET", "htu": "http://testserver/", "iat": int(time.time())}
    return jwt.encode(claims, CLIENT_KEY, algorithm="ES256", headers={"typ": "dpop+jwt"})


@pytest.mark.parametrize(
    ("proof_value", "why"),
    [
        pytest.param(_small_rsa_proof, "too small", id="rsa-1024"),
        pytest.param(_array_claims, "not an object", id="claims-array"),
        pytest.param(_no_jwk, "no jwk", id="no-jwk"),
        pytest.param(lambda: _signed_payload(b"not json"), "not JSON", id="claims-not-json"),
        pytest.param(_bad_signature_encoding, "signature", id="signature-not-base64url"),
        pytest.param(lambda: "bm90IGpzb24.e30.c2ln", "not JSON", id="header-not-json"),
    ],
)
async def test_more_bad_proofs(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, proof_value: Any, why: str
) -> None:
    caplog.set_level("INFO", logger="apiguard.middleware")
    async with make_client(guarded()) as client:
        response = await client.get("/", headers=dpop(TOKEN, proof_value()))
    assert response.headers["www-authenticate"] == BAD_PROOF
    assert why in caplog.text


def test_non_ascii_nonce_is_not_valid() -> None:
    assert not DPoPNonces(b"s" * 32).valid("é" * 32, 0.0)


async def test_dpop_resource_metadata_parameter(make_client: MakeClient) -> None:
    app = guarded(resource_metadata="https://api.example/.well-known/oauth-protected-resource")
    async with make_client(app) as client:
        response = await client.get("/")
    assert response.headers["www-authenticate"] == (
        f'{BARE_DPOP}, resource_metadata="https://api.example/.well-known/oauth-protected-resource"'
    )


def test_redis_replay_store_bad_url() -> None:
    from apiguard import ConfigurationError

    with pytest.raises(ConfigurationError):
        RedisReplayStore.from_url("nonsense://x")


@pytest.mark.parametrize(("trusted", "expected"), [(["127.0.0.1"], 200), (["10.0.0.1"], 401)])
async def test_htu_behind_trusted_proxies_is_the_url_the_client_used(
    make_client: MakeClient, trusted: list[str], expected: int
) -> None:
    """RFC 9449 §4.3 check 9 behind a proxy: the forwarded scheme and host count only
    when the peer (httpx's ASGI transport: 127.0.0.1) is a trusted proxy."""
    forwarded = {
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "api.example",
    }
    htu = "https://api.example/"
    app = guarded(origin=TrustedProxies(trusted).origin)
    async with make_client(app) as client:
        response = await client.get(
            "/", headers={**dpop(TOKEN, proof(TOKEN, htu=htu)), **forwarded}
        )
    assert response.status_code == expected
