"""Rate limits, quotas and failed-authentication limits through the middleware.

Header fields follow draft-ietf-httpapi-ratelimit-headers-10 (§3 RateLimit-Policy,
§4 RateLimit) and, as an option, the older RateLimit-Limit/-Remaining/-Reset of
draft-06 (§3-§5); 429 and Retry-After are RFC 6585 §4 and RFC 9110 §10.2.3.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from apiguard import APIKeyMiddleware, ConfigurationError, Policy
from apiguard.keys import IssuedKey, KeyHasher, KeyManager, MemoryKeyStore
from apiguard.keys.record import KeyRecord
from apiguard.ratelimit import (
    FailedAuthLimit,
    HeaderStyle,
    LimitStorage,
    Quotas,
    RateLimits,
    RouteLimit,
    Strategy,
    parse_limits,
    parse_quota,
)
from apiguard.types import ASGIApp
from tests.servers import RedisServer

from .conftest import PEPPER, MakeClient

# Window boundaries never depend on the wall clock (conftest.FROZEN_NOW).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("frozen_limits_clock")]

LIMIT_BODY = {"error": "rate_limited", "error_description": "Too many requests; retry later."}


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello", headers={"x-app": "1"})


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hi")
    await websocket.close()


def guarded(store: Any, *policies: Policy, **options: Any) -> ASGIApp:
    app = Starlette(
        routes=[
            Route("/", hello),
            Route("/search", hello, methods=["GET", "POST"]),
            WebSocketRoute("/ws", ws_endpoint),
        ]
    )
    return APIKeyMiddleware(app, store=store, pepper=PEPPER, policies=list(policies), **options)


class CountingStore(MemoryKeyStore):
    """A memory store that counts its lookups."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get(self, key_id: str) -> KeyRecord | None:
        self.lookups += 1
        return await super().get(key_id)


@pytest.fixture
def key_store() -> CountingStore:
    return CountingStore()


@pytest.fixture
async def issued(key_store: CountingStore, hasher: KeyHasher) -> IssuedKey:
    return await KeyManager(key_store, hasher).create("alice")


def fields(response: httpx.Response, name: str) -> dict[str, dict[str, str]]:
    """A RateLimit(-Policy) field as {item: {parameter: value}}."""
    parsed: dict[str, dict[str, str]] = {}
    for member in response.headers[name].split(","):
        item, *params = member.strip().split(";")
        parsed[item.strip('"')] = dict(p.split("=", 1) for p in params)
    return parsed


# --- limits per caller ------------------------------------------------------------


