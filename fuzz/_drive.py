"""Run a coroutine that should not wait on anything, without an event loop."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Suspended(Exception):
    """The coroutine waited on I/O: the harness set-up should have made that unneeded."""


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise Suspended
