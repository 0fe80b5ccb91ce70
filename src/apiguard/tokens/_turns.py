"""Turns on the event loop for signature checks, so a burst of new tokens cannot hold it.

A JWT signature check is CPU work that never awaits (0.05 to 0.3 ms). A burst of
tokens seen for the first time would otherwise run all its checks back to back in
one pass of the event loop, delaying every timer and every other request by the
whole burst. Here each pass of the loop gets a slice (`SLICE` seconds of checks):
once it is spent, the next check yields to the loop first (`anyio.lowlevel.checkpoint()`), so
the loop polls I/O, runs due timers and other tasks, and a new pass begins with a
full slice. A lone request never waits: the slice is reset as soon as the loop
moves on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

__all__ = ["SLICE", "charge", "spent"]

SLICE = 0.0005  # seconds of signature checks in one pass of the event loop


class _Pass(threading.local):
    """The current pass of this thread's event loop, as far as checks are concerned."""

    loop: object = None  # the loop whose reset is scheduled; None: a fresh slice
    used: float = 0.0


_pass = _Pass()


def spent() -> bool:
    """Whether this pass of the loop has spent its slice: then yield before checking."""
    return _pass.used >= SLICE


def charge(seconds: float) -> None:
    """Count `seconds` of checking against the current pass of the running loop."""
    state = _pass
    running = _running()
    if running is None:  # no event loop to hold (a coroutine driven by hand)
        return
    loop, soon = running
    if state.loop is loop:
        state.used += seconds
        return
    # The first check of this pass (or of a new loop): the next pass starts afresh.
    state.loop, state.used = loop, seconds

    def reset() -> None:
        if state.loop is loop:
            state.loop, state.used = None, 0.0

    soon(reset)


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
