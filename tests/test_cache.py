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
    assert cache._tags == {"t3": {"b"}}
    cache.clear()
    assert len(cache) == 0
    assert cache._tags == {}


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
