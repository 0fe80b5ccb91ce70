"""`BaseKeyStore`: the parts every key store shares (change listeners, async context)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

__all__ = ["BaseKeyStore"]

logger = logging.getLogger("apiguard.keys")

# `typing.Self` is new in Python 3.11.
_Store = TypeVar("_Store", bound="BaseKeyStore")


class BaseKeyStore:
    """Optional base class for `KeyStore` implementations.

    It keeps the change listeners (`add_listener`) and makes the store an async
    context manager that calls `aclose()`. Implementations call `_changed(key_id)`
    after any write that can make a cached verification wrong (revoke, rotate).
    A store that learns of changes made by other processes (through pub/sub, say)
    calls `_changed` for those too.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def add_listener(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(key_id)` whenever a key is revoked or its expiry changes."""
        self._listeners.append(listener)

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

    async def aclose(self) -> None:
        """Release resources held by the store. The base implementation holds none."""

    async def __aenter__(self: _Store) -> _Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
