"""`RedisTokenCache` on a real redis-server: each `TokenVerifier` here stands for one
worker process, with its own local cache and its own Redis client."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

import apiguard.tokens
from apiguard import (
    BackendUnavailableError,
    BearerTokenMiddleware,
    CacheOptions,
    ConfigurationError,
    InvalidToken,
)
from apiguard.testing import FakeClock
from apiguard.tokens import RedisTokenCache, TokenInfo, TokenVerifier
from tests.servers import RedisServer

from .token_support import TableIntrospector, mint

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

TOKEN = "opaque-token-8f3a2c91"
SECRET = "s" * 32


def active(expires_in: timedelta = timedelta(hours=1), **claims: Any) -> TokenInfo:
    return TokenInfo(
        active=True,
        subject="user-7",
        client_id="svc",
        scopes=frozenset({"items:read", "items:write"}),
        audience=("https://api.example",),
        issuer="https://idp.example",
        expires_at=datetime.now(timezone.utc).replace(microsecond=0) + expires_in,
        token_type="Bearer",
        claims={"sub": "user-7", "client_id": "svc", "tenant": "acme", **claims},
    )


def redis_key(token: str, prefix: str = "apiguard:token:") -> str:
    return f"{prefix}{{{hashlib.sha256(token.encode()).hexdigest()}}}"


async def stored(raw: aioredis.Redis, key: str) -> bytes:
    value = await raw.get(key)
    assert isinstance(value, bytes)
    return value


def is_available(cache: RedisTokenCache) -> bool:
    return cache.available


@pytest.fixture
def table() -> TableIntrospector:
    table = TableIntrospector()
    table.answers[TOKEN] = active()
    return table


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the same database, to look at what the cache stored."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def workers(redis_url: str) -> AsyncIterator[Callable[..., RedisTokenCache]]:
    """Makes caches of their own (a worker each), all closed after the test."""
    async with AsyncExitStack() as stack:

        def make(url: str = redis_url, **options: Any) -> RedisTokenCache:
            # Generous Redis timeouts: on a loaded machine a first connection can take
            # longer than the default 100 ms, and a test about sharing would see an
            # outage instead. The tests about outages set their own.
            options.setdefault("timeout", 10.0)
            cache = RedisTokenCache.from_url(url, **options)
            stack.push_async_callback(cache.aclose)
            return cache

        yield make


def verifier(
    table: TableIntrospector, cache: RedisTokenCache, clock: Callable[[], float] = time.monotonic
) -> TokenVerifier:
    return TokenVerifier(
        table, cache=CacheOptions(ttl=30, negative_ttl=5), token_cache=cache, clock=clock
    )


async def test_a_token_verified_by_one_worker_is_a_redis_hit_for_the_others(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache]
) -> None:
    first, second = verifier(table, workers()), verifier(table, workers())
    principal, credentials = await first.verify(TOKEN.encode())
    shared, shared_credentials = await second.verify(TOKEN.encode())
    assert table.calls == 1
    assert shared == principal
    assert dict(shared.claims) == {"sub": "user-7", "client_id": "svc", "tenant": "acme"}
    assert shared_credentials.scopes == credentials.scopes == ["items:read", "items:write"]


async def test_redis_holds_a_digest_and_the_verdict_never_the_token(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    """RFC 9700 §4.9.3: tokens are not stored in plaintext, in Redis either."""
    await verifier(table, workers(key_prefix="tenant-a:tok:")).verify(TOKEN.encode())
    keys = await raw.keys("*")
    assert keys == [redis_key(TOKEN, "tenant-a:tok:").encode()]
    value = await stored(raw, redis_key(TOKEN, "tenant-a:tok:"))
    assert TOKEN.encode() not in value
    assert json.loads(value)["i"]["sub"] == "user-7"


async def test_concurrent_workers_introspect_a_new_token_once(
    workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    table = TableIntrospector(pause=0.2)
    table.answers[TOKEN] = active()
    # The lock outlives, and the waiters outwait, the leader's call on a loaded machine.
    verifiers = [verifier(table, workers(lock_ttl=60, lock_wait=60)) for _ in range(4)]
    results: list[str] = []

    async def one(each: TokenVerifier) -> None:
        principal, _ = await each.verify(TOKEN.encode())
        results.append(principal.identity)

    async with anyio.create_task_group() as group:
        for each in verifiers:
            for _ in range(25):
                group.start_soon(one, each)
    assert table.calls == 1
    assert results == ["user-7"] * 100
    assert not await raw.exists(redis_key(TOKEN) + ":lock")  # released


async def test_a_lock_left_by_a_dead_worker_is_waited_for_a_bounded_time(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    await raw.set(redis_key(TOKEN) + ":lock", "someone-else", px=60_000)
    principal, _ = await verifier(table, workers(lock_wait=0.1)).verify(TOKEN.encode())
    assert principal.identity == "user-7"
    assert table.calls == 1
    # Its answer is shared all the same, and the other worker's lock left alone.
    await verifier(table, workers()).verify(TOKEN.encode())
    assert table.calls == 1
    assert await raw.get(redis_key(TOKEN) + ":lock") == b"someone-else"


async def test_when_the_leader_fails_its_lock_is_released_and_nothing_is_shared(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    table.down = True
    with pytest.raises(BackendUnavailableError):
        await verifier(table, workers()).verify(TOKEN.encode())
    assert await raw.keys("*") == []
    table.down = False
    principal, _ = await verifier(table, workers()).verify(TOKEN.encode())
    assert principal.identity == "user-7"


async def test_a_waiter_asks_itself_as_soon_as_the_leader_gives_up(
    workers: Callable[..., RedisTokenCache],
) -> None:
    table = TableIntrospector(pause=0.1)
    table.answers[TOKEN] = active()
    table.down = True
    outcomes: list[str] = []

    async def one(each: TokenVerifier) -> None:
        try:
            await each.verify(TOKEN.encode())
            outcomes.append("ok")
        except BackendUnavailableError:
            outcomes.append("503")

    # A long lock_wait: the waiter ends its wait because the lock is gone, not the time.
    verifiers = [verifier(table, workers(lock_wait=60)) for _ in range(2)]
    async with anyio.create_task_group() as group:
        for each in verifiers:
            group.start_soon(one, each)
    assert outcomes == ["503", "503"]
    assert table.calls == 2


async def test_shared_ttl_is_bounded_by_ttl_and_by_exp(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    await verifier(table, workers(ttl=20)).verify(TOKEN.encode())
    assert 0 < await raw.pttl(redis_key(TOKEN)) <= 20_000
    table.answers["short"] = active(timedelta(seconds=5))
    await verifier(table, workers(ttl=20)).verify(b"short")
    assert 0 < await raw.pttl(redis_key("short")) <= 5_000
    table.answers["expired"] = active(timedelta(seconds=-5))
    with pytest.raises(InvalidToken):  # within the verifier's leeway of 0: refused, not shared
        await verifier(table, workers()).verify(b"expired")
    assert not await raw.exists(redis_key("expired"))


async def test_refusals_are_shared_for_the_short_negative_ttl(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    table.answers["revoked"] = TokenInfo(active=False)
    with pytest.raises(InvalidToken):
        await verifier(table, workers(negative_ttl=2)).verify(b"revoked")
    assert 0 < await raw.pttl(redis_key("revoked")) <= 2_000
    with pytest.raises(InvalidToken) as refused:
        await verifier(table, workers()).verify(b"revoked")
    assert refused.value.reason == "inactive"
    assert table.calls == 1
    # A refusal raised by the introspector (unknown token) is shared too.
    with pytest.raises(InvalidToken):
        await verifier(table, workers()).verify(b"unknown")
    with pytest.raises(InvalidToken) as refused:
        await verifier(table, workers()).verify(b"unknown")
    assert refused.value.reason == "unknown"
    assert table.calls == 2


async def test_negative_ttl_zero_shares_no_refusal(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    table.answers["revoked"] = TokenInfo(active=False)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await verifier(table, workers(negative_ttl=0)).verify(b"revoked")
    assert table.calls == 2
    assert await raw.keys("*") == []


async def test_a_shared_grant_is_trusted_locally_no_longer_than_in_redis(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    """Local and shared ttls do not add up: revocation is seen within the longer one."""
    writer = workers()
    await verifier(table, writer).verify(TOKEN.encode())
    key = redis_key(TOKEN)
    entry = json.loads(await stored(raw, key))
    entry["u"] = int(time.time() * 1000) + 1000  # one second left in Redis
    await raw.set(key, json.dumps(entry))
    clock = FakeClock()
    reader = verifier(table, workers(), clock=clock)
    await reader.verify(TOKEN.encode())
    assert table.calls == 1
    # The authorization server revokes it; Redis learns it (a new verdict).
    table.answers[TOKEN] = TokenInfo(active=False)
    refusal = {"u": int(time.time() * 1000) + 60_000, "a": False, "r": "inactive"}
    await raw.set(key, json.dumps(refusal))
    clock.now += 2  # past the shared grant's second, well within the local ttl of 30
    with pytest.raises(InvalidToken):
        await reader.verify(TOKEN.encode())


async def test_an_entry_past_its_validity_is_ignored(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    stale = {"u": int(time.time() * 1000) - 1, "a": False, "r": "inactive"}
    await raw.set(redis_key(TOKEN), json.dumps(stale), px=60_000)
    principal, _ = await verifier(table, workers()).verify(TOKEN.encode())
    assert principal.identity == "user-7"
    assert table.calls == 1


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"a": True, "i": {"sub": "admin"}}, id="unsigned grant"),
        pytest.param({"a": False, "r": "inactive"}, id="unsigned refusal"),
        pytest.param("moved", id="signed for another token"),
        pytest.param("garbage", id="not JSON"),
    ],
)
async def test_with_a_secret_forged_or_moved_entries_are_ignored(
    forged: Any,
    table: TableIntrospector,
    workers: Callable[..., RedisTokenCache],
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone who can write to Redis but lacks the secret cannot make a token pass."""
    key = redis_key(TOKEN)
    if forged == "moved":
        table.answers["other"] = active(sub="admin")
        await verifier(table, workers(secret=SECRET)).verify(b"other")
        value = await stored(raw, redis_key("other"))
        table.calls = 0
    elif forged == "garbage":
        value = b"\x00not json"
    else:
        value = json.dumps({"u": int(time.time() * 1000) + 60_000, **forged}).encode()
    await raw.set(key, value)
    principal, _ = await verifier(table, workers(secret=SECRET)).verify(TOKEN.encode())
    assert principal.claims["sub"] == "user-7"
    assert table.calls == 1
    assert "ignored an entry that is not a verdict" in caplog.text


