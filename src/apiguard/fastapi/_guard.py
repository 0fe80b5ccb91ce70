"""`Guard`: apiguard on a FastAPI app, as middleware or per route, with its OpenAPI document."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import BackgroundTasks, FastAPI
from fastapi.routing import APIRoute
from fastapi.security import SecurityScopes
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from apiguard._challenge import ErrorResponder
from apiguard._core import Authenticator, AuthMiddleware, Refused, identify, observer
from apiguard.authenticators import APIKeyAuth
from apiguard.exceptions import ApiGuardError, AuthError, ConfigurationError
from apiguard.fastapi._openapi import Description, complete
from apiguard.fastapi._route import ScopedRoute
from apiguard.policies import ScopeRules, _with_head, check_scopes
from apiguard.principal import Principal
from apiguard.tokens._http import check_url
from apiguard.tokens.discovery import discover

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from apiguard._core import GuardOptions

__all__ = ["Guard", "GuardRefusal", "install"]

logger = logging.getLogger("apiguard.fastapi")

# Where a per-route `Guard` leaves the challenge scheme of the credential it checked,
# for a later route-level refusal (`require_scopes`) of the same request.
_SCHEME = "apiguard.scheme"


class GuardRefusal(HTTPException):
    """A refusal by a per-route `Guard`, answered by the handler `Guard.install` adds.

    The response is the one the middleware sends for the same error: status,
    `WWW-Authenticate` challenge, body and headers.
    """

    def __init__(self, error: ApiGuardError, scheme: str, responder: ErrorResponder) -> None:
        refusal = responder.refusal(error, scheme)
        super().__init__(refusal.status, refusal.description, dict(refusal.headers))
        self.error = error
        self.scheme = scheme
        self.responder = responder


async def _answer_refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GuardRefusal)  # noqa: S101 - registered for this type only
    return await exc.responder.response(exc.error, exc.scheme, request.scope, request.receive)


class Guard:
    """apiguard on a FastAPI app: the middleware or a per-route dependency, and OpenAPI.

    `apiguard.fastapi.install(app, APIKeyAuth(store))` is the usual one line. Made
    by hand, a guard is installed in one of two ways:

    - `guard.install(app)`: the middleware guards every route (but `exclude_paths`),
      and `/docs`, `/redoc`, `/openapi.json` and Swagger UI's OAuth 2.0 redirect page
      are served without credentials (`public_docs`).
    - `guard.install(app, middleware=False)`: only the routes that depend on the
      guard need credentials: `APIRouter(dependencies=[Depends(guard)])`.

    Either way the guard is a dependency that returns the caller's `Principal`, and
    takes FastAPI's scopes: `Security(guard, scopes=["items:write"])`. The OpenAPI
    document declares the credentials (an `apiKey` scheme per header; for tokens, the
    OAuth 2.0 client credentials flow when a token URL is known, else HTTP bearer),
    the requirement of each operation, with the scopes from `ScopeRules`,
    `require_scopes` and `Security`, and the refusals.

    Args:
        *authenticators: The credentials accepted (`APIKeyAuth`, `BearerAuth`).
        token_url: The authorization server's token endpoint, for the OAuth 2.0
            client credentials flow in the document (Swagger UI gets tokens there).
        issuer: Instead of `token_url`: the issuer whose metadata (RFC 8414, then
            OpenID Connect Discovery) names it, fetched once at the app's startup.
            Until then, or if it cannot be fetched, tokens are documented as HTTP
            bearer.
        scope_descriptions: Text for each scope in the document.
        bearer_format: `bearerFormat` of the HTTP bearer scheme (`None` to leave it out).
        public_docs: Serve the documentation pages and the document without
            credentials (middleware mode).
        **options: The options of `AuthMiddleware` (`realm`, `exclude_paths`,
            `policies`, `problem_details`, ...). Per route, `exclude_paths`,
            `exclude_methods`, `allow_preflight` and `hide_credentials` do not apply.

    Raises:
        ConfigurationError: No authenticator, or both `token_url` and `issuer`.
    """

    def __init__(
        self,
        *authenticators: Authenticator,
        token_url: str | None = None,
        issuer: str | None = None,
        scope_descriptions: Mapping[str, str] | None = None,
        bearer_format: str | None = "JWT",
        public_docs: bool = True,
        **options: Unpack[GuardOptions],
    ) -> None:
        if not authenticators:
            raise ConfigurationError("at least one authenticator is required")
        if token_url is not None and issuer is not None:
            raise ConfigurationError("pass token_url or issuer, not both")
        for url, name in ((token_url, "token_url"), (issuer, "issuer")):
            if url is not None:
                check_url(url, name)
        self._authenticators = tuple(authenticators)
        self._token_url = token_url
        self._issuer = issuer
        self._scope_descriptions = dict(scope_descriptions or {})
        self._bearer_format = bearer_format
        self._public_docs = public_docs
        self._options = options
        self._optional = options.get("optional", False)
        self._policies = tuple(options.get("policies", ()))
        self._failures = options.get("failed_auth_limit")
        self._responder = ErrorResponder(
            schemes=[(a.scheme, a.challenge_params) for a in self._authenticators],
            realm=options.get("realm", "api"),
            problem_details=options.get("problem_details", False),
            retry_after=options.get("retry_after", 5),
            hook=options.get("error_response"),
        )
        self._bookkeeping = tuple(
            keeper
            for each in self._authenticators
            for part in ("bookkeeping", "usage")
            if (keeper := getattr(each, part, None)) is not None
        )
        self._middleware = False
        self._observer = observer(
            self._authenticators,
            options.get("on_event"),
            options.get("metrics"),
            options.get("tracing"),
        )

    @property
    def token_url(self) -> str | None:
        """The token endpoint the document names, once known."""
        return self._token_url

    def install(self, app: FastAPI, *, middleware: bool = True) -> None:
        """Guard `app` and document it.

        The app's routes declared from then on are `ScopedRoute`s (unless the app
        has a route class of its own): their `require_scopes` dependencies are
        checked without FastAPI's dependency machinery.

        Args:
            app: The FastAPI app.
            middleware: Add apiguard's middleware (every route not excluded needs a
                credential). With `False`, only routes depending on the guard do.

        Raises:
            ConfigurationError: The guard is installed twice.
        """
        if self._middleware or getattr(app.state, "apiguard_guard", None) is not None:
            raise ConfigurationError("a guard is installed once, on one app")
        app.state.apiguard_guard = self
        app.add_exception_handler(GuardRefusal, _answer_refusal)
        if not middleware:  # route-level refusals have no middleware to answer them
            app.add_exception_handler(AuthError, self._answer_route_refusal)
        if app.router.route_class is APIRoute:  # a route class of the app's own is kept
            app.router.route_class = ScopedRoute  # for the routes declared from now on
        self._middleware = middleware
        exclude = list(self._options.get("exclude_paths", ()))
        if middleware:
            if self._public_docs:
                exclude += _docs_paths(app)
            options: GuardOptions = {**self._options, "exclude_paths": exclude}
            app.add_middleware(AuthMiddleware, authenticators=self._authenticators, **options)
        description = self._describe(exclude if middleware else ())

        completed: list[dict[str, Any]] = []  # the last document completed

        def openapi() -> dict[str, Any]:
            # FastAPI makes the document again when routes change (and after
            # discovery resets it); each new one is completed once.
            document = FastAPI.openapi(app)
            if not completed or completed[0] is not document:
                complete(document, app.routes, description(), self._is_self)
                completed[:] = [document]
            return document

        app.openapi = openapi  # type: ignore[method-assign]
        if self._issuer is not None:
            _on_startup(app, self._discover_token_url(app))

    async def _answer_route_refusal(self, request: Request, exc: Exception) -> Response:
        """Answer a refusal raised after the guard let the caller in (`require_scopes`)."""
        assert isinstance(exc, AuthError)  # noqa: S101 - registered for this type only
        scope = request.scope
        scheme = scope.get(_SCHEME) or self._authenticators[0].scheme
        error = self._observer.refused(exc, scope, scheme, None)
        return await self._responder.response(error, scheme, scope, request.receive)

    def _is_self(self, call: object) -> bool:
        return call is self

    def _describe(self, exclude: Sequence[str]) -> Callable[[], Description]:
        api_keys: list[tuple[str, str, str]] = []
        bearer: str | None = None
        for each in self._authenticators:
            if isinstance(each, APIKeyAuth):
                names = [("header", n) for n in each.header_names]
                if each.query_param is not None:
                    names.append(("query", each.query_param))
                for location, name in names:
                    scheme = "APIKey" if not api_keys else f"APIKey-{name}"
                    api_keys.append((scheme, location, name))
            elif each.scheme == "Bearer":
                bearer = "OAuth2"
        rules = tuple(
            rule
            for policy in self._policies
            if isinstance(policy, ScopeRules)
            for rule in policy.rules
        )
        methods = _with_head(frozenset(m.upper() for m in self._options.get("exclude_methods", ())))

        def description() -> Description:
            return Description(
                api_keys=tuple(api_keys),
                bearer_scheme=bearer,
                bearer_format=self._bearer_format,
                token_url=self._token_url,
                scope_descriptions=self._scope_descriptions,
                everywhere=self._middleware,
                exclude_exact=frozenset(p for p in exclude if not p.endswith("*")),
                exclude_prefixes=tuple(p[:-1] for p in exclude if p.endswith("*")),
                exclude_methods=methods if self._middleware else frozenset(),
                rules=rules,
                optional=self._optional,
                problem_details=self._options.get("problem_details", False),
                custom_body=self._options.get("error_response") is not None,
                rate_limited=self._rate_limited(),
            )

        return description

    def _rate_limited(self) -> bool:
        """Whether a policy or the failed-authentication limit may answer 429."""
        if self._failures is not None:
            return True
        limiting = sys.modules.get("apiguard.ratelimit")  # loaded if a limit is configured
        return limiting is not None and any(
            isinstance(policy, limiting.RateLimits | limiting.Quotas) for policy in self._policies
        )

    def _discover_token_url(self, app: FastAPI) -> Callable[[], Awaitable[None]]:
        issuer = self._issuer
        assert issuer is not None  # noqa: S101 - only called with an issuer

        async def fetch() -> None:
            try:
                async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
                    metadata = await discover(client, issuer)
                url = metadata.get("token_endpoint")
                if not isinstance(url, str):
                    raise ApiGuardError("the issuer's metadata names no token_endpoint")
                check_url(url, "token_endpoint")
            except ApiGuardError as exc:
                logger.warning(
                    "OpenAPI: no token endpoint from %s (%s); documenting HTTP bearer", issuer, exc
                )
                return
            self._token_url = url
            app.openapi_schema = None  # made again, with the flow

        return fetch

    async def __call__(
        self,
        connection: HTTPConnection,
        security_scopes: SecurityScopes,
        background_tasks: BackgroundTasks,
    ) -> Principal:
        """The caller's `Principal`, with the scopes FastAPI's `SecurityScopes` demands.

        Behind the middleware, the caller it authenticated; per route, the
        credential is found and checked here, by the same pipeline.
        """
        required = (frozenset(security_scopes.scopes),) if security_scopes.scopes else ()
        if self._middleware:  # the middleware answers what is raised here
            principal = connection.scope.get("user")
            if not isinstance(principal, Principal):
                raise ConfigurationError("the guard's middleware is not in front of this route")
            if required:
                check_scopes(principal, required)
            return principal
        scope = connection.scope
        trace = self._observer.trace(scope) if self._observer.wanted() else None
        try:
            # Per route, a policy's response fields (RateLimit) are not added: only
            # the middleware sees the response start.
            grant, used = await identify(
                self._authenticators,
                scope,
                optional=self._optional,
                policies=self._policies,
                failures=self._failures,
                trace=trace,
            )
            # Let through, as the middleware counts: before the route's own scope check,
            # and once a request, however many of its dependencies use the guard.
            counter = getattr(used, "usage", None)
            if counter is not None and not isinstance(scope.get("user"), Principal):
                counter.count(grant[0].identity)
            if required:
                try:
                    check_scopes(grant[0], required)
                except ApiGuardError as exc:
                    raise Refused(exc, used or self._authenticators[0]) from None
        except Refused as refused:
            scheme = refused.authenticator.scheme
            error = self._observer.refused(refused.error, scope, scheme, trace)
            await self._flush()
            raise GuardRefusal(error, scheme, self._responder) from None
        scope["user"], scope["auth"] = grant
        scope[_SCHEME] = (used or self._authenticators[0]).scheme
        self._observer.allowed(trace, scope, grant[0])
        if any(keeper.pending for keeper in self._bookkeeping):
            background_tasks.add_task(self._flush)  # after the response is sent
        return grant[0]

    async def _flush(self) -> None:
        for keeper in self._bookkeeping:
            if keeper.pending:
                await keeper.flush()


def install(
    app: FastAPI,
    *authenticators: Authenticator,
    token_url: str | None = None,
    issuer: str | None = None,
    scope_descriptions: Mapping[str, str] | None = None,
    bearer_format: str | None = "JWT",
    public_docs: bool = True,
    **options: Unpack[GuardOptions],
) -> Guard:
    """Guard every route of `app` with apiguard's middleware, and document it in OpenAPI.

    `install(app, APIKeyAuth(store))` replaces `app.add_middleware(APIKeyMiddleware, ...)`.
    The arguments are those of `Guard`; the guard is returned, a dependency for
    the caller (`Security(guard, scopes=[...])`).
    """
    guard = Guard(
        *authenticators,
        token_url=token_url,
        issuer=issuer,
        scope_descriptions=scope_descriptions,
        bearer_format=bearer_format,
        public_docs=public_docs,
        **options,
    )
    guard.install(app)
    return guard


def _docs_paths(app: FastAPI) -> list[str]:
    paths = [app.openapi_url, app.docs_url, app.redoc_url]
    if app.docs_url:
        paths.append(app.swagger_ui_oauth2_redirect_url)
    return [p for p in paths if p]


def _on_startup(app: FastAPI, task: Callable[[], Awaitable[None]]) -> None:
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        await task()
        async with inner(application) as state:
            yield state

    app.router.lifespan_context = lifespan
