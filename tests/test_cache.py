from __future__ import annotations

import anyio
import pytest

from apiguard._cache import SingleFlight, TTLCache

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_ttl_expiry() -> None:
    cache: TTLCache[str, int] = TTLCache(10)
    cache.set("a", 1, deadline=10.0)
    assert cache.get("a", now=9.9) == 1
    assert cache.get("a", now=10.0) is None
    assert len(cache) == 0


def test_lru_eviction_keeps_recently_used() -> None:
    cache: TTLCache[str, int] = TTLCache(2)
    cache.set("a", 1, 100.0)
    cache.set("b", 2, 100.0)
    assert cache.get("a", 0.0) == 1  # a is now the most recently used
    cache.set("c", 3, 100.0)
    assert cache.get("b", 0.0) is None
    assert cache.get("a", 0.0) == 1
    assert cache.get("c", 0.0) == 3
    assert len(cache) == 2


def test_invalidate_by_tag_drops_every_entry_of_the_tag() -> None:
    cache: TTLCache[str, int] = TTLCache(10)
    cache.set("a1", 1, 100.0, tag="a")
    cache.set("a2", 2, 100.0, tag="a")
    cache.set("b1", 3, 100.0, tag="b")
    assert cache.invalidate("a") == 2
    assert cache.get("a1", 0.0) is None
    assert cache.get("a2", 0.0) is None
    assert cache.get("b1", 0.0) == 3
    assert cache.invalidate("a") == 0


def test_tags_follow_eviction_and_overwrite() -> None:
    """Evicted or overwritten entries leave no tag behind (no unbounded growth)."""
    cache: TTLCache[str, int] = TTLCache(1)
    cache.set("a", 1, 100.0, tag="t1")
    cache.set("a", 2, 100.0, tag="t2")
    cache.set("b", 3, 100.0, tag="t3")
    assert cache._tags == {"t3": "b"}
    cache.clear()
    assert len(cache) == 0
    assert cache._tags == {}


def test_a_tag_with_several_entries_drops_them_all_and_follows_each_removal() -> None:
    """A key id verified with several secrets (a rotation, forged secrets) has several
    entries under one tag: invalidating the tag drops every one, and entries removed
    one by one leave nothing behind."""
    cache: TTLCache[str, int] = TTLCache(10)
    for key in ("a", "b", "c"):
        cache.set(key, 1, 100.0, tag="t")
    cache.set("d", 1, 100.0, tag="u")
    assert cache.invalidate("t") == 3
    assert [cache.get(key, 0.0) for key in "abcd"] == [None, None, None, 1]
    for key in ("a", "b"):
        cache.set(key, 1, 100.0, tag="t")
    cache.discard("a")
    assert cache.invalidate("t") == 1
    assert cache.get("b", 0.0) is None
    cache.set("e", 1, 100.0, tag="u")
    cache.discard("d")
    cache.discard("e")
    assert cache._tags == {}
    assert cache.invalidate("u") == 0


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        TTLCache(0)


async def test_single_flight_runs_once_for_concurrent_callers() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    results: list[int] = []

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.01)
        return 42

    async def caller() -> None:
        results.append(await flight.run("k", fetch))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(caller)
    assert calls == 1
    assert results == [42] * 50
    assert len(flight) == 0


async def test_single_flight_shares_errors_and_forgets_them() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    errors: list[BaseException] = []

    async def fail() -> int:
        await anyio.sleep(0.01)
        raise LookupError("down")

    async def caller() -> None:
        try:
            await flight.run("k", fail)
        except LookupError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(caller)
    assert len(errors) == 5

    async def succeed() -> int:
        return 1

    assert await flight.run("k", succeed) == 1  # errors are not remembered


async def test_single_flight_survives_a_cancelled_leader() -> None:
    """If the leading call is cancelled, a waiter runs the call itself."""
    flight: SingleFlight[str, int] = SingleFlight()
    started = anyio.Event()
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.sleep(0.05)
        return calls

    result: list[int] = []
    async with anyio.create_task_group() as outer, anyio.create_task_group() as leader:
        leader.start_soon(flight.run, "k", fetch)
        await started.wait()

        async def waiter() -> None:
            result.append(await flight.run("k", fetch))

        outer.start_soon(waiter)
        await anyio.sleep(0.01)
        leader.cancel_scope.cancel()
    assert result == [2]
    assert calls == 2


def test_verdict_cache_caps_grants_by_lifetime_and_skips_stale_fills() -> None:
    from apiguard._cache import CacheOptions, VerdictCache

    now = [100.0]
    verdicts: VerdictCache[str, str] = VerdictCache(
        CacheOptions(ttl=30, negative_ttl=5), lambda: now[0]
    )
    generation = verdicts.generation
    verdicts.allow("short", "grant", generation, lifetime=2)
    verdicts.allow("long", "grant", generation, lifetime=3600, tag="t")
    verdicts.refuse("bad", "revoked", generation, tag="t")
    assert verdicts.positive.get("short", 101.9) == "grant"
    assert verdicts.positive.get("short", 102.0) is None  # the credential's own lifetime
    assert verdicts.positive.get("long", 129.9) == "grant"
    assert verdicts.positive.get("long", 130.0) is None  # the cache's ttl
    assert verdicts.negative.get("bad", 104.9) == "revoked"
    verdicts.invalidate("t")
    assert verdicts.negative.get("bad", 101.0) is None
    # A fill that began before the invalidation stores nothing.
    verdicts.allow("late", "grant", generation)
    verdicts.refuse("late-bad", "x", generation)
    assert verdicts.positive.get("late", 101.0) is None
    assert verdicts.negative.get("late-bad", 101.0) is None


