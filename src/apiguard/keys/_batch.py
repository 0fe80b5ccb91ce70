"""`LookupBatcher`: concurrent lookups of different key ids, one store round trip.

A burst of new keys (every worker after a deploy) would otherwise cost one query,
one pooled connection and one round of driver work on the event loop per key; here
the lookups that arrive while a query runs wait for it and then go together, in one
query for up to `max_batch` ids. A lone lookup is not delayed: it goes at once.

The query runs in a task of its own, not in the caller's: a caller that gives up (a
deadline) stops waiting, and the query still ends cleanly for the others, so no
connection is abandoned half-way through a statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

__all__ = ["LookupBatcher"]

V = TypeVar("V")

MAX_BATCH = 500  # ids per query: under SQLite's oldest limit on parameters (999)


class LookupBatcher(Generic[V]):
    """Answers `get(id)` calls through `fetch(ids)`, batching concurrent calls.

    Args:
        fetch: Reads the values of several ids at once; ids it leaves out are absent
            (`None`). What it raises is raised to every caller of that batch.
        max_batch: The most ids in one `fetch`.
    """

    __slots__ = ("_fetch", "_max_batch", "_task", "_waiting")

    def __init__(
        self,
        fetch: Callable[[list[str]], Awaitable[Mapping[str, V]]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._fetch = fetch
        self._max_batch = max_batch
        self._waiting: dict[str, list[asyncio.Future[V | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, key_id: str) -> V | None:
        """The value for `key_id`, or `None`, read with whatever else is asked meanwhile."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:
            # Left over from an event loop that is gone (a CLI's `asyncio.run`, say).
            self._task, self._waiting = None, {}
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.setdefault(key_id, []).append(future)
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await future

    async def aclose(self) -> None:
        """Stop: a query under way is cancelled, and its callers with it."""
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for futures in self._waiting.values():
            for future in futures:
                future.cancel()
        self._waiting = {}

    async def _run(self) -> None:
        try:
            while self._waiting:
                ids = list(self._waiting)[: self._max_batch]
                batch = {key_id: self._waiting.pop(key_id) for key_id in ids}
                try:
                    found = await self._fetch(ids)
                except asyncio.CancelledError:
                    _settle(batch, cancel=True)
                    raise
                except Exception as exc:  # noqa: BLE001 - every caller gets it
                    _settle(batch, error=exc)
                else:
                    for key_id, futures in batch.items():
                        value = found.get(key_id)
                        for future in futures:
                            if not future.done():
                                future.set_result(value)
        finally:
            if self._task is asyncio.current_task():
                self._task = None


def _settle(
    batch: dict[str, list[asyncio.Future[V | None]]],
    *,
    error: Exception | None = None,
    cancel: bool = False,
) -> None:
    for futures in batch.values():
        for future in futures:
            if future.done():
                continue
            if cancel or error is None:
                future.cancel()
            else:
                future.set_exception(error)