async def test_over_the_limit_is_429_with_retry_after_and_the_usual_body(
    key_store: CountingStore, issued: IssuedKey, make_client: MakeClient
) -> None:
    """The fourth request in a minute of "3/minute" is refused: 429 (RFC 6585 §4) with
    Retry-After in seconds (RFC 9110 §10.2.3), no challenge, the refusal JSON body."""
    limits = RateLimits("3/minute")
    async with make_client(guarded(key_store, limits)) as client:
        answers = [await client.get("/", headers={"X-API-Key": issued.key}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.json() == LIMIT_BODY
    assert refused.headers["content-type"] == "application/json"
    # limits' memory windows are aligned to the clock: 30 s of this minute are left.
    assert refused.headers["retry-after"] == "30"
    assert "www-authenticate" not in refused.headers
    assert refused.headers["cache-control"] == "no-store"
    # draft-10 §4.1.1: r is what is left; none at the refusal.
    assert fields(refused, "ratelimit")["3/minute"]["r"] == "0"
    # RFC 9110 / draft-10 §6: Retry-After is not earlier than the reset parameter.
    assert int(refused.headers["retry-after"]) >= int(fields(refused, "ratelimit")["3/minute"]["t"])


async def test_allowed_responses_carry_the_draft_fields(
    key_store: CountingStore, issued: IssuedKey, make_client: MakeClient
) -> None:
    """draft-10 §3.1: RateLimit-Policy has q (quota) and w (window, seconds) per limit;
    §4.1: RateLimit has r (remaining) and t (seconds to reset). The app's own headers stay."""
    limits = RateLimits("3/minute; 100/day")
    async with make_client(guarded(key_store, limits)) as client:
        first = await client.get("/", headers={"X-API-Key": issued.key})
        second = await client.get("/", headers={"X-API-Key": issued.key})
    assert first.status_code == 200
    assert first.text == "hello"
    assert first.headers["x-app"] == "1"
    assert fields(first, "ratelimit-policy") == {
        "3/minute": {"q": "3", "w": "60"},
        "100/day": {"q": "100", "w": "86400"},
    }
    now = fields(first, "ratelimit")
    assert now["3/minute"]["r"] == "2"
    assert now["100/day"]["r"] == "99"
    assert now["3/minute"]["t"] == "30"  # to the end of this minute's window
    assert now["100/day"]["t"] == str(86400 - 28830)  # and of this day's
    assert fields(second, "ratelimit")["3/minute"]["r"] == "1"
    assert "ratelimit-limit" not in first.headers


async def test_legacy_fields_name_the_tightest_limit(
    key_store: CountingStore, issued: IssuedKey, make_client: MakeClient
) -> None:
    """draft-06 §3-§5: one RateLimit-Limit/-Remaining/-Reset, for the limit with fewest left."""
    limits = RateLimits("3/minute; 100/day", headers="legacy")
    async with make_client(guarded(key_store, limits)) as client:
        answer = await client.get("/", headers={"X-API-Key": issued.key})
    assert answer.headers["ratelimit-limit"] == "3"
    assert answer.headers["ratelimit-remaining"] == "2"
    assert answer.headers["ratelimit-reset"] == "30"
    assert "ratelimit" not in answer.headers
    both = RateLimits("3/minute", headers="both")
    async with make_client(guarded(key_store, both)) as client:
        answer = await client.get("/", headers={"X-API-Key": issued.key})
    assert {"ratelimit", "ratelimit-policy", "ratelimit-limit"} <= set(answer.headers)


async def test_fields_on_refusals_only_when_switched_off_for_success(
    key_store: CountingStore, issued: IssuedKey, make_client: MakeClient
) -> None:
    """`headers_on_success=False`: allowed responses are untouched, refusals still say why."""
    limits = RateLimits("1/minute", headers_on_success=False)
    async with make_client(guarded(key_store, limits)) as client:
        allowed = await client.get("/", headers={"X-API-Key": issued.key})
        refused = await client.get("/", headers={"X-API-Key": issued.key})
    assert "ratelimit" not in allowed.headers
    assert refused.status_code == 429
    assert fields(refused, "ratelimit-policy") == {"1/minute": {"q": "1", "w": "60"}}


async def test_each_key_has_its_own_counter_and_may_have_its_own_limit(
    key_store: CountingStore, hasher: KeyHasher, make_client: MakeClient
) -> None:
    """A key's `rate_limit` replaces the default; another key's use does not count."""
    manager = KeyManager(key_store, hasher)
    small = await manager.create("small", rate_limit="1/minute")
    large = await manager.create("large")
    async with make_client(guarded(key_store, RateLimits("2/minute"))) as client:
        small_answers = [
            (await client.get("/", headers={"X-API-Key": small.key})) for _ in range(2)
        ]
        large_answers = [
            (await client.get("/", headers={"X-API-Key": large.key})) for _ in range(3)
        ]
    assert [a.status_code for a in small_answers] == [200, 429]
    assert [a.status_code for a in large_answers] == [200, 200, 429]
    ignoring = RateLimits("2/minute", per_key=False)
    async with make_client(guarded(key_store, ignoring)) as client:
        answers = [(await client.get("/", headers={"X-API-Key": small.key})) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]


async def test_route_limits_match_like_scope_rules(
    key_store: CountingStore, issued: IssuedKey, make_client: MakeClient
) -> None:
    """A route limit applies to its path and methods only, on top of the caller's own."""
    limits = RateLimits("100/minute", routes=[RouteLimit("/search", "1/minute", methods=["GET"])])
    key = {"X-API-Key": issued.key}
    async with make_client(guarded(key_store, limits)) as client:
        first = await client.get("/search", headers=key)
        second = await client.get("/search", headers=key)
        post = await client.post("/search", headers=key)
        root = await client.get("/", headers=key)
    assert [first.status_code, second.status_code, post.status_code, root.status_code] == [
        200,
        429,
        200,
        200,
    ]
    assert set(fields(first, "ratelimit")) == {"100/minute", "/search 1/minute"}
    assert fields(second, "ratelimit")["/search 1/minute"]["r"] == "0"
    assert set(fields(root, "ratelimit")) == {"100/minute"}
    # The refused search did not count against the caller's own limit: the first
    # search, the POST and this request did.
    assert fields(root, "ratelimit")["100/minute"]["r"] == "97"


async def test_a_caller_without_any_limit_gets_no_fields(
    key_store: CountingStore, issued: IssuedKey, make_client: MakeClient
) -> None:
    """No default and no key limit: nothing is counted or added."""
    async with make_client(guarded(key_store, RateLimits())) as client:
        answer = await client.get("/", headers={"X-API-Key": issued.key})
    assert answer.status_code == 200
    assert "ratelimit" not in answer.headers


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"default": "lots"}, "not a rate limit"),
        ({"default": "0/minute"}, "amounts are positive"),
        ({"strategy": "leaky-bucket"}, "unknown strategy"),
        ({"headers": "all"}, "unknown header style"),
        ({"storage": "mongodb://x"}, "unknown limit storage"),
    ],
)
def test_bad_options_are_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RateLimits(**kwargs)


def test_limit_notation() -> None:
    """The `limits` notation, several limits split by ';'."""
    assert [str(item) for item in parse_limits("100/minute; 5000 per day")] == [
        "100 per 1 minute",
        "5000 per 1 day",
    ]


def test_websocket_handshake_over_the_limit_is_refused_before_accept(
    hasher: KeyHasher,
) -> None:
    """With the denial-response extension the handshake gets the 429 itself."""
    store = MemoryKeyStore()
    issued = anyio.run(lambda: KeyManager(store, hasher).create("ws"))
    app = guarded(store, RateLimits("1/minute"))
    with TestClient(app) as client:
        with client.websocket_connect("/ws", headers={"X-API-Key": issued.key}) as ws:
            assert ws.receive_text() == "hi"
        with (
            pytest.raises(WebSocketDenialResponse) as info,
            client.websocket_connect("/ws", headers={"X-API-Key": issued.key}),
        ):
            pass  # pragma: no cover - refused
    assert info.value.status_code == 429
    assert int(info.value.headers["retry-after"]) >= 1