def test_an_entry_kept_past_its_deadline_is_only_served_stale() -> None:
    """`keep_until`: `get` misses after the deadline; `get_stale` serves until then."""
    cache: TTLCache[str, int] = TTLCache(10)
    cache.set("a", 1, deadline=10.0, keep_until=20.0)
    assert cache.get("a", now=10.0) is None
    assert len(cache) == 1  # kept for get_stale
    assert cache.get_stale("a", now=19.9) == 1
    assert cache.get_stale("a", now=20.0) is None
    assert len(cache) == 0
    assert cache.get_stale("a", now=0.0) is None
    cache.set("b", 2, deadline=10.0, keep_until=20.0)
    assert cache.get("b", now=20.0) is None
    assert len(cache) == 0  # past keep_until, get drops it too
    cache.set("c", 3, deadline=10.0, keep_until=5.0)  # never kept less than the deadline
    assert cache.get("c", now=9.0) == 3


def test_stale_entries_count_toward_maxsize_and_can_be_discarded() -> None:
    cache: TTLCache[str, int] = TTLCache(2)
    cache.set("a", 1, deadline=10.0, keep_until=100.0, tag="t")
    cache.set("b", 2, deadline=10.0, keep_until=100.0)
    cache.set("c", 3, deadline=10.0)
    assert len(cache) == 2
    assert cache.get_stale("a", now=50.0) is None  # evicted, least recently used
    cache.discard("b")
    cache.discard("b")
    assert len(cache) == 1
    assert cache.invalidate("t") == 0


def test_verdict_cache_keeps_grants_for_stale_if_error_within_their_lifetime() -> None:
    """Kept `stale_if_error` past the ttl, never past `lifetime`; never after a refusal."""
    from apiguard._cache import CacheOptions, VerdictCache

    now = [100.0]
    verdicts: VerdictCache[str, str] = VerdictCache(
        CacheOptions(ttl=30, stale_if_error=60), lambda: now[0]
    )
    generation = verdicts.generation
    verdicts.allow("plain", "grant", generation)
    verdicts.allow("expiring", "grant", generation, lifetime=45)
    verdicts.allow("short-trust", "grant", generation, trust_for=5)
    verdicts.allow("refused", "grant", generation)
    verdicts.refuse("refused", "revoked", generation)
    now[0] = 140.0
    assert verdicts.positive.get("plain", now[0]) is None
    assert verdicts.stale("plain") == "grant"
    assert verdicts.stale("expiring") == "grant"
    assert verdicts.stale("short-trust") == "grant"  # 5 + 60 s
    assert verdicts.stale("refused") is None
    now[0] = 145.0
    assert verdicts.stale("expiring") is None  # the credential's own lifetime
    now[0] = 189.9
    assert verdicts.stale("plain") == "grant"
    now[0] = 190.0
    assert verdicts.stale("plain") is None
    # An expired credential stores nothing, and drops what was kept for it.
    verdicts.allow("plain", "grant", verdicts.generation)
    verdicts.allow("plain", "grant", verdicts.generation, lifetime=0)
    assert verdicts.stale("plain") is None


def test_verdict_cache_without_stale_if_error_serves_nothing_stale() -> None:
    from apiguard._cache import CacheOptions, VerdictCache

    now = [100.0]
    verdicts: VerdictCache[str, str] = VerdictCache(CacheOptions(ttl=30), lambda: now[0])
    verdicts.allow("a", "grant", verdicts.generation)
    assert verdicts.stale("a") is None  # off: not even a live entry is served this way
    assert verdicts.positive.get("a", 129.0) == "grant"


def test_stale_warnings_are_rate_limited_per_name_in_bounded_memory() -> None:
    from apiguard._cache import STALE_LOG_INTERVAL, CacheOptions, VerdictCache

    now = [100.0]
    verdicts: VerdictCache[str, str] = VerdictCache(
        CacheOptions(max_size=2, stale_if_error=60), lambda: now[0]
    )
    assert verdicts.should_warn_stale("a")
    assert not verdicts.should_warn_stale("a")
    assert verdicts.should_warn_stale("b")
    now[0] += STALE_LOG_INTERVAL - 0.1
    assert not verdicts.should_warn_stale("a")
    now[0] += 0.1
    assert verdicts.should_warn_stale("a")
    assert verdicts.should_warn_stale("c")  # over max_size: the oldest name ("b") forgotten
    assert verdicts.should_warn_stale("b")  # and now "a"
    assert not verdicts.should_warn_stale("c")
