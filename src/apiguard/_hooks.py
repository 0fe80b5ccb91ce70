"""`HookRunner`: the `on_event` audit hook, run off the request path.

Events wait in a bounded queue, drained by one task on the event loop that the
request ran on, started when the queue stops being empty and ending when it is
empty again (no task lives between bursts, none outlives its loop). A coroutine
function is awaited in that task; a plain function runs in a worker thread, so
that neither can hold up a response. A full queue drops the new event (counted,
and logged at most once per `DROP_LOG_INTERVAL`); an exception in the hook is
logged and goes no further.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from typing import Any

import anyio.to_thread

from apiguard.events import AuthEvent, EventHook

__all__ = ["DROP_LOG_INTERVAL", "HookRunner"]

logger = logging.getLogger("apiguard.events")

DROP_LOG_INTERVAL = 10.0  # seconds between two warnings about dropped events

_tasks: set[asyncio.Task[None]] = set()  # strong references until each task is done


class HookRunner:
    """Runs `hook(event)` for each event submitted, never in the submitter's way.

    Attributes:
        dropped: Events dropped because the queue was full, since the start.
    """

    __slots__ = ("_drains", "_hook", "_is_async", "_last_warning", "_max", "_queue", "dropped")

    def __init__(self, hook: EventHook, max_queue: int) -> None:
        self._hook = hook
        self._is_async = inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
            getattr(hook, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self._max = max_queue
        self._queue: deque[AuthEvent] = deque()
        self._drains: set[object] = set()  # the loops a drain task runs on
        self._last_warning = float("-inf")
        self.dropped = 0

    def submit(self, event: AuthEvent) -> None:
        """Queue `event` for the hook; never blocks, never raises."""
        if len(self._queue) >= self._max:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_warning >= DROP_LOG_INTERVAL:
                self._last_warning = now
                logger.warning(
                    "on_event hook too slow: %d events dropped so far (queue of %d full)",
                    self.dropped,
                    self._max,
                )
            return
        self._queue.append(event)
        loop = _current_loop()
        if loop not in self._drains:
            self._drains.add(loop)
            _spawn(self._drain, loop)

    async def _drain(self, loop: object) -> None:
        try:
            while self._queue:
                event = self._queue.popleft()
                try:
                    if self._is_async:
                        await self._hook(event)  # type: ignore[misc]
                    else:
                        await anyio.to_thread.run_sync(self._hook, event)
                except Exception:
                    logger.exception("on_event hook failed; the event is dropped")
        finally:
            self._drains.discard(loop)


def _current_loop() -> object:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # trio
        import trio

        return trio.lowlevel.current_trio_token()


def _spawn(fn: Any, loop: object) -> None:
    if isinstance(loop, asyncio.AbstractEventLoop):
        task: asyncio.Task[None] = loop.create_task(fn(loop), name="apiguard on_event hook")
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    else:
        import trio

        trio.lowlevel.spawn_system_task(fn, loop, name="apiguard on_event hook")
