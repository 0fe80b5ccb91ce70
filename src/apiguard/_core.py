"""The request pipeline every apiguard middleware shares.

For each http or websocket connection: skip excluded routes and CORS preflights,
find exactly one credential, authenticate it, place the principal in
`scope["user"]`/`scope["auth"]`, and call the app. Refusals go through one
`ErrorResponder`. Nothing per-request is kept on `self`; the body is never read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol, TypedDict

from starlette.authentication import AuthCredentials
from starlette.middleware.cors import CORSMiddleware

from apiguard import _override
from apiguard._challenge import ErrorResponder, ErrorResponseHook
from apiguard._observe import NO_OBSERVER, MetricsSink, Observer, Trace, TracingSink
from apiguard._startup import SetupFailure, hold_setup_errors
from apiguard.events import EventHook
from apiguard.exceptions import (
    ApiGuardError,
    AuthError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidRequest,
    MissingCredentials,
)
from apiguard.metadata import ProtectedResourceMetadata
from apiguard.policies import Policy, _with_head, route_path
from apiguard.principal import ANONYMOUS, Grant
from apiguard.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AuthMiddleware", "Authenticator", "GuardOptions", "Refused", "identify", "log_refusal"]

logger = logging.getLogger("apiguard.middleware")

_ANONYMOUS_GRANT: Grant = (ANONYMOUS, AuthCredentials())
_GUARDED = frozenset({"http", "websocket"})


class Authenticator(Protocol):
    """One kind of credential: how to find it in a request and how to check it."""

    scheme: str
    """The `WWW-Authenticate` scheme this credential answers to (`ApiKey`, `Bearer`)."""

    challenge_params: tuple[tuple[str, str], ...]
    """Parameters added to every challenge of this scheme (e.g. `resource_metadata`)."""

    @property
    def extract(self) -> Callable[[Scope], bytes | None]:
        """`extract(scope)`: the credential in the request, or `None`.

        Raises `InvalidRequest` when the request carries conflicting credentials.
        """

    @property
    def authenticate(self) -> Callable[[bytes], Awaitable[Grant]]:
        """`await authenticate(credential)`: the principal and credentials.

        Raises `AuthError` or `BackendUnavailableError`.
        """

    def strip(self, scope: Scope) -> None:
        """Remove the credential from `scope`, so the app never sees it."""


Confirm = Callable[[Grant, bytes, Scope], Awaitable[None]]
"""`await confirm(grant, credential, scope)`: the request proves it may use the credential.

An authenticator's optional `confirm` attribute: run on every request after
`authenticate` (whose verdict may be cached), for checks that depend on the request,
such as a DPoP proof or a client certificate bound to the token. Raises `AuthError`
or `BackendUnavailableError`.
"""


Cached = Callable[[bytes], Grant | None]
"""`cached(credential)`: the grant of a credential already verified, or `None`.

An authenticator's optional `cached` attribute: the grant when the credential's
verdict is in its cache and the request needs no further check (no `confirm` work,
such as a DPoP proof or a bound certificate), without I/O and without raising;
`None` sends the request down the full path (`authenticate`, `confirm`), which
decides as always. It lets the middleware answer a request with a cached verdict
without an `await`.
"""


class Bookkeeping(Protocol):
    """Writes an authenticator defers until a response has been sent (key usage, say)."""

    @property
    def pending(self) -> bool:
        """Whether `flush()` has anything to write."""

    async def flush(self) -> None:
        """Write what is pending; never raises."""


class FailureLimit(Protocol):
    """Limits failed authentications per client (`apiguard.ratelimit.FailedAuthLimit`)."""

    async def check(self, scope: Scope) -> None:
        """Raise `RateLimitExceeded` if the request's client failed too often."""

    async def failed(self, scope: Scope) -> None:
        """Count a failed authentication by the request's client."""


