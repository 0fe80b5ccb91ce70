"""Auth events: fields, logging formatters, the on_event hook, Prometheus and OpenTelemetry."""

from __future__ import annotations

import ast
import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from pythonjsonlogger.json import JsonFormatter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import apiguard._observe
from apiguard import (
    APIKeyMiddleware,
    AuthError,
    AuthEvent,
    BackendUnavailableError,
    BearerTokenMiddleware,
    ConfigurationError,
    Principal,
)
from apiguard._hooks import HookRunner
from apiguard.events import REFUSAL_REASONS, reason_label
from apiguard.keys import IssuedKey, KeyManager, MemoryKeyStore
from apiguard.otel import OpenTelemetryTracing
from apiguard.prometheus import PrometheusMetrics
from apiguard.tokens import JWTIntrospector
from apiguard.types import Receive, Scope, Send

from .conftest import PEPPER, SECRET_SHAPES, MakeClient
from .leak_scan import LeakScanner
from .token_support import AUDIENCE, ISSUER, FakeIssuer, mint

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parent.parent
EVENT_FIELDS = {
    "apiguard_outcome",
    "apiguard_reason",
    "apiguard_status",
    "apiguard_connection",
    "apiguard_method",
    "apiguard_route",
    "apiguard_credential_kind",
    "apiguard_credential_id",
    "apiguard_issuer",
    "apiguard_latency_ms",
    "apiguard_cache",
    "apiguard_backend_calls",
}


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.path_params["item_id"])


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Mount("/v1", routes=[Route("/items/{item_id}", item)]),
            WebSocketRoute("/ws", ws_endpoint),
        ]
    )


class Recorder:
    """An async on_event hook that keeps events and can be made to wait."""

    def __init__(self) -> None:
        self.events: list[AuthEvent] = []
        self.arrived = anyio.Event()
        self.release = anyio.Event()
        self.hold = False
        self.changed = anyio.Event()

    async def __call__(self, event: AuthEvent) -> None:
        if self.hold:
            self.arrived.set()
            await self.release.wait()
        self.events.append(event)
        self.arrived.set()
        self.changed.set()

    async def next(self) -> AuthEvent:
        with anyio.fail_after(10):
            while not self.events:
                self.changed = anyio.Event()
                await self.changed.wait()
        return self.events.pop(0)


@pytest.fixture
async def issued(hasher: Any) -> AsyncIterator[tuple[MemoryKeyStore, IssuedKey]]:
    store = MemoryKeyStore()
    key = await KeyManager(store, hasher).create("ci", scopes=["items:read"])
    yield store, key
    await store.aclose()


