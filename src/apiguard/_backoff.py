"""Failure memory for outbound calls, so that an outage is not amplified by our traffic.

After a call to an authorization server (JWKS, discovery, introspection) fails,
the next calls fail at once with the same 503 for a short, jittered, growing time
instead of each reaching the failing server; one success forgets the failures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from apiguard.exceptions import BackendUnavailableError

T = TypeVar("T")

__all__ = ["Backoff"]


class Backoff:
    """Remembers failures of one backend, shared by every request that would call it.

    After the n-th failure in a row, calls are refused for a delay drawn uniformly
    from [d/2, d] where d = min(`cap`, `base` * 2**(n-1)): the jitter spreads the
    retries of several processes, the growth bounds the calls a long outage costs.
    Calls are counted by when they started (`start()`): the failures of calls that
    were already under way when one failed are the same failure, not failures in a
    row, so a blip under concurrent load costs one short delay.

    Args:
        base: Seconds of the first delay (before jitter).
        cap: The longest delay, in seconds.
    """

    __slots__ = ("_base", "_cap", "_clock", "_epoch", "_error", "_failures", "_random", "_until")

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._base = base
        self._cap = cap
        self._clock = clock
        self._random = rng
        self._failures = 0
        self._epoch = 0
        self._until = float("-inf")
        self._error = ""

    async def call(self, fn: Callable[[], Awaitable[T]], *, deadline: float, what: str) -> T:
        """`await fn()` within `deadline` seconds in all, the outcome recorded here.

        Refused at once while backing off; passing the deadline is a failure like
        any other `BackendUnavailableError`.
        """
        started = self.start()
        try:
            with anyio.fail_after(deadline):
                result = await fn()
        except TimeoutError:
            error = BackendUnavailableError(f"{what}: no answer within {deadline:g} s")
            self.failed(error, started)
            raise error from None
        except BackendUnavailableError as exc:
            self.failed(exc, started)
            raise
        self.succeeded(started)
        return result

    def start(self) -> int:
        """Check (as `check()`) and return a token for the call about to be made."""
        self.check()
        return self._epoch

    def check(self) -> None:
        """Raise the last failure again while its delay lasts."""
        if self._clock() < self._until:
            raise BackendUnavailableError(f"{self._error} (backing off)")

    def failed(self, error: BackendUnavailableError, started: int) -> None:
        """Record the failure of the call `started` (from `start()`)."""
        if started != self._epoch:
            return  # it started before the last outcome was recorded: already counted
        self._epoch += 1
        self._failures += 1
        delay = min(self._cap, self._base * 2.0 ** min(self._failures - 1, 32))
        self._until = self._clock() + delay * (0.5 + self._random() / 2)
        self._error = str(error)

    def succeeded(self, started: int) -> None:
        """Forget the failures, unless a call started later has failed since."""
        if started != self._epoch:
            return
        self._epoch += 1
        self._failures = 0
        self._until = float("-inf")
