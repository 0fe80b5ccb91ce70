"""Every bound on the work and memory attacker input can cause, at and beyond it.

One row per bound, named as in docs/robustness.md ("DoS bounds"): `at` runs an input
exactly at the bound and `beyond` one step past it; each returns what happened, in
a word, and the test compares both with what the docs promise.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from apiguard import BackendUnavailableError, InvalidCredentials, InvalidToken
from apiguard._backoff import Backoff
from apiguard._cache import TTLCache
from apiguard.keys.format import MAX_KEY_LENGTH, MAX_PREFIX_LENGTH, generate_key, parse_key
from apiguard.principal import MAX_SCOPE_SETS
from apiguard.tokens import JWTIntrospector, RemoteIntrospector, TokenInfo
from apiguard.tokens._http import MAX_RESPONSE_BYTES
from apiguard.tokens.discovery import discover
from apiguard.tokens.info import MAX_SCOPES, scopes_from_claims
from apiguard.tokens.jwks import MAX_JSON_DEPTH, MAX_KEYS, MAX_TOKEN_SIZE, _segment
from apiguard.tokens.verifier import MAX_PRESENTED_TOKEN, TokenVerifier

from .token_support import (
    AUDIENCE,
    EC_KEY,
    ISSUER,
    RSA_KEY,
    FakeIssuer,
    TableIntrospector,
    mint,
    public_jwk,
)

pytestmark = pytest.mark.anyio

Outcome = Callable[[], Awaitable[str]]


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Bound:
    name: str
    limit: int | float
    at: Outcome
    beyond: Outcome
    accepted: str = "accepted"
    refused: str = "refused"


async def _reason(call: Awaitable[object]) -> str:
    try:
        await call
    except (InvalidToken, InvalidCredentials) as exc:
        return exc.reason
    except BackendUnavailableError:
        return "503"
    return "accepted"


# --- credentials -------------------------------------------------------------------


def _key_of_length(length: int) -> str:
    prefix = "k" * MAX_PREFIX_LENGTH
    key = generate_key(prefix).value
    return key if length == len(key) else key + "x" * (length - len(key))


async def api_key(length: int) -> str:
    try:
        parse_key(_key_of_length(length), prefixes=["k" * MAX_PREFIX_LENGTH])
    except InvalidCredentials:
        return "refused"
    return "accepted"


class Counting:
    """An introspector that counts the tokens that reach it."""

    leeway = 0.0

    def __init__(self) -> None:
        self.calls = 0

    async def introspect(self, token: str) -> Any:
        self.calls += 1
        raise InvalidToken(reason="unknown")

    async def aclose(self) -> None:
        pass


async def presented_token(length: int) -> str:
    introspector = Counting()
    reason = await _reason(TokenVerifier(introspector).verify(b"a" * length))
    return (
        "accepted"
        if introspector.calls == 1
        else ("refused" if reason == "token too large" else reason)
    )


async def jwt_size(length: int) -> str:
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        token = mint()
        header, payload, signature = token.split(".")
        padded = f"{header}.{payload}.{signature + 'A' * (length - len(token))}"
        reason = await _reason(introspector.introspect(padded))
    return "refused" if reason == "token too large" else "accepted"


def _introspection(handler: Callable[[httpx.Request], httpx.Response]) -> RemoteIntrospector:
    return RemoteIntrospector(
        "https://idp.example/introspect",
        client_id="api",
        client_secret="cs-7Hq2Lw9Zp4Xr",
        audience=AUDIENCE,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )


async def opaque_token(length: int) -> str:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json={"active": False})

    introspector = _introspection(handler)
    await _reason(introspector.introspect("t" * length))
    await introspector.aclose()
    return "accepted" if calls else "refused"


# --- JOSE headers ------------------------------------------------------------------


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def jose_depth(depth: int) -> str:
    header = '{"a":' + "[" * depth + "]" * depth + "}"
    try:
        _segment(f"{_b64(header.encode())}.e30.c2ln", 0, "malformed header")
    except InvalidToken:
        return "refused"
    return "accepted"


# --- responses from the authorization server ---------------------------------------


def _json_of_size(size: int, **fields: Any) -> bytes:
    base = json.dumps({**fields, "pad": ""}, separators=(",", ":")).encode()
    return base[:-2] + b"x" * (size - len(base)) + b'"}'


def _answer(body: bytes, compress: bool) -> httpx.Response:
    if compress:
        return httpx.Response(
            200, content=gzip.compress(body), headers={"content-encoding": "gzip"}
        )
    return httpx.Response(200, content=body, headers={"content-type": "application/json"})


async def discovery_size(size: int) -> str:
    body = _json_of_size(size, issuer=ISSUER, jwks_uri=f"{ISSUER}/jwks")
    transport = httpx.MockTransport(lambda request: _answer(body, compress=True))
    async with httpx.AsyncClient(transport=transport) as http:
        return "refused" if await _reason(discover(http, ISSUER)) == "503" else "accepted"


async def jwks_size(size: int) -> str:
    body = _json_of_size(size, keys=[public_jwk(RSA_KEY, "rsa-1")])

    def handler(request: httpx.Request) -> httpx.Response:
        return _answer(body, compress=True)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=http, jwks_uri=f"{ISSUER}/jwks"
        )
        reason = await _reason(introspector.introspect(mint()))
    return "refused" if reason == "503" else "accepted"


async def introspection_size(size: int) -> str:
    body = _json_of_size(size, active=False)
    introspector = _introspection(lambda request: _answer(body, compress=True))
    reason = await _reason(introspector.introspect("token"))
    await introspector.aclose()
    return "refused" if reason == "503" else "accepted"


async def jwks_keys(count: int) -> str:
    """The token's key is the `count`-th of the key set: used only within MAX_KEYS."""
    keys = [public_jwk(EC_KEY, f"other-{i}") for i in range(count - 1)]
    keys.append(public_jwk(RSA_KEY, "last"))
    idp = FakeIssuer(keys=keys)
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        reason = await _reason(introspector.introspect(mint(kid="last")))
    return "accepted" if reason == "accepted" else "refused"


