"""Turns on the event loop for signature checks, so a burst of new tokens cannot hold it.

A JWT signature check is CPU work that never awaits (0.05 to 0.3 ms). A burst of
tokens seen for the first time would otherwise run all its checks back to back in
one pass of the event loop, delaying every timer and every other request by the
whole burst. Here each pass of the loop gets a slice (`SLICE` seconds of checks).
Once it is spent, later checks queue, in order of arrival; at each new pass of the
loop (after it has polled I/O and run due timers), as many queued checks are let
through as fit in a slice, judged by the recent cost of a check. A lone request
never waits: the slice is reset as soon as the loop moves on.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["SLICE", "busy", "charge", "wait"]

SLICE = 0.0003  # seconds of signature checks in one pass of the event loop (a request
# admitted costs more than its check: the rest of the pass goes to that, timers and I/O)


class _Pass(threading.local):
    """This thread's event loop as far as checks are concerned."""

    def __init__(self) -> None:
        self.loop: object = None  # the loop a reset is scheduled on; None: a fresh slice
        self.used = 0.0  # seconds of checks in the current pass
        self.average = 0.0  # seconds per check, smoothed
        self.admitted = 0  # queued checks let through, not yet started
        self.waiting: deque[anyio.Event] = deque()


_pass = _Pass()


def busy() -> bool:
    """Whether a check must wait for its turn (`wait`) before it starts."""
    state = _pass
    return state.used >= SLICE or bool(state.waiting) or state.admitted > 0


async def wait() -> None:
    """Wait until a pass of the loop lets this check through, in order of arrival."""
    state = _pass
    running = _running()
    if running is None:  # no event loop to hold (a coroutine driven by hand)
        return
    loop, soon = running
    if state.loop is not loop and state.used:  # left over from a loop that has ended
        state.loop, state.used, state.admitted = None, 0.0, 0
        state.waiting.clear()
    if not busy():
        return
    if state.loop is None:  # nothing scheduled to let the queue through: schedule it
        state.loop = loop
        soon(_reset_for(state, loop, soon))
    turn = anyio.Event()
    state.waiting.append(turn)
    try:
        await turn.wait()
    except BaseException:
        if turn.is_set():
            state.admitted -= 1
        else:
            state.waiting.remove(turn)
        raise
    state.admitted -= 1


def charge(seconds: float) -> None:
    """Count `seconds` of checking against the current pass of the running loop."""
    state = _pass
    state.average = seconds if not state.average else 0.75 * state.average + 0.25 * seconds
    running = _running()
    if running is None:
        return
    loop, soon = running
    if state.loop is loop:
        state.used += seconds
        return
    # The first check of this pass (or of a new loop): the next pass starts afresh.
    state.loop, state.used = loop, seconds
    soon(_reset_for(state, loop, soon))


def _reset_for(
    state: _Pass, loop: object, soon: Callable[[Callable[[], None]], object]
) -> Callable[[], None]:
    def reset() -> None:
        if state.loop is not loop:
            return
        state.loop, state.used = None, 0.0
        waiting = state.waiting
        if not waiting:
            return
        fits = max(1, int(SLICE / state.average)) if state.average else 1
        for _ in range(min(fits, len(waiting))):
            state.admitted += 1
            waiting.popleft().set()
        # The next pass lets the next ones through, whether or not these run.
        state.loop = loop
        soon(reset)

    return reset


def _running() -> tuple[object, Callable[[Callable[[], None]], object]] | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return loop, loop.call_soon
    try:
        import trio  # only under trio, which apiguard does not depend on

        token = trio.lowlevel.current_trio_token()
    except (ImportError, RuntimeError):
        return None
    return token, token.run_sync_soon