async def test_with_a_secret_workers_share_signed_verdicts(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    await verifier(table, workers(secret=SECRET)).verify(TOKEN.encode())
    principal, _ = await verifier(table, workers(secret=SECRET.encode())).verify(TOKEN.encode())
    assert principal.identity == "user-7"
    assert table.calls == 1
    value = await stored(raw, redis_key(TOKEN))
    assert len(value) > 64
    assert json.loads(value[64:])["a"] is True


async def test_jwts_are_validated_locally_unless_told_to_share(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    jwt = mint()
    table.answers[jwt] = active()
    await verifier(table, workers()).verify(jwt.encode())
    assert await raw.keys("*") == []
    await verifier(table, workers(jwts=True)).verify(jwt.encode())
    assert await raw.keys("*") == [redis_key(jwt).encode()]


async def test_claims_that_cannot_be_stored_are_not_shared(
    table: TableIntrospector, workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    table.answers["odd"] = active(when=datetime.now(timezone.utc))  # not JSON
    table.answers["huge"] = active(blob="x" * 70_000)
    for token in (b"odd", b"huge"):
        principal, _ = await verifier(table, workers()).verify(token)
        assert principal.identity == "user-7"
    assert await raw.keys("*") == []


async def test_redis_stopped_falls_back_to_local_only_then_recovers(
    make_redis_server: Callable[[], RedisServer],
    table: TableIntrospector,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_redis_server()
    caplog.set_level(logging.INFO, logger="apiguard.tokens")
    async with RedisTokenCache.from_url(server.url(), retry_interval=0, timeout=10) as cache:
        each = verifier(table, cache)
        await each.verify(TOKEN.encode())
        server.stop()
        try:
            # Never a pass, never a 503 for the cache alone: the introspector answers.
            for n in range(3):
                table.answers[f"new-{n}"] = active()
                principal, _ = await each.verify(f"new-{n}".encode())
                assert principal.identity == "user-7"
            table.answers["revoked"] = TokenInfo(active=False)
            with pytest.raises(InvalidToken):
                await each.verify(b"revoked")
            table.down = True
            with pytest.raises(BackendUnavailableError):
                await each.verify(b"never-seen")
            table.down = False
            assert not is_available(cache)
        finally:
            server.start()
        table.answers["after"] = active()
        await each.verify(b"after")
        assert is_available(cache)
        async with RedisTokenCache.from_url(server.url(), timeout=10) as other:
            await verifier(table, other).verify(b"after")
    assert table.calls == 7  # TOKEN, new-0..2, revoked, never-seen, after: each once
    unavailable = [r for r in caplog.records if "shared token cache unavailable" in r.message]
    assert len(unavailable) == 1
    assert unavailable[0].levelno == logging.WARNING
    assert "shared token cache available again" in caplog.text
    assert server.password not in caplog.text


async def test_redis_frozen_costs_a_bounded_wait_then_redis_is_skipped(
    make_redis_server: Callable[[], RedisServer], table: TableIntrospector
) -> None:
    server = make_redis_server()
    async with RedisTokenCache.from_url(server.url(), timeout=0.05, retry_interval=60) as cache:
        each = verifier(table, cache)
        await each.verify(TOKEN.encode())  # connected
        server.pause()
        try:
            with anyio.fail_after(10):  # not a measurement: a hang fails the test
                for n in range(5):
                    table.answers[f"new-{n}"] = active()
                    principal, _ = await each.verify(f"new-{n}".encode())
                    assert principal.identity == "user-7"
        finally:
            server.resume()
        assert not cache.available  # skipped for retry_interval, not asked at each request


async def test_the_middleware_takes_a_url(
    table: TableIntrospector, redis_server: RedisServer
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = BearerTokenMiddleware(app, introspector=table, token_cache=redis_server.url(3))
    token_cache = guarded.auth.verifier.token_cache
    assert isinstance(token_cache, RedisTokenCache)
    assert f"127.0.0.1:{redis_server.port}, db=3" in repr(token_cache)
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        answer = await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 204
    await token_cache.aclose()


async def test_options_are_checked_and_the_password_never_shown(redis_server: RedisServer) -> None:
    url = redis_server.url()
    with pytest.raises(ConfigurationError, match="32 bytes"):
        RedisTokenCache.from_url(url, secret="short")
    with pytest.raises(ConfigurationError, match="positive"):
        RedisTokenCache.from_url(url, ttl=0)
    with pytest.raises(ConfigurationError, match="cannot be negative"):
        RedisTokenCache.from_url(url, negative_ttl=-1)
    with pytest.raises(ConfigurationError) as malformed:
        RedisTokenCache.from_url(f"redis://:{redis_server.password}@127.0.0.1:notaport/0")
    assert redis_server.password not in str(malformed.value)
    assert "token cache" in str(malformed.value)
    async with RedisTokenCache.from_url(url, key_prefix="t:") as cache:
        assert redis_server.password not in repr(cache)
        assert f"127.0.0.1:{redis_server.port}" in repr(cache)


GOOD: dict[str, Any] = {
    "sub": "user-7",
    "cid": "svc",
    "scp": ["items:read"],
    "aud": ["https://api.example"],
    "iss": None,
    "exp": None,
    "iat": None,
    "typ": None,
    "cnf": None,
    "claims": {},
}


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param([1, 2], id="not an object"),
        pytest.param({"a": False, "r": "inactive"}, id="no validity"),
        pytest.param({"u": "soon", "a": False, "r": "inactive"}, id="validity not a number"),
        pytest.param({"a": "yes", "r": "inactive"}, id="neither grant nor refusal"),
        pytest.param({"a": False, "r": 7}, id="reason not a string"),
        pytest.param({"a": True, "i": [1]}, id="token not an object"),
        pytest.param({"a": True, "i": {**GOOD, "sub": 7}}, id="subject not a string"),
        pytest.param({"a": True, "i": {**GOOD, "exp": "2030"}}, id="exp not a number"),
        pytest.param({"a": True, "i": {**GOOD, "exp": True}}, id="exp a boolean"),
        pytest.param({"a": True, "i": {**GOOD, "exp": 1e300}}, id="exp out of range"),
        pytest.param({"a": True, "i": {**GOOD, "scp": "items:read"}}, id="scopes not a list"),
        pytest.param({"a": True, "i": {**GOOD, "cnf": "x"}}, id="cnf not an object"),
        pytest.param({"a": True, "i": {**GOOD, "claims": None}}, id="claims not an object"),
        pytest.param({"a": True, "i": {**GOOD, "pad": "x" * 70_000}}, id="too large"),
    ],
)
async def test_an_entry_that_is_not_a_verdict_is_a_miss(
    entry: Any,
    table: TableIntrospector,
    workers: Callable[..., RedisTokenCache],
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if isinstance(entry, dict) and entry != {"a": False, "r": "inactive"} and "u" not in entry:
        entry = {"u": int(time.time() * 1000) + 60_000, **entry}
    await raw.set(redis_key(TOKEN), json.dumps(entry))
    principal, _ = await verifier(table, workers()).verify(TOKEN.encode())
    assert principal.identity == "user-7"
    assert table.calls == 1
    assert "ignored an entry that is not a verdict" in caplog.text


async def test_an_introspectors_short_memory_of_a_refusal_is_kept_in_redis(
    workers: Callable[..., RedisTokenCache], raw: aioredis.Redis
) -> None:
    class Forgetful(TableIntrospector):
        async def introspect(self, token: str) -> TokenInfo:
            self.calls += 1
            refusal = InvalidToken(reason="unknown kid")
            refusal.remember_for = 0.5  # a key set refetch may soon know it
            raise refusal

    table = Forgetful()
    with pytest.raises(InvalidToken):
        await verifier(table, workers(negative_ttl=60)).verify(TOKEN.encode())
    assert 0 < await raw.pttl(redis_key(TOKEN)) <= 500


async def test_a_client_of_your_own_is_used_and_not_closed(
    table: TableIntrospector, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with RedisTokenCache(client, timeout=10) as cache:
        table.answers["no-exp"] = TokenInfo(active=True, subject="user-9")
        await verifier(table, cache).verify(b"no-exp")
        principal, _ = await verifier(table, cache).verify(b"no-exp")  # read back as str
    assert principal.identity == "user-9"
    assert table.calls == 1
    assert 0 < await client.pttl(redis_key("no-exp")) <= 30_000  # ttl: no exp to bound it
    assert await client.ping()  # still open
    await client.aclose()


def test_redis_py_is_imported_only_when_the_cache_is_named() -> None:
    code = (
        "import sys, apiguard, apiguard.tokens;"
        "assert 'redis' not in sys.modules;"
        "apiguard.tokens.RedisTokenCache;"
        "assert 'redis' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    monkeypatch.delitem(sys.modules, "apiguard.tokens.shared_cache", raising=False)
    with pytest.raises(ConfigurationError, match=r"pip install 'apiguard-asgi\[redis\]'"):
        BearerTokenMiddleware(
            lambda scope, receive, send: None,  # type: ignore[arg-type,return-value]
            introspector=TableIntrospector(),
            token_cache="redis://127.0.0.1:6379/0",
        )
    with pytest.raises(AttributeError):
        apiguard.tokens.NoSuchThing  # noqa: B018


DOCS = Path(__file__).resolve().parent.parent / "docs" / "token-cache.md"


def test_every_option_is_documented_and_the_example_compiles() -> None:
    text = DOCS.read_text()
    names = set(inspect.signature(RedisTokenCache.__init__).parameters) - {"self", "_owns_client"}
    documented = set(re.findall(r"^\| `(\w+)` \|", text, re.MULTILINE))
    assert names <= documented, sorted(names - documented)
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    for block in blocks:
        compile(block, "token-cache.md", "exec")


async def test_a_leader_that_comes_after_the_verdict_reads_it_instead_of_asking(
    table: TableIntrospector,
    workers: Callable[..., RedisTokenCache],
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race: a worker reads nothing, the leader shares its verdict and releases
    # its lock, then the worker takes the lock. It must not ask again.
    await verifier(table, workers()).verify(TOKEN.encode())
    late = workers()
    read = late._read
    reads = 0

    async def first_read_too_early(key: str) -> Any:
        nonlocal reads
        reads += 1
        return None if reads == 1 else await read(key)

    monkeypatch.setattr(late, "_read", first_read_too_early)
    principal, _ = await verifier(table, late).verify(TOKEN.encode())
    assert principal.client_id == "svc"
    assert (table.calls, reads) == (1, 2)
    assert await raw.get(redis_key(TOKEN) + ":lock") is None