@pytest.fixture
def spans() -> Iterator[tuple[OpenTelemetryTracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield OpenTelemetryTracing(tracer_provider=provider), exporter
    provider.shutdown()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --- the event ---------------------------------------------------------------------


async def test_allowed_event_names_key_route_cache_and_store_calls(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    """A first request misses the cache and reads the store; the second is a cache hit."""
    store, key = issued
    hook = Recorder()
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER, on_event=hook)
    async with make_client(app, headers={"X-API-Key": key.key}) as client:
        assert (await client.get("/items/7")).status_code == 200
        first = await hook.next()
        assert (await client.get("/v1/items/8")).status_code == 200
        second = await hook.next()
    assert first.outcome == "allowed"
    assert (first.status, first.reason) == (None, None)
    assert (first.connection, first.method) == ("http", "GET")
    assert first.route == "/items/{item_id}"  # the template, not /items/7
    assert (first.credential_kind, first.credential_id) == ("api_key", key.record.key_id)
    assert (first.cache, first.backend_calls) == ("miss", ("store",))
    assert first.latency is not None
    assert first.latency >= 0
    assert second.route == "/v1/items/{item_id}"
    assert (second.cache, second.backend_calls) == ("hit", ())


async def test_refused_event_carries_status_reason_and_key_id(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    store, key = issued
    hook = Recorder()
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER, on_event=hook)
    wrong = key.key[:-10] + "A" * 10  # the right key id, another secret
    async with make_client(app) as client:
        assert (await client.get("/nowhere", headers={"X-API-Key": wrong})).status_code == 401
        refused = await hook.next()
        assert (await client.get("/items/1")).status_code == 401
        missing = await hook.next()
    assert refused.outcome == "refused"
    assert refused.status == 401
    assert refused.reason in {"wrong secret", "bad checksum"}
    assert refused.route == "/nowhere"  # no route matches: the path
    assert refused.credential_kind == "api_key"
    assert (missing.reason, missing.credential_kind, missing.cache) == ("missing", None, None)
    assert missing.backend_calls == ()


async def test_route_is_escaped_when_it_is_the_path(make_client: MakeClient) -> None:
    """A path with a decoded line break cannot start a new log record."""
    hook = Recorder()
    app = APIKeyMiddleware(make_app(), store=MemoryKeyStore(), pepper=PEPPER, on_event=hook)
    async with make_client(app) as client:
        await client.get("/a%0Ab")
    assert (await hook.next()).route == "/a\\nb"


def test_websocket_decisions_are_events(hasher: Any) -> None:
    store = MemoryKeyStore()
    key = anyio.run(lambda: KeyManager(store, hasher).create("ci"))
    events: list[AuthEvent] = []
    done = threading.Event()

    def hook(event: AuthEvent) -> None:  # a plain function: run in a worker thread
        events.append(event)
        done.set()

    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER, on_event=hook)
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws", headers={"X-API-Key": key.key}) as ws,
    ):
        assert ws.receive_text() == "hello"
        # The hook runs on the connection's event loop, which ends with the connection.
        assert done.wait(10)
    (event,) = events
    assert (event.connection, event.method, event.route) == ("websocket", None, "/ws")
    assert event.outcome == "allowed"


async def test_excluded_paths_make_no_event(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    """Excluded routes are not decided: no event, until the app refuses one itself."""
    store, _ = issued
    hook = Recorder()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/closed":
            raise AuthError(reason="refused")
        await PlainTextResponse("ok")(scope, receive, send)

    guarded = APIKeyMiddleware(
        app, store=store, pepper=PEPPER, exclude_paths=["/health", "/closed"], on_event=hook
    )
    async with make_client(guarded) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/closed")).status_code == 401
    event = await hook.next()
    assert (event.route, event.reason) == ("/closed", "refused")
    assert hook.events == []


async def test_backend_outage_is_a_503_event_with_the_failed_call(
    make_client: MakeClient,
) -> None:
    class DownStore(MemoryKeyStore):
        async def get(self, key_id: str) -> Any:
            raise BackendUnavailableError("down")

    registry = CollectorRegistry()
    hook = Recorder()
    app = APIKeyMiddleware(
        make_app(),
        store=DownStore(),
        pepper=PEPPER,
        on_event=hook,
        metrics=PrometheusMetrics(registry=registry),
    )
    from apiguard.keys import generate_key

    async with make_client(app, headers={"X-API-Key": generate_key().value}) as client:
        assert (await client.get("/items/1")).status_code == 503
    event = await hook.next()
    assert (event.status, event.reason, event.backend_calls) == (
        503,
        "backend unavailable",
        ("store",),
    )
    assert sample(registry, "apiguard_backend_errors_total", backend="store") == 1
    assert (
        sample(
            registry, "apiguard_decisions_total", outcome="refused", reason="backend unavailable"
        )
        == 1
    )


# --- when events are built ------------------------------------------------------------


async def test_no_event_is_built_when_nothing_observes(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    leak_scanner: LeakScanner,
) -> None:
    """With the logger below INFO off and no sink, neither a trace nor an event is made."""
    store, key = issued
    # The suite's leak scan enables every level; this test needs logging's own answer.
    monkeypatch.setattr(logging.Logger, "isEnabledFor", leak_scanner.real_is_enabled_for)
    logger = logging.getLogger("apiguard.middleware")
    monkeypatch.setattr(logger, "level", logging.WARNING)
    logger.manager._clear_cache()  # type: ignore[attr-defined]

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("built without an observer")

    monkeypatch.setattr(apiguard._observe, "AuthEvent", forbidden)
    monkeypatch.setattr(apiguard._observe, "Trace", forbidden)
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER)
    async with make_client(app) as client:
        assert (await client.get("/items/1", headers={"X-API-Key": key.key})).status_code == 200
        assert (await client.get("/items/1")).status_code == 401
    logger.manager._clear_cache()  # type: ignore[attr-defined]