# --- Redis: shared between workers, fail closed ----------------------------------------


@pytest.mark.redis
async def test_redis_counters_are_shared_between_middleware_instances(
    key_store: CountingStore, issued: IssuedKey, make_client: MakeClient, redis_url: str
) -> None:
    """Two apps (as two workers) on one Redis share one limit."""
    first = RateLimits("3/minute", storage=redis_url)
    second = RateLimits("3/minute", storage=redis_url)
    try:
        async with (
            make_client(guarded(key_store, first)) as one,
            make_client(guarded(key_store, second)) as two,
        ):
            codes = [
                (await client.get("/", headers={"X-API-Key": issued.key})).status_code
                for client in (one, two, one, two)
            ]
    finally:
        await first.aclose()
        await second.aclose()
    assert codes == [200, 200, 200, 429]


@pytest.mark.redis
async def test_redis_down_is_503_with_retry_after(
    key_store: CountingStore,
    issued: IssuedKey,
    make_client: MakeClient,
    make_redis_server: Callable[[], RedisServer],
) -> None:
    """Fail closed: limits that cannot be counted are a 503, never a pass."""
    server = make_redis_server()
    limits = RateLimits("3/minute", storage=LimitStorage(server.url(), timeout=1.0))
    try:
        async with make_client(guarded(key_store, limits, retry_after=7)) as client:
            assert (await client.get("/", headers={"X-API-Key": issued.key})).status_code == 200
            server.stop()
            answer = await client.get("/", headers={"X-API-Key": issued.key})
    finally:
        await limits.storage.aclose()
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "7"
    assert answer.json()["error"] == "temporarily_unavailable"


# --- quotas ------------------------------------------------------------------------


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_quota_rolls_over_at_the_calendar_month(
    backend: str,
    key_store: CountingStore,
    hasher: KeyHasher,
    make_client: MakeClient,
    request: pytest.FixtureRequest,
) -> None:
    """A month's quota ends at midnight UTC on the 1st: Retry-After counts down to it,
    and the next month starts from zero."""
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    issued = await KeyManager(key_store, hasher).create("plan", quota="2/month")
    # In the future: Redis expires the counters by its own clock.
    clock = Clock(at(2099, 1, 31, 23, 58, 20))
    quotas = Quotas(storage=url, clock=clock)
    key = {"X-API-Key": issued.key}
    try:
        async with make_client(guarded(key_store, quotas)) as client:
            january = [await client.get("/", headers=key) for _ in range(3)]
            used = await quotas.usage(issued.record.key_id, "2/month")
            clock.now = at(2099, 2, 1).timestamp()
            february = await client.get("/", headers=key)
            later = await quotas.usage(issued.record.key_id, "2/month")
    finally:
        await quotas.aclose()
    assert [a.status_code for a in january] == [200, 200, 429]
    assert january[2].headers["retry-after"] == "100"  # to 2099-02-01T00:00:00Z
    assert january[2].json() == LIMIT_BODY
    assert fields(january[0], "ratelimit-policy") == {"quota": {"q": "2"}}
    assert fields(january[1], "ratelimit") == {"quota": {"r": "0", "t": "100"}}
    assert used is not None
    assert (used.used, used.remaining) == (2, 0)  # the refused request is not counted
    assert used.period_start == at(2099, 1, 1)
    assert used.resets_at == at(2099, 2, 1)
    assert february.status_code == 200
    assert later is not None
    assert (later.used, later.remaining, later.resets_at) == (1, 1, at(2099, 3, 1))


@pytest.mark.redis
async def test_quota_counters_in_redis_are_named_by_period_and_expire(redis_url: str) -> None:
    """One key per caller and month, expiring a day after the month ends."""
    import redis.asyncio as aioredis

    from apiguard.principal import Principal

    clock = Clock(at(2026, 12, 15))
    quotas = Quotas("5/month", storage=redis_url, clock=clock)
    principal = Principal(identity="KID", kind="api_key", key_id="KID")
    try:
        await quotas.check(principal, {"type": "http", "headers": []})
    finally:
        await quotas.aclose()
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.get("apiguard:quota:api_key:KID:2026-12") == b"1"
        expires = await client.expiretime("apiguard:quota:api_key:KID:2026-12")
    finally:
        await client.aclose()
    assert expires == at(2027, 1, 2).timestamp()


@pytest.mark.parametrize(
    ("text", "amount", "period"),
    [("100000/month", 100000, "month"), ("1000 per day", 1000, "day"), (" 5/DAY ", 5, "day")],
)
def test_quota_notation(text: str, amount: int, period: str) -> None:
    quota = parse_quota(text)
    assert (quota.amount, quota.period) == (amount, period)


@pytest.mark.parametrize("text", ["100/week", "0/month", "month", "-5/day"])
def test_bad_quotas_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="not a quota"):
        parse_quota(text)


def test_day_periods() -> None:
    quota = parse_quota("10/day")
    assert quota.bounds(at(2026, 12, 31, 13).timestamp()) == (at(2026, 12, 31), at(2027, 1, 1))
    assert quota.label(at(2026, 12, 31)) == "2026-12-31"
    assert parse_quota("1/month").bounds(at(2026, 12, 9).timestamp()) == (
        at(2026, 12, 1),
        at(2027, 1, 1),
    )


