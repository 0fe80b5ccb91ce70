"""`PrometheusMetrics`: apiguard's decisions, caches and backends as Prometheus metrics.

Needs the `prometheus` extra (`pip install 'apiguard-asgi[prometheus]'`); nothing
imports `prometheus_client` until a `PrometheusMetrics` is made. Several worker
processes (uvicorn `--workers`, gunicorn) share their counts through
prometheus_client's multiprocess mode: set `PROMETHEUS_MULTIPROC_DIR` before the
workers start (docs/observability.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from apiguard.events import BACKENDS, AuthEvent, reason_label
from apiguard.exceptions import ConfigurationError
from apiguard.keys.channel import ALL_KEYS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics"]

DEFAULT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
"""Decision latency buckets, in seconds: a cached verdict takes microseconds, a
store lookup or an introspection milliseconds."""


class PrometheusMetrics:
    """Counters and a histogram for every decision of the middleware it is given to.

    `app.add_middleware(APIKeyMiddleware, store=..., metrics=PrometheusMetrics())`

    Make one per registry (per process) and give it to every middleware and `Guard`
    that should count into it. Metrics (with the default `namespace`):

    - `apiguard_decisions_total{outcome, reason}`: decisions; `reason` is one of
      `apiguard.events.REFUSAL_REASONS`, `other`, or empty when allowed.
    - `apiguard_decision_duration_seconds{outcome}`: how long decisions took.
    - `apiguard_cache_total{result}`: verification cache `hit`s and `miss`es.
    - `apiguard_backend_calls_total{backend}` and `apiguard_backend_errors_total{backend}`:
      calls made while deciding, to `store`, `jwks`, `discovery`, `introspection`,
      `shared_cache` and `replay_store`, and those that failed.
    - `apiguard_jwks_refreshes_total`: key set (JWKS) fetches.
    - `apiguard_invalidations_total{scope}`: key invalidations applied to the
      verification caches (a revoke or rotation here or, through the store's push
      channel, in another process): `key` for one key, `all` after the channel
      (re)connected.

    Args:
        registry: The `prometheus_client.CollectorRegistry` to register in; the
            default is prometheus_client's global `REGISTRY`.
        namespace: The metric name prefix.
        buckets: The latency histogram's buckets, in seconds.

    Raises:
        ConfigurationError: prometheus_client is not installed, or the registry has
            apiguard's metrics already (make one `PrometheusMetrics` per registry).
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "apiguard",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigurationError(
                "PrometheusMetrics needs prometheus-client: pip install 'apiguard-asgi[prometheus]'"
            ) from None
        where: dict[str, Any] = {
            "registry": prom.REGISTRY if registry is None else registry,
            "namespace": namespace,
        }
        try:
            self.decisions = prom.Counter(
                "decisions", "Authentication decisions.", ["outcome", "reason"], **where
            )
            self.duration = prom.Histogram(
                "decision_duration_seconds",
                "Seconds an authentication decision took.",
                ["outcome"],
                buckets=tuple(buckets),
                **where,
            )
            self.cache = prom.Counter(
                "cache", "Verification cache lookups, by result.", ["result"], **where
            )
            self.backend_calls = prom.Counter(
                "backend_calls", "Backend calls made while deciding.", ["backend"], **where
            )
            self.backend_errors = prom.Counter(
                "backend_errors", "Backend calls that failed.", ["backend"], **where
            )
            self.jwks_refreshes = prom.Counter("jwks_refreshes", "JWKS fetches.", **where)
            self.invalidations = prom.Counter(
                "invalidations", "Key invalidations applied to caches.", ["scope"], **where
            )
        except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
            raise ConfigurationError(
                f"{exc}: make one PrometheusMetrics per registry and give it to each middleware"
            ) from None
        # Label children made once: the hot path does no label lookups.
        self._hit = self.cache.labels("hit")
        self._miss = self.cache.labels("miss")
        self._calls = {kind: self.backend_calls.labels(kind) for kind in BACKENDS}
        self._errors = {kind: self.backend_errors.labels(kind) for kind in BACKENDS}
        self._allowed = self.decisions.labels("allowed", "")
        self._allowed_duration = self.duration.labels("allowed")
        self._refused_duration = self.duration.labels("refused")
        self._watched: set[int] = set()

    def decision(self, event: AuthEvent) -> None:
        """Count one decision (called by the middleware)."""
        if event.outcome == "allowed":
            self._allowed.inc()
            duration = self._allowed_duration
        else:
            self.decisions.labels("refused", reason_label(event.reason)).inc()
            duration = self._refused_duration
        if event.latency is not None:
            duration.observe(event.latency)
        if event.cache == "hit":
            self._hit.inc()
        elif event.cache == "miss":
            self._miss.inc()

    def backend(self, kind: str, failed: bool) -> None:
        """Count one backend call (called by the middleware)."""
        if kind not in self._calls:  # a backend apiguard does not know: not labelled
            return
        self._calls[kind].inc()
        if failed:
            self._errors[kind].inc()
        if kind == "jwks":
            self.jwks_refreshes.inc()

    def invalidated(self, key_id: str) -> None:
        """Count one invalidation applied (a key store's change listener)."""
        self.invalidations.labels("all" if key_id == ALL_KEYS else "key").inc()

    def watch(self, authenticators: tuple[object, ...]) -> None:
        """Listen to the key stores of `authenticators` for invalidations."""
        for each in authenticators:
            store = getattr(getattr(each, "verifier", None), "store", None)
            add_listener = getattr(store, "add_listener", None)
            if add_listener is not None and id(store) not in self._watched:
                self._watched.add(id(store))
                add_listener(self.invalidated)