def test_observability_extras_are_not_imported_by_apiguard() -> None:
    """Without the options, prometheus_client and opentelemetry are never imported."""
    code = (
        "import sys, apiguard, apiguard.middleware, apiguard.keys, apiguard.tokens;"
        "assert 'prometheus_client' not in sys.modules, 'prometheus';"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'otel'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)  # noqa: S603


@pytest.mark.parametrize(
    ("module", "make"),
    [
        ("prometheus_client", lambda: PrometheusMetrics(registry=CollectorRegistry())),
        ("opentelemetry", lambda: OpenTelemetryTracing()),
    ],
    ids=["prometheus", "otel"],
)
def test_missing_extra_is_a_configuration_error_naming_it(
    module: str, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigurationError, match=r"apiguard-asgi\[(prometheus|otel)\]"):
        make()


# --- logs ---------------------------------------------------------------------------


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[logging.Handler, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("apiguard.middleware")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.DEBUG)
    logger.manager._clear_cache()  # type: ignore[attr-defined]
    yield handler, stream
    logger.removeHandler(handler)
    logger.manager._clear_cache()  # type: ignore[attr-defined]


async def test_python_json_logger_writes_every_field(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    log_stream: tuple[logging.Handler, io.StringIO],
) -> None:
    store, key = issued
    handler, stream = log_stream
    handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER)
    async with make_client(app) as client:
        await client.get("/items/1", headers={"X-API-Key": key.key})
        await client.get("/items/2")
    allowed, refused = (json.loads(line) for line in stream.getvalue().splitlines())
    assert allowed.keys() >= EVENT_FIELDS
    assert allowed["apiguard_outcome"] == "allowed"
    assert allowed["apiguard_credential_id"] == key.record.key_id
    assert allowed["apiguard_backend_calls"] == ["store"]
    assert allowed["message"].startswith("allowed kind=api_key")  # the message stays
    assert refused["apiguard_status"] == 401
    assert refused["apiguard_reason"] == "missing"
    assert refused["message"] == "refused status=401 reason=missing id=- path=/items/2"


async def test_structlog_renders_the_fields_as_json(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    log_stream: tuple[logging.Handler, io.StringIO],
) -> None:
    store, key = issued
    handler, stream = log_stream
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER)
    async with make_client(app) as client:
        await client.get("/items/1", headers={"X-API-Key": key.key + "x"})
    record = json.loads(stream.getvalue())
    assert record.keys() >= EVENT_FIELDS
    assert record["apiguard_outcome"] == "refused"
    assert record["event"].startswith("refused status=401")


# The SDK's own handler, deprecated for opentelemetry-instrumentation-logging's, which
# wraps the same: what is tested is that the fields become log record attributes.
@pytest.mark.filterwarnings("ignore:`LoggingHandler` in `opentelemetry-sdk`:DeprecationWarning")
async def test_opentelemetry_logging_bridge_takes_the_fields_as_attributes(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    log_stream: tuple[logging.Handler, io.StringIO],
) -> None:
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    store, _key = issued
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger = logging.getLogger("apiguard.middleware")
    logger.addHandler(handler)
    try:
        app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER)
        async with make_client(app) as client:
            await client.get("/items/1")
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    (log,) = exporter.get_finished_logs()
    attributes = dict(log.log_record.attributes or {})
    assert attributes["apiguard_outcome"] == "refused"
    assert attributes["apiguard_status"] == 401
    assert attributes["apiguard_route"] == "/items/{item_id}"


# --- the hook ---------------------------------------------------------------------------


