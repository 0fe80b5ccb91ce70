"""`TokenVerifier` on its own, on a fake clock: the cache and stale-if-error."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from apiguard import BackendUnavailableError, CacheOptions, InvalidToken
from apiguard.testing import FakeClock
from apiguard.tokens import TokenInfo, TokenVerifier

from .token_support import TableIntrospector

pytestmark = pytest.mark.anyio

TOKEN = b"good-token-4c2b1f"
STALE = CacheOptions(ttl=30, negative_ttl=5, stale_if_error=60)


def active(expires_in: timedelta = timedelta(hours=1)) -> TokenInfo:
    return TokenInfo(
        active=True,
        subject="user-7",
        client_id="svc",
        scopes=frozenset({"items:read"}),
        expires_at=datetime.now(timezone.utc) + expires_in,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def introspector() -> TableIntrospector:
    table = TableIntrospector()
    table.answers[TOKEN.decode()] = active()
    return table


async def test_stale_if_error_serves_a_grant_past_its_ttl_during_an_outage(
    introspector: TableIntrospector, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Within `ttl` + `stale_if_error` an outage is answered from the cache, and logged."""
    verifier = TokenVerifier(introspector, cache=STALE, clock=clock)
    await verifier.verify(TOKEN)
    introspector.down = True
    clock.now += 31
    with caplog.at_level(logging.WARNING, logger="apiguard.tokens"):
        principal, _ = await verifier.verify(TOKEN)
        clock.now += 5
        await verifier.verify(TOKEN)
    assert principal.client_id == "svc"
    assert introspector.calls == 3
    (record,) = caplog.records  # at most once per 10 s per client
    assert record.levelno == logging.WARNING
    assert "stale_if_error" in record.getMessage()
    assert "client_id=svc, sub=user-7" in record.getMessage()
    assert TOKEN.decode() not in caplog.text
    clock.now += 54  # 30 + 60 s after the verification
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(TOKEN)
    introspector.down = False
    await verifier.verify(TOKEN)
    assert introspector.calls == 5


async def test_stale_if_error_is_off_by_default(
    introspector: TableIntrospector, clock: FakeClock
) -> None:
    verifier = TokenVerifier(introspector, cache=CacheOptions(ttl=30), clock=clock)
    await verifier.verify(TOKEN)
    introspector.down = True
    clock.now += 30
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(TOKEN)


async def test_stale_if_error_never_serves_past_exp_and_leeway(
    introspector: TableIntrospector, clock: FakeClock
) -> None:
    introspector.answers[TOKEN.decode()] = active(expires_in=timedelta(seconds=100))
    verifier = TokenVerifier(
        introspector, cache=CacheOptions(ttl=30, stale_if_error=3600), leeway=20, clock=clock
    )
    await verifier.verify(TOKEN)
    introspector.down = True
    clock.now += 60
    await verifier.verify(TOKEN)
    clock.now += 61  # past exp + leeway, well within stale_if_error
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(TOKEN)


async def test_stale_if_error_never_serves_a_refused_token(
    introspector: TableIntrospector, clock: FakeClock
) -> None:
    """A token found inactive after its grant is not served stale later; nor one never granted."""
    verifier = TokenVerifier(introspector, cache=STALE, clock=clock)
    await verifier.verify(TOKEN)
    introspector.answers[TOKEN.decode()] = TokenInfo(active=False)
    clock.now += 31
    with pytest.raises(InvalidToken):
        await verifier.verify(TOKEN)
    clock.now += 5  # the refusal is no longer cached either
    introspector.down = True
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(TOKEN)
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(b"never-granted")


async def test_a_refusal_is_never_overridden_by_stale_if_error(
    introspector: TableIntrospector, clock: FakeClock
) -> None:
    """Only an outage is answered from the cache: an `InvalidToken` answer stands."""
    verifier = TokenVerifier(introspector, cache=STALE, clock=clock)
    await verifier.verify(TOKEN)
    del introspector.answers[TOKEN.decode()]
    clock.now += 31
    with pytest.raises(InvalidToken):
        await verifier.verify(TOKEN)
