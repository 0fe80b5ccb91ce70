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
        self.used = 0.0  # seconds of checks since the last reset
        self.average = 0.0  # seconds per check, smoothed
        self.loop: object = None  # the loop a reset is scheduled on, if any
        self.soon: Callable[..., object] | None = None  # and how to schedule the next
        self.admitted = 0  # queued checks let through, not yet started
        self.waiting: deque[asyncio.Future[None] | anyio.Event] = deque()


_pass = _Pass()


def busy() -> bool:
    """Whether a check must wait for its turn (`wait`) before it starts."""
    state = _pass
    return state.used >= SLICE or state.admitted > 0 or bool(state.waiting)


async def wait() -> None:
    """Wait until a pass of the loop lets this check through, in order of arrival."""
    state = _pass
    running = _running()
    if running is None:  # no event loop to hold (a coroutine driven by hand)
        return
    if state.loop is not None and state.loop is not running[0]:
        # Left over from a loop of this thread that has ended: its waiters are gone.
        state.loop, state.used, state.admitted = None, 0.0, 0
        state.waiting.clear()
    if not busy():
        return
    if state.loop is None:
        _schedule(state, *running)
    loop = running[0]
    # A bare future on asyncio (a tenth of the cost of an event); an event on trio.
    turn: asyncio.Future[None] | anyio.Event = (
        loop.create_future() if isinstance(loop, asyncio.AbstractEventLoop) else anyio.Event()
    )
    state.waiting.append(turn)
    try:
        await (turn if isinstance(turn, asyncio.Future) else turn.wait())
    except BaseException:
        if _woken(turn):
            state.admitted -= 1
        elif turn in state.waiting:
            state.waiting.remove(turn)
        raise
    state.admitted -= 1


def _woken(turn: asyncio.Future[None] | anyio.Event) -> bool:
    if isinstance(turn, asyncio.Future):
        return turn.done() and not turn.cancelled()
    return turn.is_set()


def charge(seconds: float) -> None:
    """Count `seconds` of checking against the current pass of the running loop.

    The reset that gives the next pass a fresh slice is scheduled only once the
    slice is spent: checks that come one at a time cost no callback on the loop
    (their seconds add up across passes until then, which only brings that reset
    forward).
    """
    state = _pass
    state.average = seconds if not state.average else 0.75 * state.average + 0.25 * seconds
    state.used += seconds
    if state.used >= SLICE and state.loop is None:
        running = _running()
        if running is None:  # no event loop to hold (a coroutine driven by hand)
            state.used = 0.0
        else:
            _schedule(state, *running)


def _schedule(state: _Pass, loop: object, soon: Callable[..., object]) -> None:
    state.loop, state.soon = loop, soon
    soon(_reset, loop)


def _reset(loop: object) -> None:
    """A new pass of the loop: a fresh slice, and queued checks let through to fill it."""
    state = _pass
    if state.loop is not loop:
        return
    state.loop, state.used = None, 0.0
    waiting = state.waiting
    if not waiting or state.soon is None:
        return
    fits = max(1, int(SLICE / state.average)) if state.average else 1
    let_through = 0
    while waiting and let_through < fits:
        turn = waiting.popleft()
        if isinstance(turn, asyncio.Future):
            if turn.done():  # its task was cancelled while it waited
                continue
            turn.set_result(None)
        else:
            turn.set()
        state.admitted += 1
        let_through += 1
    # The next pass lets the next ones through, whether or not these run.
    _schedule(state, loop, state.soon)


def _running() -> tuple[object, Callable[..., object]] | None:
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