# --- failed authentication -------------------------------------------------------------


def client_at(app: ASGIApp, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 40000)),
        base_url="http://testserver",
    )


async def test_failed_authentication_is_limited_before_the_store_is_asked(
    key_store: CountingStore, issued: IssuedKey
) -> None:
    """After two bad keys from one address, the third request (even with a good key)
    is 429 without a store lookup; another address is unaffected (OWASP API2:2023)."""
    app = guarded(key_store, failed_auth_limit=FailedAuthLimit("2/minute"))
    bad = {"X-API-Key": issued.key[:-4] + "AAAA"}
    async with client_at(app, "203.0.113.7") as attacker, client_at(app, "198.51.100.1") as other:
        first = await attacker.get("/", headers=bad)
        second = await attacker.get("/", headers=bad)
        lookups = key_store.lookups
        third = await attacker.get("/", headers=bad)
        good = await attacker.get("/", headers={"X-API-Key": issued.key})
        assert key_store.lookups == lookups  # the limit came first
        elsewhere = await other.get("/", headers={"X-API-Key": issued.key})
        missing = await other.get("/")
        missing_again = await other.get("/")
        still = await other.get("/", headers={"X-API-Key": issued.key})
    assert [first.status_code, second.status_code] == [401, 401]
    assert [third.status_code, good.status_code] == [429, 429]
    assert third.json() == LIMIT_BODY
    assert int(third.headers["retry-after"]) >= 1
    assert elsewhere.status_code == 200
    # A request without credentials is no failed guess: never counted.
    assert [missing.status_code, missing_again.status_code, still.status_code] == [401, 401, 200]


async def test_failed_authentication_counts_the_forwarded_client_behind_a_trusted_proxy(
    key_store: CountingStore, issued: IssuedKey
) -> None:
    """Behind a trusted proxy, each forwarded client has its own count; a spoofed
    X-Forwarded-For from an untrusted peer does not escape its own."""
    from apiguard.proxies import TrustedProxies

    limit = FailedAuthLimit("1/minute", proxies=TrustedProxies(["10.0.0.0/8"]))
    app = guarded(key_store, failed_auth_limit=limit)
    bad = {"X-API-Key": issued.key[:-4] + "AAAA"}
    async with client_at(app, "10.1.2.3") as proxy, client_at(app, "203.0.113.9") as direct:
        one = await proxy.get("/", headers={**bad, "X-Forwarded-For": "198.51.100.1"})
        one_again = await proxy.get("/", headers={**bad, "X-Forwarded-For": "198.51.100.1"})
        two = await proxy.get("/", headers={**bad, "X-Forwarded-For": "198.51.100.2"})
        spoof = await direct.get("/", headers={**bad, "X-Forwarded-For": "192.0.2.1"})
        spoof_again = await direct.get("/", headers={**bad, "X-Forwarded-For": "192.0.2.2"})
    assert [one.status_code, one_again.status_code, two.status_code] == [401, 429, 401]
    assert [spoof.status_code, spoof_again.status_code] == [401, 429]


@pytest.fixture
async def redis_limit(redis_url: str) -> AsyncIterator[FailedAuthLimit]:
    limit = FailedAuthLimit("1/minute", storage=redis_url)
    yield limit
    await limit.aclose()


@pytest.mark.redis
async def test_failed_authentication_limit_in_redis(
    key_store: CountingStore, issued: IssuedKey, redis_limit: FailedAuthLimit
) -> None:
    """The failure count lives in Redis, so every worker sees it."""
    bad = {"X-API-Key": issued.key[:-4] + "AAAA"}
    other = FailedAuthLimit("1/minute", storage=redis_limit.storage)
    async with (
        client_at(guarded(key_store, failed_auth_limit=redis_limit), "203.0.113.7") as one,
        client_at(guarded(key_store, failed_auth_limit=other), "203.0.113.7") as two,
    ):
        assert (await one.get("/", headers=bad)).status_code == 401
        assert (await two.get("/", headers=bad)).status_code == 429
    await other.aclose()  # shares the storage: closes nothing


def test_retry_after_is_whole_seconds() -> None:
    from apiguard import RateLimitExceeded

    error = RateLimitExceeded(-3, (("ratelimit", '"x";r=0;t=0'),))
    assert error.retry_after == 0
    assert error.headers[0] == ("retry-after", "0")
    assert re.fullmatch(r"\d+", error.headers[0][1])


