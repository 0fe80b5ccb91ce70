"""A middleware that cannot be set up stops the server at startup, not at each request.

Starlette and FastAPI build their middleware stack lazily, inside the first ASGI call:
the lifespan startup, or the first request where the server runs no lifespan. An error
raised from a middleware's `__init__` then escapes from that call, and uvicorn's default
lifespan mode ("auto") takes it for an app without lifespan support: it logs "ASGI
'lifespan' protocol appears unsupported", reports a healthy start, and every request
is a 500. So a middleware made inside a running event loop holds its setup error
instead, and reports it where a server acts on it (`SetupFailure`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol

from apiguard._challenge import ErrorResponder
from apiguard.exceptions import BackendUnavailableError, ConfigurationError
from apiguard.types import ASGIApp, Receive, Scope, Send

__all__ = ["SetupFailure", "hold_setup_errors"]

logger = logging.getLogger("apiguard.middleware")

P = ParamSpec("P")


class _Holder(Protocol):
    _setup_failure: SetupFailure | None
    app: ASGIApp


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        trio = sys.modules.get("trio")  # only a trio that is imported can be running
        in_trio_run: Callable[[], bool] | None = getattr(
            getattr(trio, "lowlevel", None), "in_trio_run", None
        )
        return in_trio_run is not None and in_trio_run()
    return True


class SetupFailure:
    """The error that kept a middleware from being set up, answered at every ASGI call.

    - lifespan: the startup fails with the message (`lifespan.startup.failed`), which
      makes uvicorn, Hypercorn and Granian exit; the error is then raised, as
      Starlette's own lifespan does, so that a test client raises it too;
    - http and websocket (a server that runs no lifespan, or went on regardless):
      503 with `Retry-After`, never a 500 and never a pass; the first one logs the
      message at ERROR, once, since every later request fails the same way;
    - any other scope type: passed to the app untouched.
    """

    def __init__(self, middleware: str, error: Exception) -> None:
        self.error = error
        if isinstance(error, ConfigurationError):
            self.message = f"apiguard: {middleware} is misconfigured: {error}"
        else:  # a misspelt option, say: a TypeError from the constructor
            self.message = (
                f"apiguard: {middleware} could not be set up: {type(error).__name__}: {error}"
            )
        self._logged = False
        self._responder = ErrorResponder(schemes=(), realm=None)

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": self.message})
                raise self.error
            return
        if kind not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        if not self._logged:
            self._logged = True
            logger.error("%s; answering 503 to every request until it is fixed", self.message)
        error = BackendUnavailableError(self.message)
        await self._responder.deny(error, None, scope, receive, send)


def hold_setup_errors(
    init: Callable[Concatenate[Any, ASGIApp, P], None],
) -> Callable[Concatenate[Any, ASGIApp, P], None]:
    """Make a middleware `__init__` hold its error when called inside a running event loop.

    There it is being made by a lazy stack builder (Starlette's, at the first ASGI
    call), where a raised error would be taken for missing lifespan support. Made
    outside one (`app = APIKeyMiddleware(app, ...)` at import), it raises as usual.
    """

    @functools.wraps(init)
    def wrapper(self: _Holder, app: ASGIApp, /, *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            init(self, app, *args, **kwargs)
        except Exception as exc:
            if not _in_event_loop():
                raise
            self.app = app
            self._setup_failure = SetupFailure(type(self).__name__, exc)

    return wrapper