async def test_a_slow_async_hook_does_not_delay_the_response(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    """The response arrives while the hook still waits; the event comes when it is freed."""
    store, key = issued
    hook = Recorder()
    hook.hold = True
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER, on_event=hook)
    async with make_client(app, headers={"X-API-Key": key.key}) as client:
        with anyio.fail_after(10):
            response = await client.get("/items/1")  # would never come if it waited
        await hook.arrived.wait()
        assert hook.events == []
        hook.release.set()
        assert (await hook.next()).outcome == "allowed"
    assert response.status_code == 200


async def test_a_slow_sync_hook_does_not_delay_the_response(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    store, key = issued
    release = threading.Event()
    done = threading.Event()
    seen: list[AuthEvent] = []

    def hook(event: AuthEvent) -> None:
        release.wait(10)
        seen.append(event)
        done.set()

    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER, on_event=hook)
    async with make_client(app, headers={"X-API-Key": key.key}) as client:
        with anyio.fail_after(10):
            assert (await client.get("/items/1")).status_code == 200
        assert seen == []
        release.set()
        assert await anyio.to_thread.run_sync(done.wait, 10)
    assert [event.outcome for event in seen] == ["allowed"]


async def test_a_failing_hook_is_logged_and_the_request_answered(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, key = issued
    logged = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.set()

    async def hook(event: AuthEvent) -> None:
        raise RuntimeError("sink down")

    signal = Signal()
    logging.getLogger("apiguard.events").addHandler(signal)
    try:
        app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER, on_event=hook)
        async with make_client(app, headers={"X-API-Key": key.key}) as client:
            assert (await client.get("/items/1")).status_code == 200
            assert await anyio.to_thread.run_sync(logged.wait, 10)
    finally:
        logging.getLogger("apiguard.events").removeHandler(signal)
    (record,) = [r for r in caplog.records if r.name == "apiguard.events"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


async def test_a_full_queue_drops_events_counts_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook = Recorder()
    hook.hold = True
    runner = HookRunner(hook, max_queue=2)
    event = AuthEvent("allowed", None, None, "http", "GET", "/", None, None, None, 0.0, None, ())
    for _ in range(6):  # before the hook's task starts: two queued, four dropped
        runner.submit(event)
    await hook.arrived.wait()
    assert runner.dropped == 4
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited
    hook.release.set()
    assert (await hook.next()).outcome == "allowed"
    assert (await hook.next()).outcome == "allowed"


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_hooks_run_under_trio(make_client: MakeClient) -> None:
    hook = Recorder()
    app = APIKeyMiddleware(make_app(), store=MemoryKeyStore(), pepper=PEPPER, on_event=hook)
    async with make_client(app) as client:
        await client.get("/items/1")
    assert (await hook.next()).reason == "missing"


# --- Prometheus -------------------------------------------------------------------------


async def test_prometheus_counts_decisions_cache_and_store_calls(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    store, key = issued
    registry = CollectorRegistry()
    app = APIKeyMiddleware(
        make_app(), store=store, pepper=PEPPER, metrics=PrometheusMetrics(registry=registry)
    )
    async with make_client(app) as client:
        for _ in range(3):
            await client.get("/items/1", headers={"X-API-Key": key.key})
        await client.get("/items/1")
    assert sample(registry, "apiguard_decisions_total", outcome="allowed", reason="") == 3
    assert sample(registry, "apiguard_decisions_total", outcome="refused", reason="missing") == 1
    assert sample(registry, "apiguard_cache_total", result="miss") == 1
    assert sample(registry, "apiguard_cache_total", result="hit") == 2
    assert sample(registry, "apiguard_backend_calls_total", backend="store") == 1
    assert sample(registry, "apiguard_decision_duration_seconds_count", outcome="allowed") == 3


async def test_prometheus_reason_labels_stay_bounded(make_client: MakeClient) -> None:
    """A reason apiguard does not know (an extension's, say) is labelled `other`."""

    class Odd:
        async def check(self, principal: Principal, scope: Scope) -> None:
            raise AuthError(reason="some new reason 12345")

    registry = CollectorRegistry()
    app = APIKeyMiddleware(
        make_app(),
        store=MemoryKeyStore(),
        pepper=PEPPER,
        optional=True,
        policies=[Odd()],
        metrics=PrometheusMetrics(registry=registry),
    )
    async with make_client(app) as client:
        await client.get("/items/1")
    assert sample(registry, "apiguard_decisions_total", outcome="refused", reason="other") == 1
    assert reason_label("wrong audience") == "wrong audience"


async def test_prometheus_counts_invalidations(
    issued: tuple[MemoryKeyStore, IssuedKey], hasher: Any
) -> None:
    store, key = issued
    registry = CollectorRegistry()
    APIKeyMiddleware(
        make_app(), store=store, pepper=PEPPER, metrics=PrometheusMetrics(registry=registry)
    )
    await KeyManager(store, hasher).revoke(key.record.key_id)
    assert sample(registry, "apiguard_invalidations_total", scope="key") == 1


def test_one_prometheus_metrics_per_registry() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry=registry)
    with pytest.raises(ConfigurationError, match="one PrometheusMetrics per registry"):
        PrometheusMetrics(registry=registry)


def test_refusal_reasons_in_the_source_are_all_known() -> None:
    """Every literal refusal reason apiguard raises has a label of its own (not `other`)."""
    found: set[str] = set()
    for path in (ROOT / "src" / "apiguard").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "reason":
                if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    found.add(node.value.value)
                if isinstance(node.value, ast.JoinedStr):  # f"introspection: {reason}"
                    found.add("introspection: rejected")
            if (
                isinstance(node, ast.Tuple)  # tokens/jwks.py: (jwt.SomeError, "reason")
                and len(node.elts) == 2
                and isinstance(node.elts[0], ast.Attribute)
                and isinstance(node.elts[1], ast.Constant)
                and isinstance(node.elts[1].value, str)
                and path.name == "jwks.py"
            ):
                found.add(node.elts[1].value)
    assert found, "no reasons found"
    assert found - REFUSAL_REASONS == set()


# --- OpenTelemetry -------------------------------------------------------------------------


async def test_a_span_per_decision_with_a_child_per_store_lookup(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    spans: tuple[OpenTelemetryTracing, InMemorySpanExporter],
) -> None:
    store, key = issued
    tracing, exporter = spans
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER, tracing=tracing)
    async with make_client(app) as client:
        await client.get("/items/1", headers={"X-API-Key": key.key})
        wrong = key.key[:-1] + ("1" if key.key.endswith("0") else "0")  # a bad checksum
        await client.get("/items/1", headers={"X-API-Key": wrong})
    lookup, allowed, refused = exporter.get_finished_spans()
    assert allowed.name == "apiguard.authenticate"
    assert allowed.attributes is not None
    assert allowed.attributes["http.request.method"] == "GET"
    assert allowed.attributes["http.route"] == "/items/{item_id}"
    assert allowed.attributes["apiguard.outcome"] == "allowed"
    assert allowed.attributes["apiguard.credential.id"] == key.record.key_id
    assert allowed.status.status_code is StatusCode.UNSET
    assert lookup.name == "apiguard.store"
    assert lookup.parent is not None
    assert lookup.parent.span_id == allowed.context.span_id
    assert refused.attributes is not None
    assert refused.attributes["apiguard.reason"] == "bad checksum"
    assert refused.attributes["http.response.status_code"] == 401
    assert refused.status.status_code is StatusCode.ERROR


