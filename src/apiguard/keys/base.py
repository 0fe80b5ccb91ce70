"""`BaseKeyStore`: the parts every key store shares (change listeners, async context)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from apiguard.keys.channel import InvalidationChannel

__all__ = ["BaseKeyStore"]

logger = logging.getLogger("apiguard.keys")

# `typing.Self` is new in Python 3.11.
_Store = TypeVar("_Store", bound="BaseKeyStore")

PUBLISH_TIMEOUT = 2.0  # seconds a revoke waits for the channel before giving up on it


class BaseKeyStore:
    """Optional base class for `KeyStore` implementations.

    It keeps the change listeners (`add_listener`) and makes the store an async
    context manager that calls `aclose()`. Implementations call `_changed(key_id)`
    after any write that can make a cached verification wrong (revoke, rotate), or
    `_announce(key_id)`, which also publishes the change on the store's invalidation
    channel, if it has one, for every other process.

    Args:
        channel: Carries key changes between processes (`apiguard.keys.channel`).
            The store starts its subscriber once a listener is added on a running
            event loop (or at the next lookup) and stops it in `aclose()`.
    """

    def __init__(self, *, channel: InvalidationChannel | None = None) -> None:
        self._listeners: list[Callable[[str], None]] = []
        self._before_close: list[Callable[[], Awaitable[None]]] = []
        self.channel = channel

    def before_close(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Have `aclose()` await `flush()` first (pending usage counts, say)."""
        self._before_close.append(flush)

    def add_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(key_id)` whenever a key is revoked or its expiry changes.

        With a channel, also for changes made in other processes, and with
        `apiguard.keys.channel.ALL_KEYS` when any key may have changed.
        """
        self._listeners.append(listener)
        self._watch()

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _changed(self, key_id: str) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(key_id)
            except Exception:  # a broken listener must not undo the write
                logger.exception("key change listener failed (key_id=%s)", key_id)

    def _watch(self) -> None:
        """Start the channel's subscriber if there is one to start and a loop to run it.

        Stores call it before each lookup: cheap, and it restarts a subscriber whose
        loop ended (a store used from one event loop after another).
        """
        channel = self.channel
        if channel is None or not self._listeners:
            return
        try:
            channel.start(self._changed)  # a no-op while it runs on this loop
        except RuntimeError:  # built before the server's loop runs: the first lookup starts it
            return

    async def _announce(self, key_id: str, *, published: bool = False) -> None:
        """After a committed write: tell the listeners here, then every other process.

        A channel that fails is logged, never raised: the write is done, and the
        other processes see it within their cache ttl.

        Args:
            published: The write itself notified the channel (PostgreSQL `NOTIFY`
                in its transaction).
        """
        self._changed(key_id)
        if self.channel is None or published:
            return
        try:
            await asyncio.wait_for(self.channel.publish(key_id), PUBLISH_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any driver's error; logged by name
            logger.warning(
                "could not publish the change of key %s (%s): other processes see it "
                "within their cache ttl",
                key_id,
                type(exc).__name__,
            )

    async def aclose(self) -> None:
        """Release resources held by the store.

        The base class first awaits the `before_close` callbacks, then stops the channel.
        """
        hooks, self._before_close = self._before_close, []
        for flush in hooks:
            await flush()
        if self.channel is not None:
            await self.channel.aclose()

    async def __aenter__(self: _Store) -> _Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