@pytest.mark.redis
@pytest.mark.parametrize("on_success", [True, False])
async def test_redis_costs_one_round_trip_per_request(
    key_store: CountingStore,
    hasher: KeyHasher,
    make_client: MakeClient,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    on_success: bool,
) -> None:
    """Warm, a request under a route limit, two limits of its key and a quota sends one
    command to Redis, one EVALSHA, whatever the fields; nothing else is on the path.
    Counted twice: on the client's connection and by the server (INFO commandstats)."""
    import redis.asyncio as aioredis
    from redis.asyncio.connection import AbstractConnection

    sends = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += 1
        await original(self, *args, **kwargs)

    issued = await KeyManager(key_store, hasher).create("plan", rate_limit="50/minute; 500/day")
    storage = LimitStorage(redis_url)
    quotas = Quotas("1000/month", storage=storage)
    limits = RateLimits(
        "5/minute",
        routes=[RouteLimit("/search", "40/minute")],
        storage=storage,
        headers_on_success=on_success,
        quotas=quotas,
    )
    admin = aioredis.Redis.from_url(redis_url)
    key = {"X-API-Key": issued.key}
    try:
        async with make_client(guarded(key_store, limits)) as client:
            await client.get("/search", headers=key)  # connects and loads the script
            await admin.config_resetstat()
            monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
            answers = [await client.get("/search", headers=key) for _ in range(5)]
            monkeypatch.setattr(AbstractConnection, "send_packed_command", original)
            warm_sends = sends
            stats = await admin.info("commandstats")
            # The script gone (a restart, SCRIPT FLUSH): loaded again, counted once.
            await admin.script_flush()
            monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
            sends = 0
            after_flush = await client.get("/search", headers=key)
    finally:
        await storage.aclose()
        await admin.aclose()
    assert all(a.status_code == 200 for a in answers)
    assert warm_sends == 5
    # The server saw 5 EVALSHAs; every other command it counted ran inside the script
    # (Redis counts those under their own names), but for the test's own admin commands.
    assert stats["cmdstat_evalsha"]["calls"] == 5
    admin_commands = {"config|resetstat", "info"}
    script_commands = {"get", "pttl", "exists", "incrby", "set", "rename", "expireat"}
    for name in stats:
        command = name.removeprefix("cmdstat_")
        if command != "evalsha":
            assert command in script_commands | admin_commands, command
    # After the flush: EVALSHA (NOSCRIPT), SCRIPT LOAD, EVALSHA.
    assert sends == 3
    assert after_flush.status_code == 200
    assert (await _quota_used(redis_url, issued.record.key_id)) == 7
    if on_success:  # 7 requests counted, the retried one once
        assert fields(after_flush, "ratelimit")["50/minute"]["r"] == "43"
        assert fields(after_flush, "ratelimit")["/search 40/minute"]["r"] == "33"
        assert fields(after_flush, "ratelimit")["quota"]["r"] == "993"


async def _quota_used(redis_url: str, key_id: str) -> int:
    quotas = Quotas("1000/month", storage=redis_url)
    try:
        usage = await quotas.usage(key_id)
    finally:
        await quotas.aclose()
    assert usage is not None
    return usage.used


def window_reader(
    storage: LimitStorage, strategy: Strategy = "sliding-window-counter"
) -> Callable[..., Any]:
    """`limits`' own strategy on the policy's storage: what `limits` makes of the
    counters apiguard leaves (the same keys, the same windows)."""
    from limits import strategies
    from limits.aio import strategies as aio_strategies

    name = {
        "sliding-window-counter": "SlidingWindowCounterRateLimiter",
        "moving-window": "MovingWindowRateLimiter",
        "fixed-window": "FixedWindowRateLimiter",
    }[strategy]

    async def remaining(limit: str, *identifiers: str) -> int:
        item = parse_limits(limit)[0]
        if storage.memory is not None:
            reader = getattr(strategies, name)(storage.memory)
            return int(reader.get_window_stats(item, *identifiers).remaining)
        async_reader = getattr(aio_strategies, name)(storage.limits)
        return int((await async_reader.get_window_stats(item, *identifiers)).remaining)

    return remaining


# In Redis only the sliding window counter counts all limits in one script.
ALL_OR_NOTHING = [
    ("memory", "sliding-window-counter"),
    ("memory", "moving-window"),
    ("memory", "fixed-window"),
    pytest.param("redis", "sliding-window-counter", marks=pytest.mark.redis),
]


@pytest.mark.parametrize(("backend", "strategy"), ALL_OR_NOTHING)
async def test_a_refusal_by_one_limit_uses_up_no_other(
    key_store: CountingStore,
    issued: IssuedKey,
    make_client: MakeClient,
    backend: str,
    strategy: Strategy,
    request: pytest.FixtureRequest,
) -> None:
    """A request is counted by all of its limits or by none: the caller's own limit
    refusing a search leaves the route's counter where it was, and the reverse; the
    counters are `limits`' own (its strategy reads what apiguard wrote)."""
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    limits = RateLimits(
        "2/minute; 100/hour",
        routes=[RouteLimit("/search", "5/minute")],
        storage=url,
        strategy=strategy,
    )
    remaining = window_reader(limits.storage, strategy)
    key = {"X-API-Key": issued.key}
    partition = f"api_key:{issued.record.key_id}"
    try:
        async with make_client(guarded(key_store, limits)) as client:
            codes = [(await client.get("/search", headers=key)).status_code for _ in range(4)]
            route_left = await remaining("5/minute", partition, "route0")
            hour_left = await remaining("100/hour", partition)
    finally:
        await limits.aclose()
    assert codes == [200, 200, 429, 429]
    assert route_left == 3  # 5 - the two allowed searches
    assert hour_left == 98  # the later limit, not refused, did not count the refusals