# --- outages and caches ------------------------------------------------------------


async def kid_refetches(elapsed: float) -> str:
    """Two tokens with unknown kids, `elapsed` seconds apart: one refetch per cooldown."""
    clock = FakeClock()
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=http, refresh_cooldown=30, clock=clock
        )
        await _reason(introspector.introspect(mint(kid="rsa-1")))
        await _reason(introspector.introspect(mint(kid="forged-1")))
        fetches = idp.jwks_fetches
        clock.now += elapsed
        await _reason(introspector.introspect(mint(kid="forged-2")))
    return "refetched" if idp.jwks_fetches > fetches else "not refetched"


async def retry_delay(elapsed: float) -> str:
    """After one failure, the backend is asked again only after the delay (1 s, no jitter)."""
    clock = FakeClock()
    backoff = Backoff(base=1.0, cap=30.0, clock=clock, rng=lambda: 1.0)
    calls: list[int] = []

    async def fail() -> None:
        calls.append(1)
        raise BackendUnavailableError("down")

    await _reason(backoff.call(fail, deadline=5, what="test"))
    clock.now += elapsed
    await _reason(backoff.call(fail, deadline=5, what="test"))
    return "asked" if len(calls) == 2 else "not asked"


async def retry_cap(failures: int) -> str:
    """The delay doubles per failure in a row up to `cap` (30 s), never more."""
    clock = FakeClock()
    backoff = Backoff(base=1.0, cap=30.0, clock=clock, rng=lambda: 1.0)
    for _ in range(failures):
        clock.now += 1000
        backoff.failed(BackendUnavailableError("down"), backoff.start())
    clock.now += 30.0
    try:
        backoff.check()
    except BackendUnavailableError:
        return "still refused"
    return "asked"


async def cache_entries(count: int) -> str:
    cache: TTLCache[int, int] = TTLCache(100)
    for i in range(count):
        cache.set(i, i, deadline=10.0)
    return "all kept" if len(cache) == count else f"{len(cache)} kept"


async def scopes(count: int) -> str:
    found = scopes_from_claims({"scope": " ".join(f"s{i}" for i in range(count))}, ["scope"])
    return "all kept" if len(found) == count else f"{len(found)} kept"


