from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from apiguard import BackendUnavailableError, ConfigurationError, InvalidToken
from apiguard.testing import FakeClock
from apiguard.tokens import JWTIntrospector, TrustedIssuer, metadata_urls

from .token_support import (
    AUDIENCE,
    EC_KEY,
    ED_KEY,
    ISSUER,
    RSA_KEY,
    RSA_KEY_2,
    FakeIssuer,
    mint,
    public_jwk,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def idp() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def introspector(idp: FakeIssuer, clock: FakeClock) -> AsyncIterator[JWTIntrospector]:
    async with idp.client() as client:
        yield JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=client, clock=clock
        )


async def refused(introspector: JWTIntrospector, token: str) -> str:
    with pytest.raises(InvalidToken) as info:
        await introspector.introspect(token)
    assert info.value.status_code == 401
    assert info.value.error == "invalid_token"
    return info.value.reason


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [(RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")],
    ids=["RS256", "ES256"],
)
async def test_valid_token(introspector: JWTIntrospector, key: Any, alg: str, kid: str) -> None:
    info = await introspector.introspect(mint(key, alg, kid))
    assert info.active
    assert info.subject == info.client_id == "client-123"
    assert info.scopes == {"items:read", "items:write"}
    assert info.audience == (AUDIENCE,)
    assert info.issuer == ISSUER
    assert info.token_type == "at+jwt"
    assert info.expires_at is not None
    assert info.claims["jti"] == "jti-1"
    assert "jti-1" not in repr(info)


async def test_discovery_then_keys_are_cached(
    introspector: JWTIntrospector, idp: FakeIssuer
) -> None:
    """RFC 8414 §3.1 metadata first; the JWKS is fetched once for many tokens."""
    for _ in range(5):
        await introspector.introspect(mint())
    assert idp.requests == ["/.well-known/oauth-authorization-server", "/jwks"]


async def test_openid_discovery_fallback(idp: FakeIssuer, clock: FakeClock) -> None:
    """RFC 8414 §5: fall back to /.well-known/openid-configuration."""
    idp.oidc_only = True
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        assert (await introspector.introspect(mint())).active
    assert idp.requests == [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/jwks",
    ]


def test_metadata_urls_for_an_issuer_with_a_path() -> None:
    """RFC 8414 §3.1 inserts the well-known segment before the path; OIDC appends it."""
    assert metadata_urls("https://as.example/tenant1") == (
        "https://as.example/.well-known/oauth-authorization-server/tenant1",
        "https://as.example/tenant1/.well-known/openid-configuration",
    )


async def test_metadata_naming_another_issuer_is_refused(idp: FakeIssuer) -> None:
    """RFC 8414 §3.3: the metadata's issuer must be identical, or it is not used (503)."""
    idp.metadata_issuer = "https://evil.example"
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        with pytest.raises(BackendUnavailableError, match="another issuer"):
            await introspector.introspect(mint())


async def test_unreachable_issuer_is_503_then_backed_off_then_retried(
    idp: FakeIssuer, clock: FakeClock
) -> None:
    idp.down = True
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=client, clock=clock
        )
        with pytest.raises(BackendUnavailableError):
            await introspector.introspect(mint())
        asked = len(idp.requests)  # RFC 8414 metadata, then OpenID Connect's
        idp.down = False
        with pytest.raises(BackendUnavailableError, match="backing off"):
            await introspector.introspect(mint())
        assert len(idp.requests) == asked  # not asked again at once
        clock.now += 1  # the first delay is at most 1 s
        assert (await introspector.introspect(mint())).active


async def test_an_outage_is_not_amplified_by_traffic(idp: FakeIssuer, clock: FakeClock) -> None:
    """200 requests, at once and one after another, against a failing server: one fetch."""
    idp.down = True
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=client, clock=clock
        )

        async def request() -> None:
            with pytest.raises(BackendUnavailableError):
                await introspector.introspect(mint())

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(request)
        for _ in range(100):
            await request()
        assert introspector.key_fetches(ISSUER) == 1
        delays = []
        for _ in range(8):  # each failure waits longer, up to 30 s, never less than half
            before = introspector.key_fetches(ISSUER)
            waited = 0.0
            while introspector.key_fetches(ISSUER) == before:
                clock.now += 0.25
                waited += 0.25
                await request()
            delays.append(waited)
        assert delays[0] <= 2.25
        assert all(later >= earlier / 2 - 0.25 for earlier, later in itertools.pairwise(delays))
        assert 15 <= delays[-1] <= 30.25