@pytest.mark.parametrize(("backend", "strategy"), ALL_OR_NOTHING)
async def test_quotas_counted_with_the_limits_all_or_nothing(
    key_store: CountingStore,
    issued: IssuedKey,
    hasher: KeyHasher,
    make_client: MakeClient,
    backend: str,
    strategy: Strategy,
    request: pytest.FixtureRequest,
) -> None:
    """`RateLimits(quotas=...)`: a request the quota refuses uses up no limit, and a
    request a limit refuses uses up no quota; both sets of fields are sent."""
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    storage = LimitStorage(url)
    noon = Clock(at(2026, 11, 30, 12))
    tight_quota = Quotas("2/day", storage=storage, clock=noon)
    limits = RateLimits("3/minute", storage=storage, quotas=tight_quota, strategy=strategy)
    remaining = window_reader(storage, strategy)
    key = {"X-API-Key": issued.key}
    partition = f"api_key:{issued.record.key_id}"
    try:
        async with make_client(guarded(key_store, limits)) as client:
            answers = [await client.get("/", headers=key) for _ in range(3)]
            minute_left = await remaining("3/minute", partition)
        # Now the limit is the tighter one: its refusal is not counted by the quota.
        bob = await KeyManager(key_store, hasher).create("bob")
        other = Quotas("10/day", storage=storage, clock=noon)
        strict = RateLimits("1/hour", storage=storage, quotas=other, strategy=strategy)
        async with make_client(guarded(key_store, strict)) as client:
            codes = [
                (await client.get("/", headers={"X-API-Key": bob.key})).status_code
                for _ in range(3)
            ]
        usage = await other.usage(bob.record.key_id)
    finally:
        await storage.aclose()
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert fields(answers[0], "ratelimit")["3/minute"]["r"] == "2"
    assert fields(answers[0], "ratelimit")["quota"]["r"] == "1"
    assert answers[2].json() == LIMIT_BODY
    assert "quota" in fields(answers[2], "ratelimit")
    assert minute_left == 1  # the quota's refusal did not count
    assert codes == [200, 429, 429]
    assert usage is not None
    assert usage.used == 1


@pytest.mark.redis
@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
async def test_quotas_with_the_other_strategies_in_redis(
    key_store: CountingStore,
    issued: IssuedKey,
    make_client: MakeClient,
    redis_url: str,
    strategy: Strategy,
) -> None:
    """Through `limits`' API a limit at a time, then the quota: its refusals are not
    counted, and a limit's refusal does not reach the quota."""
    storage = LimitStorage(redis_url)
    quotas = Quotas("2/day", storage=storage, clock=Clock(at(2026, 11, 30, 12)))
    limits = RateLimits("5/minute", storage=storage, quotas=quotas, strategy=strategy)
    strict = RateLimits(
        "1/minute", storage=storage, quotas=quotas, strategy=strategy, headers_on_success=False
    )
    try:
        async with make_client(guarded(key_store, limits)) as client:
            answers = [await client.get("/", headers={"X-API-Key": issued.key}) for _ in range(3)]
        async with make_client(guarded(key_store, strict)) as client:
            # The limit counts it (checked first), the quota refuses; then the limit.
            by_quota = await client.get("/", headers={"X-API-Key": issued.key})
            by_limit = await client.get("/", headers={"X-API-Key": issued.key})
        usage = await quotas.usage(issued.record.key_id)
    finally:
        await storage.aclose()
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert fields(answers[1], "ratelimit")["quota"]["r"] == "0"
    assert set(fields(answers[2], "ratelimit")) == {"quota"}
    assert (by_quota.status_code, by_limit.status_code) == (429, 429)
    assert set(fields(by_quota, "ratelimit")) == {"quota"}
    assert set(fields(by_limit, "ratelimit")) == {"1/minute"}
    assert usage is not None
    assert usage.used == 2


def test_quotas_counted_with_the_limits_share_their_storage() -> None:
    with pytest.raises(ConfigurationError, match="same LimitStorage"):
        RateLimits("1/minute", quotas=Quotas("1/day"))


# --- storage, outages, who is counted -------------------------------------------------


@pytest.mark.redis
async def test_quota_redis_down_is_503(
    key_store: CountingStore,
    hasher: KeyHasher,
    make_client: MakeClient,
    make_redis_server: Callable[[], RedisServer],
) -> None:
    """Quotas fail closed too."""
    server = make_redis_server()
    issued = await KeyManager(key_store, hasher).create("plan", quota="10/day")
    quotas = Quotas(storage=LimitStorage(server.url(), timeout=1.0))
    server.stop()
    try:
        async with make_client(guarded(key_store, quotas)) as client:
            answer = await client.get("/", headers={"X-API-Key": issued.key})
    finally:
        await quotas.storage.aclose()
    assert answer.status_code == 503
    assert "retry-after" in answer.headers


