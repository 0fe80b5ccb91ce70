"""`OpenTelemetryTracing`: a span per authentication decision, a child per backend call.

Needs the `otel` extra (`pip install 'apiguard-asgi[otel]'`, the OpenTelemetry API);
nothing imports `opentelemetry` until an `OpenTelemetryTracing` is made. Spans go
wherever the app's tracer provider sends them (the OpenTelemetry SDK and an
exporter, set up by the app).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apiguard.events import AuthEvent
from apiguard.exceptions import ConfigurationError
from apiguard.types import Scope

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["OpenTelemetryTracing"]


class OpenTelemetryTracing:
    """Trace apiguard's decisions with OpenTelemetry.

    `app.add_middleware(APIKeyMiddleware, store=..., tracing=OpenTelemetryTracing())`

    Each decision is a span `apiguard.authenticate` (kind INTERNAL), a child of the
    current span (the server span of an instrumented app), with the attributes
    `http.request.method`, `http.route`, `apiguard.outcome`,
    `apiguard.credential.kind`, `apiguard.credential.id`, `apiguard.issuer`,
    `apiguard.cache` and `apiguard.backend_calls`; a refusal adds
    `http.response.status_code`, `error.type` and `apiguard.reason`, and sets the
    span's status to ERROR. Each backend call made while deciding is a child span,
    `apiguard.store`, `apiguard.jwks`, `apiguard.discovery`,
    `apiguard.introspection`, `apiguard.shared_cache` or `apiguard.replay_store`,
    with status ERROR when
    the call failed. Attributes never hold a key, a secret or a token.

    Args:
        tracer_provider: The `TracerProvider` to take the tracer from; the global
            one (`opentelemetry.trace.set_tracer_provider`) by default.

    Raises:
        ConfigurationError: opentelemetry-api is not installed.
    """

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError:
            raise ConfigurationError(
                "OpenTelemetryTracing needs opentelemetry-api: pip install 'apiguard-asgi[otel]'"
            ) from None
        from apiguard import __version__

        self._trace = trace
        self._tracer = trace.get_tracer("apiguard", __version__, tracer_provider=tracer_provider)
        self._internal = trace.SpanKind.INTERNAL
        self._client = trace.SpanKind.CLIENT
        self._error = trace.StatusCode.ERROR

    def start(self, scope: Scope) -> Span:
        """Start the span of one decision (called by the middleware)."""
        attributes = {}
        method = scope.get("method")
        if method is not None:
            attributes["http.request.method"] = method
        return self._tracer.start_span(
            "apiguard.authenticate", kind=self._internal, attributes=attributes
        )

    def child(self, parent: Span, kind: str) -> Span:
        """Start the span of one backend call under `parent` (called by the middleware)."""
        return self._tracer.start_span(
            f"apiguard.{kind}",
            context=self._trace.set_span_in_context(parent),
            kind=self._client,
            attributes={"apiguard.backend": kind},
        )

    def end_child(self, span: Span, error: BaseException | None) -> None:
        """End a backend call's span; `error` when it failed."""
        if error is not None:
            span.set_status(self._error, type(error).__name__)
            span.set_attribute("error.type", type(error).__name__)
        span.end()

    def end(self, span: Span, event: AuthEvent) -> None:
        """Set the decision's attributes on its span and end it."""
        attributes: dict[str, Any] = {
            "http.route": event.route,
            "apiguard.outcome": event.outcome,
        }
        for name, value in (
            ("apiguard.credential.kind", event.credential_kind),
            ("apiguard.credential.id", event.credential_id),
            ("apiguard.issuer", event.issuer),
            ("apiguard.cache", event.cache),
            ("apiguard.backend_calls", event.backend_calls),
        ):
            if value is not None:
                attributes[name] = value
        if event.outcome == "refused":
            attributes["http.response.status_code"] = event.status
            attributes["error.type"] = event.reason
            attributes["apiguard.reason"] = event.reason
            span.set_status(self._error, event.reason)
        span.set_attributes(attributes)
        span.end()