async def test_expired_keys_during_an_outage_are_not_refetched_per_request(
    introspector: JWTIntrospector, idp: FakeIssuer, clock: FakeClock
) -> None:
    await introspector.introspect(mint())
    idp.down = True
    clock.now += 300 + 3600 + 1  # past the TTL and max_stale
    for _ in range(50):
        with pytest.raises(BackendUnavailableError):
            await introspector.introspect(mint())
    assert introspector.key_fetches(ISSUER) == 2


async def test_stale_keys_serve_while_one_request_refreshes(
    idp: FakeIssuer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the key set's TTL, one request refreshes it; the others do not wait for a
    slow or failing server while the last good keys are usable, and a failed refresh is
    logged once, not once per request."""
    gate = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks" and idp.jwks_fetches >= 1:
            idp.requests.append(request.url.path)
            await gate.wait()
            raise httpx.ConnectError("connection refused", request=request)
        return idp.handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=client, clock=clock
        )
        await introspector.introspect(mint())
        clock.now += 301  # past the TTL, within max_stale
        async with anyio.create_task_group() as tg:
            tg.start_soon(introspector.introspect, mint())  # refreshes, and waits
            await anyio.sleep(0.01)
            with anyio.fail_after(2):
                for _ in range(50):
                    assert (await introspector.introspect(mint())).active
            gate.set()
        for _ in range(50):  # the refresh failed: backing off, stale keys, no new log line
            assert (await introspector.introspect(mint())).active
    warnings = [r for r in caplog.records if "JWKS refresh failed" in r.getMessage()]
    assert len(warnings) == introspector.key_fetches(ISSUER) - 1 == 1


async def test_a_slow_key_set_is_cut_off_by_the_deadline() -> None:
    """A server that sends one byte at a time cannot hold a request past `deadline`."""

    async def trickle() -> AsyncIterator[bytes]:
        while True:
            yield b" "
            await anyio.sleep(0.05)

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks":
            return httpx.Response(200, content=trickle())
        await anyio.sleep(60)  # never answers
        raise AssertionError

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        for options in ({"jwks_uri": f"{ISSUER}/jwks"}, {}):  # trickling JWKS, silent discovery
            introspector = JWTIntrospector.from_issuer(
                ISSUER, audience=AUDIENCE, http_client=client, deadline=0.3, **options
            )
            started = anyio.current_time()
            with pytest.raises(BackendUnavailableError, match=r"no answer within 0\.3 s"):
                await introspector.introspect(mint())
            assert anyio.current_time() - started < 3


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "https://other.example"}, "wrong audience"),
        ({"aud": None}, "missing claim"),
        ({"iss": "https://idp.example/"}, "wrong issuer"),  # exact match: no trailing slash
        ({"exp": 1}, "expired"),
        ({"nbf": 4_000_000_000}, "not yet valid"),
        ({"iat": 4_000_000_000}, "not yet valid"),
        ({"sub": None}, "missing claim"),
        ({"exp": None}, "missing claim"),
    ],
)
async def test_claim_checks(
    introspector: JWTIntrospector, overrides: dict[str, Any], reason: str
) -> None:
    """RFC 9068 §4: iss exact, aud contains ours, exp in the future; nbf and iat checked too."""
    assert await refused(introspector, mint(**overrides)) == reason


async def test_audience_list_and_several_expected_audiences(idp: FakeIssuer) -> None:
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=["https://a.example", AUDIENCE], http_client=client
        )
        info = await introspector.introspect(mint(aud=["https://x.example", AUDIENCE]))
    assert info.audience == ("https://x.example", AUDIENCE)


async def test_leeway_allows_small_clock_skew(introspector: JWTIntrospector) -> None:
    import time

    assert (await introspector.introspect(mint(exp=int(time.time()) - 10))).active
    assert introspector.leeway == 30
    assert JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, leeway=timedelta(5)).leeway == (
        5 * 86_400  # PyJWT accepts a timedelta too
    )


@pytest.mark.parametrize("claim", ["exp", "iat"])
async def test_time_claims_must_be_numbers(introspector: JWTIntrospector, claim: str) -> None:
    """RFC 7519 §2 and §4.1.4: a NumericDate is a JSON number; PyJWT would take "123"."""
    import time

    overrides: dict[str, Any] = {claim: str(int(time.time()) + (300 if claim == "exp" else 0))}
    assert await refused(introspector, mint(**overrides)) == "malformed time claim"


async def test_deeply_nested_header_is_an_invalid_token(idp: FakeIssuer, clock: FakeClock) -> None:
    """RFC 7515 §4: the JOSE header is a JSON object; nesting too deep to parse is refused
    as malformed (401), not an error (503)."""
    # Deeper than any interpreter's JSON parser goes (Python 3.13 parses 2500 levels),
    # so the size limit is raised to let such a token reach the parser.
    header = b'{"alg":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    token = f"{b64(header)}.e30.c2ln"
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=client, clock=clock, max_token_size=10**6
        )
        assert await refused(introspector, token) == "malformed header"
    assert idp.requests == []


@pytest.mark.parametrize("typ", ["JWT", None, "jwt"])
async def test_typ_must_be_at_jwt_by_default(
    introspector: JWTIntrospector, typ: str | None
) -> None:
    """RFC 9068 §4 step 1: typ at+jwt (or application/at+jwt), nothing else."""
    assert await refused(introspector, mint(typ=typ)) == "wrong typ"


async def test_typ_media_type_forms(introspector: JWTIntrospector) -> None:
    assert (await introspector.introspect(mint(typ="application/at+jwt"))).active
    assert (await introspector.introspect(mint(typ="AT+JWT"))).active


async def test_typ_relaxation_per_issuer(idp: FakeIssuer) -> None:
    """accept_jwt_typ admits JWT or no typ, never another kind of JWT."""
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, accept_jwt_typ=True, http_client=client
        )
        assert (await introspector.introspect(mint(typ="JWT"))).active
        assert (await introspector.introspect(mint(typ=None))).active
        for typ in ("dpop+jwt", "id_token+jwt", "logout+jwt"):
            assert await refused(introspector, mint(typ=typ)) == "wrong typ"


async def test_required_claims_are_configurable(idp: FakeIssuer) -> None:
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER,
            audience=AUDIENCE,
            required_claims=["iss", "aud", "exp", "client_id"],
            http_client=client,
        )
        assert (await introspector.introspect(mint(sub=None))).active
        assert await refused(introspector, mint(client_id=None)) == "missing claim"


async def test_scope_claims(idp: FakeIssuer) -> None:
    """Scopes from scope, scp (string or list) and configured claim paths."""
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER,
            audience=AUDIENCE,
            scope_claims=["scope", "scp", "roles", "realm_access.roles"],
            http_client=client,
        )
        info = await introspector.introspect(
            mint(scope="a b", scp=["c"], roles=["d", 5, "has space"], realm_access={"roles": ["e"]})
        )
    assert info.scopes == {"a", "b", "c", "d", "e"}


# --- keys ---------------------------------------------------------------------


async def test_unknown_kid_triggers_one_refetch_then_finds_rotated_key(
    introspector: JWTIntrospector, idp: FakeIssuer, clock: FakeClock
) -> None:
    await introspector.introspect(mint())
    idp.keys.append(public_jwk(RSA_KEY_2, "rsa-2"))
    clock.now += 31  # past the refresh cooldown
    assert (await introspector.introspect(mint(RSA_KEY_2, kid="rsa-2"))).active
    assert idp.jwks_fetches == 2


async def test_rotation_right_after_the_first_fetch_is_seen(
    introspector: JWTIntrospector, idp: FakeIssuer
) -> None:
    """The cooldown counts from refetches for unknown kids, not from the first fetch."""
    await introspector.introspect(mint())
    idp.keys.append(public_jwk(RSA_KEY_2, "rsa-2"))
    assert (await introspector.introspect(mint(RSA_KEY_2, kid="rsa-2"))).active
    assert idp.jwks_fetches == 2


async def test_unknown_kid_is_not_remembered_past_the_cooldown(
    idp: FakeIssuer, clock: FakeClock
) -> None:
    """A token refused for its kid is checked again once a refetch could find the key."""
    from apiguard import CacheOptions
    from apiguard.tokens import TokenVerifier

    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=client, clock=clock
        )
        verifier = TokenVerifier(introspector, cache=CacheOptions(negative_ttl=300), clock=clock)
        await verifier.verify(mint().encode())
        early = mint(RSA_KEY_2, kid="rsa-2")
        with pytest.raises(InvalidToken):
            await verifier.verify(early.encode())  # refetched: not published yet
        idp.keys.append(public_jwk(RSA_KEY_2, "rsa-2"))
        clock.now += 10
        with pytest.raises(InvalidToken):
            await verifier.verify(early.encode())  # within the cooldown
        clock.now += 21  # the cooldown is over: a refetch may find it now
        principal, _ = await verifier.verify(early.encode())
        assert principal.client_id == "client-123"
        assert idp.jwks_fetches == 3


async def test_forged_kid_flood_is_rate_limited(
    introspector: JWTIntrospector, idp: FakeIssuer, clock: FakeClock
) -> None:
    """Unknown kids cause at most one fetch per cooldown, however many arrive at once."""
    await introspector.introspect(mint())
    clock.now += 31
    results: list[str] = []

    async def attack(i: int) -> None:
        results.append(await refused(introspector, mint(kid=f"forged-{i}")))

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(attack, i)
    assert results == ["no key for kid and alg"] * 200
    assert idp.jwks_fetches == 2
    for i in range(50):  # still within the cooldown: no fetch at all
        await refused(introspector, mint(kid=f"again-{i}"))
    assert idp.jwks_fetches == 2


async def test_dropped_key_is_refused_after_refresh(
    introspector: JWTIntrospector, idp: FakeIssuer, clock: FakeClock
) -> None:
    await introspector.introspect(mint())
    idp.keys = [public_jwk(RSA_KEY_2, "rsa-2")]
    clock.now += 301  # the key set's TTL
    assert await refused(introspector, mint()) == "no key for kid and alg"


async def test_last_good_keys_are_kept_for_a_bounded_time(
    introspector: JWTIntrospector, idp: FakeIssuer, clock: FakeClock
) -> None:
    await introspector.introspect(mint())
    idp.down = True
    clock.now += 301  # expired, but within max_stale
    assert (await introspector.introspect(mint())).active
    clock.now += 3600  # beyond max_stale
    with pytest.raises(BackendUnavailableError):
        await introspector.introspect(mint())


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        ("max-age=600", 600),
        ("max-age=5", 60),
        ("max-age=999999", 86_400),
        ("no-store", 60),  # RFC 9111 §5.2.2.5: as short as allowed
        ("max-age=600, no-cache", 60),  # RFC 9111 §5.2.2.4
        ("Max-Age = 600", 600),
    ],
)
async def test_cache_control_max_age_within_bounds(
    idp: FakeIssuer, clock: FakeClock, header: str, ttl: int
) -> None:
    idp.cache_control = f"public, {header}"
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=client, clock=clock
        )
        await introspector.introspect(mint())
        clock.now += ttl - 1
        await introspector.introspect(mint())
        assert idp.jwks_fetches == 1
        clock.now += 2
        await introspector.introspect(mint())
        assert idp.jwks_fetches == 2


async def test_token_without_kid_needs_exactly_one_fitting_key(idp: FakeIssuer) -> None:
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        assert (await introspector.introspect(mint(kid=None))).active  # one RSA key
        idp.keys.append(public_jwk(RSA_KEY_2, "rsa-2"))
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        assert await refused(introspector, mint(kid=None)) == "no key for kid and alg"


async def test_keys_not_for_signing_or_with_private_parts_are_ignored(idp: FakeIssuer) -> None:
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY))
    idp.keys = [{**public_jwk(RSA_KEY, "rsa-1"), "use": "enc"}, {**private, "kid": "priv"}]
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        assert await refused(introspector, mint()) == "no key for kid and alg"
        assert await refused(introspector, mint(kid="priv")) == "no key for kid and alg"


async def test_eddsa(idp: FakeIssuer) -> None:
    idp.keys = [public_jwk(ED_KEY, "ed-1")]
    async with idp.client() as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        assert (await introspector.introspect(mint(ED_KEY, "EdDSA", "ed-1"))).active


async def test_several_issuers_each_with_their_own_keys() -> None:
    """RFC 8725 §3.8: keys belong to their issuer; one issuer's key never verifies another's token."""
    first = FakeIssuer()
    second = FakeIssuer(issuer="https://second.example", keys=[public_jwk(RSA_KEY_2, "rsa-1")])

    def route(request: Any) -> Any:
        return (first if request.url.host == "idp.example" else second).handler(request)

    import httpx

    async with httpx.AsyncClient(transport=httpx.MockTransport(route)) as client:
        introspector = JWTIntrospector(
            TrustedIssuer(ISSUER, AUDIENCE),
            TrustedIssuer("https://second.example", AUDIENCE),
            http_client=client,
        )
        assert (await introspector.introspect(mint())).issuer == ISSUER
        assert (await introspector.introspect(mint(RSA_KEY_2, iss="https://second.example"))).active
        # The second issuer's kid "rsa-1" is a different key: signature fails.
        assert await refused(introspector, mint(iss="https://second.example")) == "bad signature"
        assert await refused(introspector, mint(iss="https://third.example")) == "untrusted issuer"


# --- attacks (RFC 8725) -------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


async def test_alg_none_is_refused(introspector: JWTIntrospector) -> None:
    """RFC 8725 §3.1 / RFC 9068 §2.1: alg none is never accepted."""
    from .token_support import claims

    unsigned = forge({"alg": "none", "typ": "at+jwt", "kid": "rsa-1"}, claims())
    assert await refused(introspector, unsigned) == "not a compact JWS"  # empty signature
    signed = forge({"alg": "none", "typ": "at+jwt", "kid": "rsa-1"}, claims(), b"sig")
    assert await refused(introspector, signed) == "algorithm not allowed"
    for alg in ("None", "NONE", "nOnE"):
        token = forge({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}, claims(), b"sig")
        assert await refused(introspector, token) == "algorithm not allowed"


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    introspector: JWTIntrospector,
) -> None:
    """RFC 8725 §3.1: each key is bound to its algorithm; no RS/HS confusion."""
    from .token_support import claims

    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
    unsigned = forge(header, claims()).rsplit(".", 1)[0]
    signature = hmac.new(pem, unsigned.encode(), hashlib.sha256).digest()
    assert await refused(introspector, f"{unsigned}.{b64(signature)}") == "algorithm not allowed"


async def test_rsa_key_cannot_verify_es256_and_vice_versa(introspector: JWTIntrospector) -> None:
    assert await refused(introspector, mint(EC_KEY, "ES256", "rsa-1")) == "no key for kid and alg"
    assert await refused(introspector, mint(RSA_KEY, "RS256", "ec-1")) == "no key for kid and alg"


async def test_embedded_key_headers_are_ignored(introspector: JWTIntrospector) -> None:
    """RFC 8725 §3.10: jku, x5u and jwk never supply keys."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    for header in (
        {"jwk": public_jwk(attacker, "ec-1")},
        {"jku": "https://evil.example/jwks"},
        {"x5u": "https://evil.example/cert.pem"},
    ):
        token = mint(attacker, "ES256", "ec-1", headers=header)
        assert await refused(introspector, token) == "bad signature"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("a" * 9000, "token too large"),
        ('{"payload":"x","signatures":[]}', "not a compact JWS"),
        ("a.b.c.d.e", "not a compact JWS"),  # JWE compact form
        ("not a token", "not a compact JWS"),
        ("é.é.é", "not a compact JWS"),
        ("aaaa.bbbb.cccc", "malformed header"),
        (b64(b"[1]") + ".e30.c2ln", "malformed header"),
    ],
)
async def test_garbage_is_refused_without_work(
    introspector: JWTIntrospector, idp: FakeIssuer, token: str, reason: str
) -> None:
    assert await refused(introspector, token) == reason
    assert idp.requests == []