async def test_a_failure_that_cannot_be_counted_still_gets_its_401(
    key_store: CountingStore, issued: IssuedKey, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal goes out; the counting error is logged."""

    class Broken:
        async def check(self, scope: Any) -> None:
            return None

        async def failed(self, scope: Any) -> None:
            raise OSError("down")

    app = guarded(key_store, failed_auth_limit=Broken())
    async with client_at(app, "203.0.113.7") as client:
        answer = await client.get("/", headers={"X-API-Key": issued.key[:-4] + "AAAA"})
    assert answer.status_code == 401
    assert "could not count a failed authentication" in caplog.text


async def test_anonymous_callers_are_counted_by_address(
    key_store: CountingStore, make_client: MakeClient
) -> None:
    """In optional mode, requests without a key share their address's counter."""
    app = guarded(key_store, RateLimits("1/minute"), optional=True)
    async with client_at(app, "203.0.113.7") as one, client_at(app, "203.0.113.8") as two:
        codes = [(await c.get("/")).status_code for c in (one, one, two)]
    assert codes == [200, 429, 200]


async def test_cached_counter_keys_and_field_text_stay_bounded(
    key_store: CountingStore, hasher: KeyHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous callers choose their address, key records their limits: the keys and
    field text kept for them are bounded, and counting is the same once dropped."""
    import apiguard.ratelimit.policy as policy

    monkeypatch.setattr(policy, "_KEYS", 2)
    monkeypatch.setattr(policy, "_PLANS", 2)
    limits = RateLimits("1/minute")
    app = guarded(key_store, limits, optional=True)
    codes = []
    for address in ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.1"]:
        async with client_at(app, address) as client:
            codes.append((await client.get("/")).status_code)
    assert codes == [200, 200, 200, 429]
    for limit in ["2/minute", "3/minute", "4/minute"]:
        own = await KeyManager(key_store, hasher).create("own", rate_limit=limit)
        async with client_at(app, "203.0.113.9") as client:
            answer = await client.get("/", headers={"X-API-Key": own.key})
        assert set(fields(answer, "ratelimit-policy")) == {limit}
    assert len(limits._plans) <= 2
    assert all(len(plan.keys) <= 2 for plan in limits._plans.values())


def test_partition_keys() -> None:
    """Keys by key id, bearer tokens by client id (else subject), others by address."""
    from apiguard.principal import ANONYMOUS, Principal
    from apiguard.proxies import TrustedProxies
    from apiguard.ratelimit.policy import partition_key

    proxies = TrustedProxies()
    request = {"type": "http", "headers": [], "client": ("192.0.2.1", 1)}
    key = Principal(identity="K1", kind="api_key", key_id="K1")
    client = Principal(identity="sub", kind="bearer", client_id="app", subject="sub")
    user = Principal(identity="sub", kind="bearer", subject="sub")
    assert partition_key(key, request, proxies) == "api_key:K1"
    assert partition_key(client, request, proxies) == "bearer:app"
    assert partition_key(user, request, proxies) == "bearer:sub"
    assert partition_key(ANONYMOUS, request, proxies) == "address:192.0.2.1"


async def test_quotas_without_a_quota_do_nothing() -> None:
    from apiguard.principal import Principal

    quotas = Quotas()
    principal = Principal(identity="K1", kind="api_key", key_id="K1")
    assert await quotas.check(principal, {"type": "http", "headers": []}) is None
    assert await quotas.usage("K1") is None
    silent = Quotas("5/day", headers=False)
    assert await silent.check(principal, {"type": "http", "headers": []}) is None
    assert (await silent.usage("K1")).used == 1  # type: ignore[union-attr]
    await quotas.aclose()


def test_limit_storage_urls() -> None:
    """Unknown schemes and malformed Redis URLs are configuration errors; no password shows."""
    with pytest.raises(ConfigurationError, match="unknown limit storage"):
        LimitStorage("postgresql://u:secret@h/db")
    with pytest.raises(ConfigurationError) as info:
        LimitStorage("redis://:secret@host:port/0")
    assert "secret" not in str(info.value)
    assert repr(LimitStorage("redis://:secret@localhost:6379/0?push=off")) == (
        "LimitStorage('redis://:***@localhost:6379/0?push=off')"
    )


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
@pytest.mark.parametrize("strategy", ["sliding-window-counter", "moving-window", "fixed-window"])
async def test_every_strategy_limits_and_reports(
    strategy: Strategy,
    backend: str,
    key_store: CountingStore,
    issued: IssuedKey,
    make_client: MakeClient,
    request: pytest.FixtureRequest,
) -> None:
    """Each `limits` strategy, in memory and in Redis: the limit, then 429; r counts down."""
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    limits = RateLimits("2/minute", strategy=strategy, storage=url)
    try:
        async with make_client(guarded(key_store, limits)) as client:
            answers = [await client.get("/", headers={"X-API-Key": issued.key}) for _ in range(3)]
    finally:
        await limits.aclose()
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [fields(a, "ratelimit")["2/minute"]["r"] for a in answers] == ["1", "0", "0"]
    assert int(answers[2].headers["retry-after"]) >= 1


async def test_fields_are_added_to_the_response_start_only(
    key_store: CountingStore, issued: IssuedKey
) -> None:
    """`send` is wrapped for `http.response.start` only: the app's header list keeps its
    order and gets the fields appended; body messages pass as they were, chunk by chunk."""
    from apiguard.types import Message, Receive, Scope, Send

    chunks: list[Message] = [
        {"type": "http.response.body", "body": b"one", "more_body": True},
        {"type": "http.response.body", "body": b"two", "more_body": False},
    ]

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        for chunk in chunks:
            await send(chunk)

    app = APIKeyMiddleware(
        streaming, store=key_store, pepper=PEPPER, policies=[RateLimits("5/minute")]
    )
    sent: list[Message] = []

    async def receive() -> Message:
        raise AssertionError("the request body is never read")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"x-api-key", issued.key.encode())],
        "client": ("192.0.2.1", 1),
    }
    await app(scope, receive, send)
    assert sent[0]["headers"] == [
        (b"x-a", b"1"),
        (b"ratelimit-policy", b'"5/minute";q=5;w=60'),
        (b"ratelimit", b'"5/minute";r=4;t=30'),
    ]
    assert sent[1] is chunks[0]
    assert sent[2] is chunks[1]


@pytest.mark.parametrize("headers", ["draft", "legacy"])
@pytest.mark.parametrize("error", [RuntimeError("bug"), OSError("storage gone")])
async def test_an_error_while_counting_is_a_503_not_a_pass(
    key_store: CountingStore,
    issued: IssuedKey,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    headers: HeaderStyle,
) -> None:
    """A storage error or a bug, never swallowed: the middleware fails closed."""
    limits = RateLimits("5/minute", headers=headers)

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise error

    monkeypatch.setattr(limits.storage.memory, "get_sliding_window", broken)
    async with make_client(guarded(key_store, limits)) as client:
        answer = await client.get("/", headers={"X-API-Key": issued.key})
    assert answer.status_code == 503
    assert answer.json()["error"] == "temporarily_unavailable"


def test_storage_errors_are_told_from_other_errors() -> None:
    """Driver and timeout errors mean the storage is unavailable; a bug is not hidden."""
    from limits.errors import StorageError

    storage = LimitStorage()
    assert storage.unavailable(StorageError(ConnectionError("x"))) is not None
    assert storage.unavailable(TimeoutError()) is not None
    assert storage.unavailable(ValueError("bug")) is None
    with pytest.raises(ValueError, match="bug"), storage.errors():
        raise ValueError("bug")


async def test_fastapi_guard_per_route_applies_the_limits(
    key_store: CountingStore, issued: IssuedKey
) -> None:
    """`Guard` without the middleware refuses like it: 429 over a rate limit, and
    failed authentications limited per address before the store is asked."""
    from fastapi import Depends, FastAPI

    from apiguard import APIKeyAuth, Principal
    from apiguard.fastapi import Guard

    guard = Guard(
        APIKeyAuth(key_store, hasher=KeyHasher(PEPPER)),
        policies=[RateLimits("1/minute")],
        failed_auth_limit=FailedAuthLimit("1/minute"),
    )
    app = FastAPI()
    guard.install(app, middleware=False)

    @app.get("/items")
    async def items(caller: Principal = Depends(guard)) -> dict[str, str]:  # noqa: B008
        return {"caller": caller.identity}

    good = {"X-API-Key": issued.key}
    bad = {"X-API-Key": issued.key[:-4] + "AAAA"}
    async with client_at(app, "203.0.113.7") as client, client_at(app, "198.51.100.7") as other:
        allowed = await client.get("/items", headers=good)
        limited = await client.get("/items", headers=good)
        failed = await other.get("/items", headers=bad)
        lookups = key_store.lookups
        slowed = await other.get("/items", headers=bad)
    assert [allowed.status_code, limited.status_code] == [200, 429]
    assert limited.json() == LIMIT_BODY
    assert int(limited.headers["retry-after"]) >= 1
    assert [failed.status_code, slowed.status_code] == [401, 429]
    assert key_store.lookups == lookups


async def test_key_limits_are_checked_before_they_are_stored(hasher: KeyHasher) -> None:
    """A key cannot be given a limit no server could read; rotation keeps the limits."""
    manager = KeyManager(MemoryKeyStore(), hasher)
    with pytest.raises(ConfigurationError, match="not a rate limit"):
        await manager.create("x", rate_limit="fast")
    with pytest.raises(ConfigurationError, match="at most 255 characters"):
        await manager.create("x", quota="1" * 300 + "/day")
    issued = await manager.create("x", rate_limit="5/second", quota="10/day")
    with pytest.raises(ConfigurationError, match="not a quota"):
        await manager.update_limits(issued.record.key_id, rate_limit=None, quota="10/year")
    rotated = await manager.rotate(issued.record.key_id)
    assert (rotated.record.rate_limit, rotated.record.quota) == ("5/second", "10/day")
    assert str(parse_quota("10 per day")) == "10/day"


async def test_limits_apply_under_override_authentication(
    key_store: CountingStore, make_client: MakeClient
) -> None:
    """A test that overrides authentication still meets the limits, fields and all."""
    from apiguard.testing import override_authentication

    app = guarded(key_store, RateLimits("1/minute"))
    with override_authentication(app, key_id="K1"):
        async with make_client(app) as client:
            allowed = await client.get("/")
            refused = await client.get("/")
    assert allowed.status_code == 200
    assert fields(allowed, "ratelimit")["1/minute"]["r"] == "0"
    assert refused.status_code == 429


async def test_a_store_without_update_limits_says_so(hasher: KeyHasher, tmp_path: Any) -> None:
    """`update_limits` is optional for stores: without it, the manager says why it cannot."""
    from examples.custom_store import JSONFileKeyStore

    manager = KeyManager(JSONFileKeyStore(tmp_path / "keys.json"), hasher)
    issued = await manager.create("x", rate_limit="5/second")
    got = await manager.get(issued.record.key_id)
    assert got.rate_limit == "5/second"  # set at creation, stored with the record
    with pytest.raises(ConfigurationError, match="JSONFileKeyStore cannot change a key's limits"):
        await manager.update_limits(issued.record.key_id, rate_limit=None, quota=None)
