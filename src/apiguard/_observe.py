"""Where every decision passes: one `AuthEvent`, several sinks.

The core opens a `Trace` for a request when something observes (`Observer.wanted`),
runs the pipeline inside it, and hands the decision to `Observer.allowed` /
`Observer.refused`, which log it with the event's fields as `extra`, and pass the
event to the metrics, the tracer and the `on_event` hook.

Verifiers and backends report what a request cost through `cache_hit()`,
`cache_miss()` and `backend_call(kind)`: they find the request's trace in a
ContextVar, and cost one `ContextVar.get` when nothing observes.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from starlette.routing import Match, Mount

from apiguard._hooks import HookRunner
from apiguard.events import AuthEvent, EventHook
from apiguard.exceptions import (
    ApiGuardError,
    AuthError,
    BackendUnavailableError,
    MissingCredentials,
)
from apiguard.types import Scope

if TYPE_CHECKING:
    from apiguard.principal import Principal

__all__ = ["Observer", "Trace", "backend_call", "cache_hit", "cache_miss"]

logger = logging.getLogger("apiguard.middleware")


class MetricsSink(Protocol):
    """What the core asks of `apiguard.prometheus.PrometheusMetrics`."""

    def decision(self, event: AuthEvent) -> None: ...
    def backend(self, kind: str, failed: bool) -> None: ...
    def watch(self, authenticators: tuple[object, ...]) -> None: ...


class TracingSink(Protocol):
    """What the core asks of `apiguard.otel.OpenTelemetryTracing`."""

    def start(self, scope: Scope) -> Any: ...
    def child(self, parent: Any, kind: str) -> Any: ...
    def end_child(self, span: Any, error: BaseException | None) -> None: ...
    def end(self, span: Any, event: AuthEvent) -> None: ...


class Trace:
    """What one request's decision cost: its start, cache verdict and backend calls."""

    __slots__ = ("backends", "cache", "observer", "span", "started", "token")

    def __init__(self, observer: Observer, span: Any) -> None:
        self.observer = observer
        self.span = span
        self.cache: Literal["hit", "miss"] | None = None
        self.backends: tuple[str, ...] = ()
        self.token: Token[Trace | None] | None = None
        self.started = time.perf_counter()

    def __enter__(self) -> Trace:
        self.token = _current.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            _current.reset(self.token)
            self.token = None


_current: ContextVar[Trace | None] = ContextVar("apiguard_trace", default=None)


def cache_hit() -> None:
    """A cached verdict decided the request's credential."""
    trace = _current.get()
    if trace is not None:
        trace.cache = "hit"


def cache_miss() -> None:
    """The request's credential is checked anew (alone or sharing another's check)."""
    trace = _current.get()
    if trace is not None:
        trace.cache = "miss"


class _BackendCall:
    __slots__ = ("failed", "kind", "span", "trace")

    def __init__(self, trace: Trace, kind: str) -> None:
        self.trace = trace
        self.kind = kind
        self.failed = False
        trace.backends += (kind,)
        tracing = trace.observer.tracing
        self.span = None if tracing is None else tracing.child(trace.span, kind)

    def __enter__(self) -> _BackendCall:
        return self

    def fail(self) -> None:
        """The call got an answer that counts as a failure (an HTTP 5xx)."""
        self.failed = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A refusal (the server says the token is invalid) is an answer, not a failure.
        failed = self.failed or (error is not None and not isinstance(error, AuthError))
        observer = self.trace.observer
        if observer.metrics is not None:
            observer.metrics.backend(self.kind, failed)
        if self.span is not None and observer.tracing is not None:
            observer.tracing.end_child(self.span, error if failed else None)