async def test_tampered_payload_fails_signature(introspector: JWTIntrospector) -> None:
    header, payload, signature = mint().split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "==")) | {"scope": "admin"}
    assert (
        await refused(introspector, f"{header}.{b64(json.dumps(forged).encode())}.{signature}")
        == "bad signature"
    )


@pytest.mark.parametrize(
    "options",
    [
        {"audience": []},
        {"algorithms": ["HS256"]},
        {"algorithms": ["RS256", "none"]},
        {"algorithms": []},
        {"jwks_uri": "http://idp.example/jwks"},
    ],
)
def test_bad_configuration(options: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"audience": AUDIENCE} | options
    with pytest.raises(ConfigurationError):
        TrustedIssuer(ISSUER, **kwargs)


def test_issuer_must_be_https_except_loopback() -> None:
    with pytest.raises(ConfigurationError):
        TrustedIssuer("http://idp.example", AUDIENCE)
    assert TrustedIssuer("http://127.0.0.1:3000", AUDIENCE).issuer == "http://127.0.0.1:3000"
    with pytest.raises(ConfigurationError):
        JWTIntrospector()
    with pytest.raises(ConfigurationError):
        JWTIntrospector(TrustedIssuer(ISSUER, AUDIENCE), TrustedIssuer(ISSUER, AUDIENCE))


async def test_owned_client_is_closed() -> None:
    introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE)
    await introspector.aclose()
    assert introspector._client.is_closed
    assert ISSUER in repr(introspector)