class Counter(Protocol):
    """Counts the requests an authenticator's credentials were let through for."""

    def count(self, key_id: str) -> None:
        """Count one request of `key_id`; no I/O."""


class GuardOptions(TypedDict, total=False):
    """The options every apiguard middleware takes besides its credentials."""

    realm: str | None
    exclude_paths: Collection[str]
    exclude_methods: Collection[str]
    allow_preflight: bool
    optional: bool
    hide_credentials: bool
    problem_details: bool
    retry_after: int
    error_response: ErrorResponseHook | None
    policies: Sequence[Policy]
    failed_auth_limit: FailureLimit | None
    protected_resource: ProtectedResourceMetadata | None
    on_event: EventHook | None
    metrics: MetricsSink | None
    tracing: TracingSink | None


class AuthMiddleware:
    """Pure ASGI middleware: every http and websocket request must carry one valid credential.

    `app.add_middleware(AuthMiddleware, authenticators=[APIKeyAuth(...), BearerAuth(...)])`

    The request's credential is found by the authenticators, in order. A request
    may carry only one, once: two credentials, or one sent twice, are a 400
    `invalid_request`, so a bad credential is never skipped in favour of another. The one found is checked;
    a refusal is final. `APIKeyMiddleware` and `BearerTokenMiddleware` are this
    middleware with one authenticator.

    An `AuthError` that the app raises before it starts its response (from
    `apiguard.fastapi.require_scopes`, `apiguard.requires_scopes`, or its own code) is
    answered like the middleware's own refusals: same body, challenge and headers.

    Args:
        app: The ASGI app to protect.
        authenticators: The credentials accepted (`APIKeyAuth`, `BearerAuth`).
        realm: The challenge `realm`, or `None` for none.
        exclude_paths: Paths served without credentials: exact (`"/health"`) or,
            ending in `*`, prefixes (`"/public/*"`). Matched without the root path,
            and only on paths in normal form: when any is set, a path with a `.`,
            `..` or empty segment (also sent as `%2E`, `%2F`) is a 400
            `invalid_request`, since the router could resolve it to another route
            (see `apiguard.policies.route_path`).
        exclude_methods: HTTP methods served without credentials, on every path.
            HEAD is GET without the content (RFC 9110 §9.3.2), and Starlette
            answers it with the GET endpoint: `"GET"` covers HEAD too, and `"HEAD"`
            without `"GET"` is a `ConfigurationError`.
        allow_preflight: Pass CORS preflights (`OPTIONS` with `Origin` and
            `Access-Control-Request-Method`) without credentials to a Starlette
            `CORSMiddleware` directly inside this middleware, which answers them
            without calling the app; any other inner app is a `ConfigurationError`,
            since a preflight must never run application code unauthenticated.
            Off by default: preflights need credentials like any request. The
            usual setup instead puts `CORSMiddleware` outside apiguard (added
            after it), where it answers preflights before they arrive and adds
            its headers to apiguard's refusals.
        optional: A request without credentials gets the anonymous principal instead
            of a 401; a bad credential is still refused.
        hide_credentials: Remove the credential from the request before the app sees it,
            on every request passed to the app: excluded paths, methods and
            preflights included.
        problem_details: Send RFC 9457 `application/problem+json` bodies.
        retry_after: Seconds in the `Retry-After` header of a 503.
        error_response: `hook(connection, error) -> Response` (sync or async) to build
            refusals yourself; challenge and `Retry-After` headers are added if missing.
        policies: Checks run after authentication, in order, before the app: e.g.
            `ScopeRules([...])` for scopes by path and method. A policy's refusal
            (403 `insufficient_scope`, ...) is sent with the challenge of the
            credential that was used. Header fields a policy returns (the
            `RateLimit` fields of `apiguard.ratelimit.RateLimits`) are added to the
            app's `http.response.start`.
        failed_auth_limit: Limits failed authentications per client address
            (`apiguard.ratelimit.FailedAuthLimit`): checked before a credential is
            looked up, a 401 for a bad credential counted after. Over the limit,
            429 with `Retry-After`, and the store is not asked.
        protected_resource: Serve this API's RFC 9728 metadata
            (`ProtectedResourceMetadata`) at its well-known path, without
            credentials, and name its URL in every challenge (`resource_metadata`,
            RFC 9728 §5.1).
        on_event: `hook(event)` for each decision (an `apiguard.events.AuthEvent`):
            a coroutine function, run on the event loop, or a plain function, run
            in a worker thread; either way after the decision, never holding up
            the response, and its exceptions are logged (docs/observability.md).
        metrics: An `apiguard.prometheus.PrometheusMetrics` to count decisions,
            cache hits, backend calls and invalidations in.
        tracing: An `apiguard.otel.OpenTelemetryTracing`: a span per decision,
            with a child span per backend call.

    Raises:
        ConfigurationError: The options are wrong. When the middleware is made inside
            a running event loop, as Starlette and FastAPI make middleware at the first
            ASGI call, the error is held instead: the lifespan startup fails with its
            message (so the server exits), and without a lifespan every request gets
            503 and the first logs the message at ERROR.
    """

    _setup_failure: SetupFailure | None = None

    @hold_setup_errors
    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticators: Sequence[Authenticator],
        realm: str | None = "api",
        exclude_paths: Collection[str] = (),
        exclude_methods: Collection[str] = (),
        allow_preflight: bool = False,
        optional: bool = False,
        hide_credentials: bool = False,
        problem_details: bool = False,
        retry_after: int = 5,
        error_response: ErrorResponseHook | None = None,
        policies: Sequence[Policy] = (),
        failed_auth_limit: FailureLimit | None = None,
        protected_resource: ProtectedResourceMetadata | None = None,
        on_event: EventHook | None = None,
        metrics: MetricsSink | None = None,
        tracing: TracingSink | None = None,
    ) -> None:
        if not authenticators:
            raise ConfigurationError("at least one authenticator is required")
        if isinstance(exclude_paths, str) or isinstance(exclude_methods, str):
            raise ConfigurationError("exclude_paths and exclude_methods take collections, not str")
        for path in exclude_paths:
            if not path.startswith("/"):
                raise ConfigurationError(f"excluded paths start with '/': {path!r}")
        if allow_preflight and not isinstance(app, CORSMiddleware):
            raise ConfigurationError(
                "allow_preflight=True needs Starlette's CORSMiddleware directly inside this"
                " middleware, to answer preflights without running the app; or add"
                " CORSMiddleware after apiguard (outermost) and leave allow_preflight off"
            )
        if retry_after < 0:
            raise ConfigurationError("retry_after cannot be negative")
        self.app = app
        self._authenticators = tuple(authenticators)
        self._exact = frozenset(p for p in exclude_paths if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in exclude_paths if p.endswith("*"))
        self._methods = _with_head(frozenset(m.upper() for m in exclude_methods))
        if "HEAD" in self._methods and "GET" not in self._methods:
            raise ConfigurationError(
                "exclude_methods has HEAD without GET, but HEAD requests run GET handlers"
                " (RFC 9110 §9.3.2): exclude GET too, or neither"
            )
        self._check_paths = bool(self._exact or self._prefixes)
        self._check_exclusions = self._check_paths or bool(self._methods)
        self._allow_preflight = allow_preflight
        self._optional = optional
        self._hide = hide_credentials
        self._policies = tuple(policies)
        self._failures = failed_auth_limit
        # An authenticator with an optional `bookkeeping` or `usage` (APIKeyAuth) has
        # writes that wait until a response is out, so that no answer waits on them.
        self._bookkeeping: tuple[Bookkeeping, ...] = tuple(
            keeper
            for each in self._authenticators
            for part in ("bookkeeping", "usage")
            if (keeper := getattr(each, part, None)) is not None
        )
        self._observer = observer(self._authenticators, on_event, metrics, tracing, app)
        schemes = [(a.scheme, a.challenge_params) for a in self._authenticators]
        self._metadata = None
        if protected_resource is not None:
            self._metadata = protected_resource.responder(self._authenticators)
            link = ("resource_metadata", protected_resource.url)
            schemes = [
                (scheme, params if any(n == link[0] for n, _ in params) else (*params, link))
                for scheme, params in schemes
            ]
        # `usage.count(identity)` for each request let through with its credential.
        self._counters: dict[Authenticator, Callable[[str], None]] = {}
        for each in self._authenticators:
            counter: Counter | None = getattr(each, "usage", None)
            if counter is not None:
                self._counters[each] = counter.count
        # The warm path: one authenticator with a synchronous cache lookup, and nothing
        # that needs each request (policies, failure limits) besides it.
        self._cached: Cached | None = None
        if len(self._authenticators) == 1 and not self._policies and self._failures is None:
            self._cached = getattr(self._authenticators[0], "cached", None)
        self._responder = ErrorResponder(
            schemes=schemes,
            realm=realm,
            problem_details=problem_details,
            retry_after=retry_after,
            hook=error_response,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._setup_failure is not None:
            await self._setup_failure(self.app, scope, receive, send)
            return
        if scope["type"] not in _GUARDED:  # lifespan and anything else: untouched
            if scope["type"] == "lifespan" and self._bookkeeping:
                receive = self._flush_at_shutdown(receive)
            await self.app(scope, receive, send)
            return
        if self._metadata is not None and self._metadata.matches(scope):
            await self._metadata(scope, receive, send)  # public by definition (RFC 9728 §3)
            return
        try:
            passes = self._check_exclusions and self._excluded(scope)
        except InvalidRequest as exc:  # a path not in normal form
            await self._refuse(exc, self._authenticators[0], scope, receive, send)
            return
        if passes or (
            self._allow_preflight and scope.get("method") == "OPTIONS" and _is_preflight(scope)
        ):
            scope.setdefault("user", ANONYMOUS)
            scope.setdefault("auth", _ANONYMOUS_GRANT[1])
            if self._hide:  # unchecked, but still never shown to the app
                for each in self._authenticators:
                    each.strip(scope)
            try:
                await self.app(scope, receive, send)
            except AuthError as exc:  # a route-level check refused the anonymous caller
                await self._refuse(exc, self._authenticators[0], scope, receive, send)
            return

        if _override.installed and (overridden := _override.grant_for(self, scope)) is not None:
            await self._overridden(overridden, scope, receive, send)
            return

        # Observed: a sink is set, or refusals are logged. Otherwise nothing is built.
        observer = self._observer
        observed = observer.active or logger.isEnabledFor(logging.INFO)  # observer.wanted()
        trace: Trace | None = None
        added: list[tuple[bytes, bytes]] | None = None
        grant: Grant | None = None
        authenticator: Authenticator | None = None
        if self._cached is not None and not observed:
            # A verdict in the cache answers without the pipeline's awaits; anything
            # else (no credential, a malformed request, a miss) takes the full path,
            # which decides, logs and refuses as always.
            authenticator = self._authenticators[0]
            try:
                credential = authenticator.extract(scope)
                grant = None if credential is None else self._cached(credential)
            except Exception:  # noqa: BLE001 - the full path meets it again and answers it
                grant = None
        if grant is None:
            if observed:
                trace = observer.trace(scope)
            added = []
            try:
                grant, authenticator = await identify(
                    self._authenticators,
                    scope,
                    optional=self._optional,
                    policies=self._policies,
                    failures=self._failures,
                    fields=added,
                    trace=trace,
                )
            except Refused as refused:
                await self._refuse(
                    refused.error, refused.authenticator, scope, receive, send, trace
                )
                return

        scope["user"], scope["auth"] = grant
        if self._counters and authenticator is not None:
            count = self._counters.get(authenticator)
            if count is not None:  # authenticated and let through: a request to count
                count(grant[0].identity)
        if trace is not None:
            observer.allowed(trace, scope, grant[0])
        if self._hide and authenticator is not None:
            authenticator.strip(scope)
        if added and scope["type"] == "http":
            send = _adding_headers(send, added)
        try:
            await self.app(scope, receive, send)
        except AuthError as exc:
            # A route-level check (`require_scopes`, `requires_scopes`, or the app's own
            # `raise InsufficientScope(...)` before it answers) refused: the same
            # response as the middleware's own refusals, with the credential's challenge.
            await self._refuse(exc, authenticator or self._authenticators[0], scope, receive, send)
            return
        for keeper in self._bookkeeping:  # the response is out: nobody waits on this
            if keeper.pending:
                await keeper.flush()

    def _flush_at_shutdown(self, receive: Receive) -> Receive:
        """`receive` for the lifespan: pending writes are flushed at shutdown.

        Before the app sees `lifespan.shutdown`, so before its own shutdown code
        closes the store; the server has finished its requests by then.
        """

        async def receive_and_flush() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                for keeper in self._bookkeeping:
                    await keeper.flush()
            return message

        return receive_and_flush

    async def _overridden(self, grant: Grant, scope: Scope, receive: Receive, send: Send) -> None:
        """A request under `apiguard.testing.override_authentication`: its grant instead of
        the credentials; policies and route-level checks still apply."""
        authenticator = self._authenticators[0]
        try:
            added: list[tuple[bytes, bytes]] = []
            for policy in self._policies:
                fields = await policy.check(grant[0], scope)
                if fields:
                    added.extend(fields)
            scope["user"], scope["auth"] = grant
            if added and scope["type"] == "http":
                send = _adding_headers(send, added)
            await self.app(scope, receive, send)
        except AuthError as exc:
            await self._refuse(exc, authenticator, scope, receive, send)

    def _excluded(self, scope: Scope) -> bool:
        if scope.get("method") in self._methods:
            return True
        if not self._check_paths:
            return False
        path = route_path(scope)  # refuses paths not in normal form
        return path in self._exact or path.startswith(self._prefixes)

    async def _refuse(
        self,
        exc: ApiGuardError,
        authenticator: Authenticator,
        scope: Scope,
        receive: Receive,
        send: Send,
        trace: Trace | None = None,
    ) -> None:
        exc = self._observer.refused(exc, scope, authenticator.scheme, trace)
        await self._responder.deny(exc, authenticator.scheme, scope, receive, send)
        for keeper in self._bookkeeping:
            if keeper.pending:
                await keeper.flush()


class Refused(Exception):
    """`identify` refused the request: the error, and the credential whose challenge it gets."""

    def __init__(self, error: ApiGuardError, authenticator: Authenticator) -> None:
        super().__init__(error)
        self.error = error
        self.authenticator = authenticator


async def identify(
    authenticators: Sequence[Authenticator],
    scope: Scope,
    *,
    optional: bool,
    policies: Sequence[Policy],
    failures: FailureLimit | None = None,
    fields: list[tuple[bytes, bytes]] | None = None,
    trace: Trace | None = None,
) -> tuple[Grant, Authenticator | None]:
    """Find the request's one credential, check it and run the policies.

    The pipeline of `AuthMiddleware`, also run per route by `apiguard.fastapi.Guard`.
    With `failures`, a credential is checked only while its client has not failed
    too often, and a 401 for a bad credential is counted. Response header fields
    the policies return are appended to `fields`, if given.

    `trace`, when given, collects what the decision costs (cache verdict, backend
    calls) for its `AuthEvent`.

    Returns:
        The grant, and the authenticator whose credential was used (`None` for the
        anonymous grant of optional mode).

    Raises:
        Refused: With the error to answer and the authenticator whose scheme the
            challenge names; an unexpected exception becomes a 503 (fail closed).
    """
    # The scheme that was tried carries the error challenge (RFC 6750 §3).
    if trace is not None:
        with trace:
            return await _identify(authenticators, scope, optional, policies, failures, fields)
    return await _identify(authenticators, scope, optional, policies, failures, fields)


async def _identify(
    authenticators: Sequence[Authenticator],
    scope: Scope,
    optional: bool,
    policies: Sequence[Policy],
    failures: FailureLimit | None,
    fields: list[tuple[bytes, bytes]] | None,
) -> tuple[Grant, Authenticator | None]:
    authenticator: Authenticator | None = None
    attempted = authenticators[0]
    try:
        credential = None
        for attempted in authenticators:
            found = attempted.extract(scope)
            if found is not None:
                if authenticator is not None:
                    raise InvalidRequest(reason="several credentials")
                authenticator, credential = attempted, found
        if authenticator is None or credential is None:
            if not optional:
                raise MissingCredentials
            grant = _ANONYMOUS_GRANT
        else:
            if failures is not None:
                await failures.check(scope)  # before the store is asked
            grant = await authenticator.authenticate(credential)
            confirm: Confirm | None = getattr(authenticator, "confirm", None)
            if confirm is not None:  # per request, after a possibly cached verdict
                await confirm(grant, credential, scope)
        principal = grant[0]
        try:
            for policy in policies:
                added = await policy.check(principal, scope)
                if added and fields is not None:
                    fields.extend(added)
        except AuthError as exc:
            # A policy refused an authenticated caller: name the credential in the log.
            if exc.credential_id is None:
                exc.credential_id = principal.key_id or principal.client_id or principal.subject
            raise
    except ApiGuardError as exc:
        if (
            failures is not None
            and isinstance(exc, AuthError)
            and exc.status_code == 401
            and exc.error is not None  # a bad credential, not a missing one
        ):
            await _count_failure(failures, scope)
        raise Refused(exc, authenticator or attempted) from None
    except Exception as exc:
        # Fail closed: a bug or an unexpected driver error is never a 500 or a pass.
        logger.exception("authentication failed unexpectedly; answering 503")
        error = BackendUnavailableError(type(exc).__name__)
        raise Refused(error, authenticator or attempted) from None
    return grant, authenticator


def log_refusal(
    exc: ApiGuardError,
    scope: Scope,
    *,
    scheme: str | None = None,
    trace: Trace | None = None,
    observer: Observer = NO_OBSERVER,
) -> ApiGuardError:
    """Log a refusal and report its event; return the error to answer.

    A configuration error is answered as a 503. `scheme` is the challenge scheme
    of the credential refused (its kind in the event).
    """
    return observer.refused(exc, scope, scheme, trace)


def observer(
    authenticators: Sequence[Authenticator],
    on_event: EventHook | None,
    metrics: MetricsSink | None,
    tracing: TracingSink | None,
    app: object = None,
) -> Observer:
    """The `Observer` for a middleware's (or a `Guard`'s) observability options."""
    if metrics is not None:
        metrics.watch(tuple(authenticators))
    return Observer(on_event=on_event, metrics=metrics, tracing=tracing, app=app)


async def _count_failure(failures: FailureLimit, scope: Scope) -> None:
    try:
        await failures.failed(scope)
    except Exception:  # the refusal goes out anyway; the outage is logged
        logger.exception("could not count a failed authentication")


def _adding_headers(send: Send, fields: list[tuple[bytes, bytes]]) -> Send:
    """`send` that adds `fields` to the response start; every other message unchanged."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *fields]}
        await send(message)

    return sending


def _is_preflight(scope: Scope) -> bool:
    # A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method, the
    # test CORSMiddleware applies before answering a request itself.
    names = {name for name, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names