class _NoCall:
    __slots__ = ()

    def __enter__(self) -> _NoCall:
        return self

    def fail(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_CALL = _NoCall()


def backend_call(kind: str) -> _BackendCall | _NoCall:
    """`with backend_call("store"): ...` around one call to a backend, counted per request."""
    trace = _current.get()
    return _NO_CALL if trace is None else _BackendCall(trace, kind)


class Observer:
    """The sinks one middleware (or per-route `Guard`) reports its decisions to.

    Args:
        on_event: The audit hook, run off the request path.
        metrics: A `PrometheusMetrics`, or `None`.
        tracing: An `OpenTelemetryTracing`, or `None`.
        hook_queue: Events that may wait for the hook; more are dropped (counted).
        app: The app behind the middleware, whose router names routes when the
            request's scope has no app (the middleware wraps the app directly).
    """

    __slots__ = ("active", "hooks", "metrics", "routes", "tracing")

    def __init__(
        self,
        *,
        on_event: EventHook | None = None,
        metrics: MetricsSink | None = None,
        tracing: TracingSink | None = None,
        hook_queue: int = 1000,
        app: object = None,
    ) -> None:
        self.routes = _routes_of(app)
        self.hooks = None if on_event is None else HookRunner(on_event, hook_queue)
        self.metrics = metrics
        self.tracing = tracing
        self.active = on_event is not None or metrics is not None or tracing is not None

    def wanted(self) -> bool:
        """Whether this request's decision is observed: a sink, or refusals logged."""
        return self.active or logger.isEnabledFor(logging.INFO)

    def trace(self, scope: Scope) -> Trace:
        """A new trace for the request in `scope`; enter it around the pipeline."""
        return Trace(self, None if self.tracing is None else self.tracing.start(scope))

    def allowed(self, trace: Trace | None, scope: Scope, principal: Principal) -> None:
        """Report a credential accepted (or the anonymous grant of optional mode)."""
        debug = logger.isEnabledFor(logging.DEBUG)
        if trace is None or not (debug or self.active):
            return
        kind = principal.kind
        # Only logs, hooks and spans show the route: metrics alone need no router walk.
        shown = debug or self.hooks is not None or self.tracing is not None
        event = AuthEvent(
            outcome="allowed",
            reason=None,
            status=None,
            connection=scope["type"],
            method=scope.get("method"),
            route=route_of(scope, self.routes) if shown else "",
            credential_kind=kind,
            credential_id=principal.key_id or principal.client_id or principal.subject,
            issuer=_issuer(principal),
            latency=time.perf_counter() - trace.started,
            cache=trace.cache,
            backend_calls=trace.backends,
        )
        if debug:
            logger.debug(
                "allowed kind=%s id=%s path=%s",
                kind,
                loggable(principal.identity),
                loggable(scope["path"]),
                extra=event.log_fields(),
            )
        self._emit(trace, event)

    def refused(
        self, exc: ApiGuardError, scope: Scope, scheme: str | None, trace: Trace | None
    ) -> ApiGuardError:
        """Log and report a refusal; return the error to answer (a configuration error is a 503)."""
        if isinstance(exc, AuthError):
            if not (self.active or logger.isEnabledFor(logging.INFO)):
                return exc
            event = self._refusal(exc, exc.reason, exc.status_code, scope, scheme, trace)
            logger.info(
                "refused status=%d reason=%s id=%s path=%s",
                exc.status_code,
                loggable(exc.reason),
                loggable(exc.credential_id or "-"),
                loggable(scope["path"]),
                extra=event.log_fields(),
            )
        elif isinstance(exc, BackendUnavailableError):
            event = self._refusal(exc, "backend unavailable", 503, scope, scheme, trace)
            logger.error(
                "refused status=503 reason=backend unavailable (%s)",
                loggable(exc),
                extra=event.log_fields(),
            )
        else:
            event = self._refusal(exc, "configuration error", 503, scope, scheme, trace)
            logger.error(
                "refused status=503 reason=configuration error (%s)",
                loggable(exc),
                extra=event.log_fields(),
            )
            exc = BackendUnavailableError(str(exc))
        if self.active:
            self._emit(trace, event)
        return exc

    def _refusal(
        self,
        exc: ApiGuardError,
        reason: str,
        status: int,
        scope: Scope,
        scheme: str | None,
        trace: Trace | None,
    ) -> AuthEvent:
        kind = None
        if scheme is not None and not isinstance(exc, MissingCredentials):
            kind = _KINDS.get(scheme) or scheme.lower()
        return AuthEvent(
            outcome="refused",
            reason=reason,
            status=status,
            connection=scope["type"],
            method=scope.get("method"),
            route=route_of(scope, self.routes),
            credential_kind=kind,
            credential_id=getattr(exc, "credential_id", None),
            issuer=None,
            latency=None if trace is None else time.perf_counter() - trace.started,
            cache=None if trace is None else trace.cache,
            backend_calls=None if trace is None else trace.backends,
        )

    def _emit(self, trace: Trace | None, event: AuthEvent) -> None:
        if self.metrics is not None:
            self.metrics.decision(event)
        if self.tracing is not None and trace is not None:
            self.tracing.end(trace.span, event)
        if self.hooks is not None:
            self.hooks.submit(event)


_KINDS = {"ApiKey": "api_key", "Bearer": "bearer"}


def _issuer(principal: Principal) -> str | None:
    issuer = principal.claims.get("iss") if principal.claims else None
    return loggable(issuer) if isinstance(issuer, str) else None


def route_of(scope: Scope, routes: object = None) -> str:
    """The route template that matches `scope` (Starlette's router), else the path; escaped.

    The routes are those of the app in `scope["app"]` (set by Starlette before its
    middleware runs), else `routes`.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        found = _routes_of(scope.get("app"))
        template = _match(routes if found is None else found, scope, "", 0)
    return loggable(scope["path"] if template is None else template)


def _routes_of(app: object) -> object:
    # The routes of a Starlette app or router, looked for through middleware that
    # keep the app they wrap in `.app`.
    for _ in range(16):
        if app is None:
            return None
        routes = getattr(getattr(app, "router", app), "routes", None)
        if routes is not None:
            return routes
        app = getattr(app, "app", None)
    return None


def _match(routes: object, scope: Scope, prefix: str, depth: int) -> str | None:
    if not isinstance(routes, (list, tuple)) or depth > 4:
        return None
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # noqa: BLE001 - a route the walk does not understand: no template
            return None
        if match is Match.NONE:
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            return None
        if isinstance(route, Mount):
            return _match(route.routes, {**scope, **child}, prefix + path, depth + 1)
        return prefix + path
    return None


def loggable(value: object) -> str:
    """`str(value)`, with line breaks and other unprintable characters backslash-escaped.

    Request data (a path with a decoded %0A, a token's subject) must not start a
    new log record.
    """
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


NO_OBSERVER = Observer()
"""For refusals made where no middleware's options apply: logged, not reported."""