async def scope_sets(count: int) -> str:
    """Tokens granting `count` different scope sets: one shared set object per scope set,
    kept for at most MAX_SCOPE_SETS sets."""
    introspector = TableIntrospector()
    for i in range(count):
        introspector.answers[f"t{i}"] = TokenInfo(active=True, scopes=frozenset({f"s{i}"}))
    verifier = TokenVerifier(introspector)
    for i in range(count):
        await verifier.verify(f"t{i}".encode())
    kept = len(verifier._scope_sets)
    return "all kept" if kept == count else f"{kept} kept"


async def deadline(seconds: float) -> str:
    """An outbound call that does not answer within its deadline is a 503."""
    backoff = Backoff()

    async def call() -> None:
        if seconds > 0:
            await anyio.sleep_forever()

    return await _reason(backoff.call(call, deadline=0.05, what="test"))


BOUNDS = [
    Bound("API key length", MAX_KEY_LENGTH, lambda: api_key(MAX_KEY_LENGTH), lambda: api_key(MAX_KEY_LENGTH + 1)),
    Bound("presented bearer token bytes", MAX_PRESENTED_TOKEN, lambda: presented_token(MAX_PRESENTED_TOKEN), lambda: presented_token(MAX_PRESENTED_TOKEN + 1)),
    Bound("JWT length", MAX_TOKEN_SIZE, lambda: jwt_size(MAX_TOKEN_SIZE), lambda: jwt_size(MAX_TOKEN_SIZE + 1)),
    Bound("opaque token length", MAX_TOKEN_SIZE, lambda: opaque_token(MAX_TOKEN_SIZE), lambda: opaque_token(MAX_TOKEN_SIZE + 1)),
    # The top object and 15 arrays in it: 16 levels; one more is refused.
    Bound("JOSE header depth", MAX_JSON_DEPTH, lambda: jose_depth(15), lambda: jose_depth(16)),
    Bound("discovery response bytes (decompressed)", MAX_RESPONSE_BYTES, lambda: discovery_size(MAX_RESPONSE_BYTES), lambda: discovery_size(MAX_RESPONSE_BYTES + 1)),
    Bound("JWKS response bytes (decompressed)", MAX_RESPONSE_BYTES, lambda: jwks_size(MAX_RESPONSE_BYTES), lambda: jwks_size(MAX_RESPONSE_BYTES + 1)),
    Bound("introspection response bytes (decompressed)", MAX_RESPONSE_BYTES, lambda: introspection_size(MAX_RESPONSE_BYTES), lambda: introspection_size(MAX_RESPONSE_BYTES + 1)),
    Bound("JWKS keys read", MAX_KEYS, lambda: jwks_keys(MAX_KEYS), lambda: jwks_keys(MAX_KEYS + 1)),
    Bound("refetch on unknown kid (cooldown s)", 30, lambda: kid_refetches(30), lambda: kid_refetches(29.9), "refetched", "not refetched"),
    Bound("retry after a failure (first delay s)", 1.0, lambda: retry_delay(1.0), lambda: retry_delay(0.99), "asked", "not asked"),
    Bound("retry delay cap (s)", 30, lambda: retry_cap(5), lambda: retry_cap(40), "asked", "asked"),
    Bound("cache entries (CacheOptions.max_size)", 100, lambda: cache_entries(100), lambda: cache_entries(101), "all kept", "100 kept"),
    Bound("scopes per token", MAX_SCOPES, lambda: scopes(MAX_SCOPES), lambda: scopes(MAX_SCOPES + 1), "all kept", f"{MAX_SCOPES} kept"),
    Bound("scope sets shared by cached grants", MAX_SCOPE_SETS, lambda: scope_sets(MAX_SCOPE_SETS), lambda: scope_sets(MAX_SCOPE_SETS + 1), "all kept", f"{MAX_SCOPE_SETS} kept"),
    Bound("per-call deadline", 0.05, lambda: deadline(0), lambda: deadline(1), "accepted", "503"),
]  # fmt: skip


@pytest.mark.parametrize("bound", BOUNDS, ids=[b.name for b in BOUNDS])
async def test_bound(bound: Bound) -> None:
    assert await bound.at() == bound.accepted
    assert await bound.beyond() == bound.refused
