from __future__ import annotations

import itertools

import pytest

from apiguard import BackendUnavailableError
from apiguard._backoff import Backoff
from apiguard.testing import FakeClock

DOWN = BackendUnavailableError("server down")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def refused(backoff: Backoff) -> bool:
    try:
        backoff.check()
    except BackendUnavailableError:
        return True
    return False


def test_delays_grow_with_failures_in_a_row_and_stay_within_the_cap(clock: FakeClock) -> None:
    backoff = Backoff(base=1.0, cap=30.0, clock=clock, rng=lambda: 1.0)  # no jitter
    delays = []
    for _ in range(8):
        backoff.failed(DOWN, backoff.start())
        waited = 0.0
        while refused(backoff):
            clock.now += 0.25
            waited += 0.25
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_jitter_spreads_each_delay_over_its_upper_half(clock: FakeClock) -> None:
    for draw, expected in ((0.0, 0.5), (0.5, 0.75), (1.0, 1.0)):
        backoff = Backoff(base=1.0, clock=clock, rng=itertools.repeat(draw).__next__)
        backoff.failed(DOWN, backoff.start())
        clock.now += expected - 0.01
        assert refused(backoff)
        clock.now += 0.02
        assert not refused(backoff)


def test_calls_under_way_together_fail_as_one(clock: FakeClock) -> None:
    """Fifty requests in flight during one blip are one failure, not fifty in a row."""
    backoff = Backoff(base=1.0, cap=30.0, clock=clock, rng=lambda: 1.0)
    started = [backoff.start() for _ in range(50)]
    for token in started:
        backoff.failed(DOWN, token)
    clock.now += 1.0
    assert not refused(backoff)  # the first delay, not 2**49 s capped at 30


def test_a_success_forgets_the_failures(clock: FakeClock) -> None:
    backoff = Backoff(base=1.0, clock=clock, rng=lambda: 1.0)
    for _ in range(4):
        backoff.failed(DOWN, backoff.start())
        clock.now += 10
    backoff.succeeded(backoff.start())
    backoff.failed(DOWN, backoff.start())
    clock.now += 1.0
    assert not refused(backoff)  # back to the first delay


def test_a_stale_success_does_not_undo_a_newer_failure(clock: FakeClock) -> None:
    backoff = Backoff(base=1.0, clock=clock, rng=lambda: 1.0)
    slow = backoff.start()  # a call that will succeed late
    backoff.failed(DOWN, backoff.start())
    backoff.succeeded(slow)
    assert refused(backoff)


def test_the_refusal_names_the_last_failure(clock: FakeClock) -> None:
    backoff = Backoff(clock=clock)
    backoff.failed(BackendUnavailableError("JWKS: HTTP 502"), backoff.start())
    with pytest.raises(BackendUnavailableError, match=r"JWKS: HTTP 502 \(backing off\)"):
        backoff.start()