async def test_jwks_and_discovery_calls_are_child_spans_and_counted(
    make_client: MakeClient, spans: tuple[OpenTelemetryTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    registry = CollectorRegistry()
    hook = Recorder()
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        app = BearerTokenMiddleware(
            make_app(),
            introspector=introspector,
            tracing=tracing,
            metrics=PrometheusMetrics(registry=registry),
            on_event=hook,
        )
        async with make_client(app, headers={"Authorization": f"Bearer {mint()}"}) as client:
            assert (await client.get("/items/1")).status_code == 200
    event = await hook.next()
    assert event.backend_calls == ("discovery", "jwks")
    assert (event.credential_kind, event.credential_id) == ("bearer", "client-123")
    assert event.issuer == ISSUER
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["apiguard.discovery", "apiguard.jwks", "apiguard.authenticate"]
    assert sample(registry, "apiguard_jwks_refreshes_total") == 1
    assert sample(registry, "apiguard_backend_calls_total", backend="discovery") == 1


async def test_failed_backend_call_span_is_an_error(
    make_client: MakeClient, spans: tuple[OpenTelemetryTracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = spans
    idp = FakeIssuer()
    idp.down = True
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        app = BearerTokenMiddleware(make_app(), introspector=introspector, tracing=tracing)
        async with make_client(app, headers={"Authorization": f"Bearer {mint()}"}) as client:
            assert (await client.get("/items/1")).status_code == 503
    finished = exporter.get_finished_spans()
    calls = [s for s in finished if s.name == "apiguard.discovery"]
    assert calls
    assert all(s.status.status_code is StatusCode.ERROR for s in calls)
    assert finished[-1].attributes is not None
    assert finished[-1].attributes["apiguard.reason"] == "backend unavailable"


# --- no secrets ----------------------------------------------------------------------------


async def test_the_suite_scanner_sees_events_and_knows_secret_shapes(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    scan_auth_events: list[tuple[str, dict[str, object]]],
) -> None:
    """tests/conftest.py collects each decision's event; a key or a token would fail it."""
    store, key = issued
    app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER)
    async with make_client(app) as client:
        await client.get("/items/1", headers={"X-API-Key": key.key})
        await client.get("/items/1", headers={"X-API-Key": key.key + "x"})
    assert [fields["apiguard_outcome"] for _, fields in scan_auth_events] == [
        "allowed",
        "refused",
    ]
    assert SECRET_SHAPES.search(key.key)
    assert SECRET_SHAPES.search(mint())
    assert not SECRET_SHAPES.search(repr(scan_auth_events))


async def test_a_per_route_guard_reports_its_decisions(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    """`Guard` as a FastAPI dependency makes the same events as the middleware."""
    from fastapi import Depends, FastAPI

    from apiguard import APIKeyAuth
    from apiguard.fastapi import Guard

    store, key = issued
    hook = Recorder()
    registry = CollectorRegistry()
    guard = Guard(
        APIKeyAuth(store, pepper=PEPPER),
        on_event=hook,
        metrics=PrometheusMetrics(registry=registry),
    )
    app = FastAPI()
    guard.install(app, middleware=False)

    @app.get("/items/{item_id}", dependencies=[Depends(guard)])
    async def read(item_id: int) -> int:
        return item_id

    async with make_client(app) as client:
        assert (await client.get("/items/3", headers={"X-API-Key": key.key})).status_code == 200
        assert (await client.get("/items/3")).status_code == 401
    allowed, refused = await hook.next(), await hook.next()
    assert (allowed.outcome, allowed.route, allowed.cache) == (
        "allowed",
        "/items/{item_id}",
        "miss",
    )
    assert (refused.reason, refused.route) == ("missing", "/items/{item_id}")
    assert sample(registry, "apiguard_decisions_total", outcome="allowed", reason="") == 1


async def test_introspection_calls_are_counted_and_server_errors_are_failures(
    make_client: MakeClient,
) -> None:
    """A 5xx answer is a failed introspection call; the 503 event lists every attempt."""
    from apiguard.tokens import RemoteIntrospector

    answers = [httpx.Response(500), httpx.Response(200, json={"active": False})]

    def endpoint(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else httpx.Response(500)

    registry = CollectorRegistry()
    hook = Recorder()
    remote = RemoteIntrospector(
        "https://idp.example/introspect",
        client_id="api",
        client_secret="introspection-client-secret",
        audience=AUDIENCE,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(endpoint)),
        retries=1,
    )
    app = BearerTokenMiddleware(
        make_app(),
        introspector=remote,
        on_event=hook,
        metrics=PrometheusMetrics(registry=registry),
    )
    async with make_client(app, headers={"Authorization": "Bearer opaque-1"}) as client:
        assert (await client.get("/items/1")).status_code == 401
    event = await hook.next()
    assert (event.reason, event.backend_calls) == ("inactive", ("introspection", "introspection"))
    assert sample(registry, "apiguard_backend_calls_total", backend="introspection") == 2
    assert sample(registry, "apiguard_backend_errors_total", backend="introspection") == 1
    await remote.aclose()


@pytest.mark.redis
async def test_shared_token_cache_calls_are_counted(
    make_client: MakeClient, redis_url: str
) -> None:
    from apiguard.tokens import RedisTokenCache, TokenInfo

    class Always:
        async def introspect(self, token: str) -> TokenInfo:
            return TokenInfo(active=True, client_id="svc", subject="svc")

        async def aclose(self) -> None:
            return None

    hook = Recorder()
    cache = RedisTokenCache.from_url(redis_url, timeout=10.0)
    app = BearerTokenMiddleware(make_app(), introspector=Always(), token_cache=cache, on_event=hook)
    async with make_client(app, headers={"Authorization": "Bearer opaque-2"}) as client:
        assert (await client.get("/items/1")).status_code == 200
    event = await hook.next()
    assert event.cache == "miss"
    assert event.backend_calls is not None
    assert "shared_cache" in event.backend_calls
    assert event.credential_id == "svc"
    await cache.aclose()


async def test_route_walk_falls_back_to_the_path(make_client: MakeClient) -> None:
    """A path under a mount that no inner route matches, or a route that cannot be
    matched, is named by its path."""

    class Broken(Route):
        def matches(self, scope: Scope) -> Any:
            raise RuntimeError("cannot match")

    hook = Recorder()
    for routes, path in (
        ([Mount("/v1", routes=[Route("/items", ok)])], "/v1/nothing"),
        ([Broken("/x", ok)], "/x"),
    ):
        app = APIKeyMiddleware(
            Starlette(routes=routes), store=MemoryKeyStore(), pepper=PEPPER, on_event=hook
        )
        async with make_client(app) as client:
            await client.get(path)
        assert (await hook.next()).route == path


def test_log_refusal_answers_a_configuration_error_with_a_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from apiguard._core import log_refusal

    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    answer = log_refusal(ConfigurationError("no store"), scope, scheme="ApiKey")
    assert isinstance(answer, BackendUnavailableError)
    (record,) = [r for r in caplog.records if r.name == "apiguard.middleware"]
    assert record.levelno == logging.ERROR
    fields = vars(record)
    assert fields["apiguard_reason"] == "configuration error"
    assert fields["apiguard_status"] == 503
    assert fields["apiguard_credential_kind"] == "api_key"


def test_unknown_backends_and_reasons_get_no_label_of_their_own() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    metrics.backend("ldap", failed=True)
    assert registry.get_sample_value("apiguard_backend_calls_total", {"backend": "ldap"}) is None
    assert reason_label(None) == ""
    assert reason_label("made up") == "other"


async def test_the_documented_uvicorn_log_config_writes_json_events(
    issued: tuple[MemoryKeyStore, IssuedKey],
    make_client: MakeClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/observability.md's `log.json`: apiguard's refusals, one JSON object a line."""
    import logging.config
    import re

    text = (ROOT / "docs" / "observability.md").read_text()
    config = json.loads(re.findall(r"```json\n(.*?)```", text, re.DOTALL)[0])
    touched = [logging.getLogger(name) for name in config["loggers"]]
    saved = [(each.handlers[:], each.level, each.propagate) for each in touched]
    logging.config.dictConfig(config)
    try:
        store, _ = issued
        app = APIKeyMiddleware(make_app(), store=store, pepper=PEPPER)
        async with make_client(app) as client:
            await client.get("/items/1")
    finally:
        for each, (handlers, level, propagate) in zip(touched, saved, strict=True):
            for handler in each.handlers:
                handler.close()
            each.handlers[:] = handlers
            each.setLevel(level)
            each.propagate = propagate
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record.keys() >= EVENT_FIELDS
    assert (record["apiguard_reason"], record["apiguard_route"]) == ("missing", "/items/{item_id}")


@pytest.mark.redis
async def test_prometheus_counts_invalidations_pushed_by_another_process(
    redis_url: str, hasher: Any
) -> None:
    """A revoke made through another store object arrives on the push channel and counts."""
    from apiguard.keys import open_store

    store = open_store(redis_url)
    registry = CollectorRegistry()
    try:
        APIKeyMiddleware(
            make_app(), store=store, pepper=PEPPER, metrics=PrometheusMetrics(registry=registry)
        )
        channel = getattr(store, "channel", None)
        assert channel is not None
        for _ in range(1000):  # the subscriber connects, then says anything may have changed
            if sample(registry, "apiguard_invalidations_total", scope="all") >= 1:
                break
            await anyio.sleep(0.01)
        async with open_store(redis_url) as other:  # type: ignore[attr-defined]
            issued = await KeyManager(other, hasher).create("ci")
            await KeyManager(other, hasher).revoke(issued.record.key_id)
        for _ in range(1000):
            if sample(registry, "apiguard_invalidations_total", scope="key") >= 1:
                break
            await anyio.sleep(0.01)
        assert sample(registry, "apiguard_invalidations_total", scope="key") == 1
        assert sample(registry, "apiguard_invalidations_total", scope="all") >= 1
    finally:
        await store.aclose()


@pytest.mark.usefixtures("frozen_limits_clock")  # no window boundary between the two
async def test_a_rate_limit_refusal_is_a_429_event_with_its_reason(
    issued: tuple[MemoryKeyStore, IssuedKey], make_client: MakeClient
) -> None:
    """A policy's refusal (`RateLimits`) is an event like any other, with no extra code."""
    from apiguard.ratelimit import RateLimits

    store, key = issued
    hook = Recorder()
    registry = CollectorRegistry()
    app = APIKeyMiddleware(
        make_app(),
        store=store,
        pepper=PEPPER,
        policies=[RateLimits("1/minute")],
        on_event=hook,
        metrics=PrometheusMetrics(registry=registry),
    )
    async with make_client(app, headers={"X-API-Key": key.key}) as client:
        assert (await client.get("/items/1")).status_code == 200
        assert (await client.get("/items/1")).status_code == 429
    assert (await hook.next()).outcome == "allowed"
    refused = await hook.next()
    assert (refused.status, refused.reason) == (429, "rate limit")
    assert (refused.credential_kind, refused.credential_id) == ("api_key", key.record.key_id)
    assert sample(registry, "apiguard_decisions_total", outcome="refused", reason="rate limit") == 1


@pytest.mark.redis
async def test_dpop_replay_store_calls_and_refusals_are_events(
    redis_url: str, make_client: MakeClient
) -> None:
    """DPoP proofs (RFC 9449): the shared replay store is a counted backend; a replayed
    proof is a refused event with its own reason and the `dpop` credential kind."""
    from apiguard import AuthMiddleware, DPoPAuth
    from apiguard.tokens import RedisReplayStore

    from .dpop_support import dpop, proof
    from .test_dpop import TOKEN, introspector

    hook = Recorder()
    registry = CollectorRegistry()
    replay = RedisReplayStore.from_url(redis_url)
    app = AuthMiddleware(
        make_app(),
        authenticators=[DPoPAuth(introspector(), replay=replay)],
        on_event=hook,
        metrics=PrometheusMetrics(registry=registry),
    )
    try:
        once = proof(TOKEN, htu="http://testserver/items/1")
        async with make_client(app) as client:
            assert (await client.get("/items/1", headers=dpop(TOKEN, once))).status_code == 200
            assert (await client.get("/items/1", headers=dpop(TOKEN, once))).status_code == 401
    finally:
        await replay.aclose()
    allowed, replayed = await hook.next(), await hook.next()
    assert allowed.backend_calls is not None
    assert "replay_store" in allowed.backend_calls
    assert (replayed.reason, replayed.credential_kind) == ("replayed proof", "dpop")
    assert sample(registry, "apiguard_backend_calls_total", backend="replay_store") == 2
