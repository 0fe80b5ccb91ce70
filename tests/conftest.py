from __future__ import annotations

import pytest

# The contract suite in apiguard.testing asserts; let pytest explain its failures.
pytest.register_assert_rewrite("apiguard.testing")

# apiguard's own fixtures, as its users get them (docs/testing.md).
pytest_plugins = ["apiguard.pytest_plugin"]

import contextlib  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import AsyncIterator, Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from hypothesis import HealthCheck, settings  # noqa: E402

from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store  # noqa: E402
from apiguard.keys.format import CHECKSUM_LENGTH, SECRET_LENGTH  # noqa: E402
from apiguard.types import ASGIApp, KeyStore  # noqa: E402
from tests.leak_scan import LeakFound, LeakScanner, ScanHandler, url_password, wrap_everywhere  # noqa: E402
from tests.servers import PostgresCluster, PostgresServer, RedisServer  # noqa: E402

# Random-looking, like a real pepper: the leak scan looks for any 8 characters of it.
PEPPER = "test-pepper-9Wq4Rk7Tz2Mv8Xc5Ln3Hb6Jd1Fg0PsYe"


# --- every auth event of the suite, scanned for credentials ----------------------

# An API key (`<prefix>_<12-character key id>_<secret>`), a JWT or other compact
# JWS, and the suite's pepper: none may appear in any event field or message.
SECRET_SHAPES = re.compile(
    r"[A-Za-z0-9]+_[0-9A-Za-z]{12}_[0-9A-Za-z]{8,}"
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\." + "|" + re.escape(PEPPER)
)
_ALL_LEVELS = 1  # below DEBUG: set by the fixture below, told apart from a test's own level


class _EventCollector(logging.Filter):
    """Keeps every record with auth event fields; lets through only what the level would."""

    def __init__(self, logger: logging.Logger, saved: int) -> None:
        super().__init__()
        self.logger = logger
        self.saved = saved
        self.events: list[tuple[str, dict[str, object]]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {k: v for k, v in vars(record).items() if k.startswith("apiguard_")}
        if fields:
            self.events.append((record.getMessage(), fields))
        level = self.logger.level
        if level == _ALL_LEVELS:  # as without this fixture
            level = self.saved or (self.logger.parent or logging.root).getEffectiveLevel()
        return record.levelno >= level


@pytest.fixture(autouse=True)
def scan_auth_events() -> Iterator[list[tuple[str, dict[str, object]]]]:
    """Build, collect and scan the auth event of every decision any test makes.

    The `apiguard.middleware` logger is enabled for every level, so that each
    decision makes its event; records are passed on only at the level they would
    have been without this fixture. After the test, no event may hold a key, a
    token or the pepper.
    """
    logger = logging.getLogger("apiguard.middleware")
    saved = logger.level
    collector = _EventCollector(logger, saved)
    logger.setLevel(_ALL_LEVELS)
    logger.addFilter(collector)
    try:
        yield collector.events
    finally:
        logger.removeFilter(collector)
        if logger.level == _ALL_LEVELS:
            logger.setLevel(saved)
    for message, fields in collector.events:
        text = repr((message, fields))
        leak = SECRET_SHAPES.search(text)
        assert leak is None, f"a credential in an auth event: {text}"


@pytest.fixture
def anyio_backend() -> str:
    # SQLAlchemy's async engine (and later redis.asyncio) run on asyncio only.
    return "asyncio"


@pytest.fixture(scope="session")
def hasher() -> KeyHasher:
    return KeyHasher(PEPPER)


# --- real servers (tests/servers.py) -------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL data directory, made once, that each server starts from a copy of."""
    cluster = PostgresCluster()
    yield cluster
    cluster.remove()


@pytest.fixture(scope="session")
def postgres_server(postgres_cluster: PostgresCluster) -> Iterator[PostgresServer]:
    """The PostgreSQL server the store tests share; each test has a database of its own."""
    server = PostgresServer(postgres_cluster)
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    database = postgres_server.create_database()
    yield postgres_server.url(database)
    postgres_server.drop_database(database)


@pytest.fixture
def make_postgres_server(
    postgres_cluster: PostgresCluster,
) -> Iterator[Callable[[], PostgresServer]]:
    """Start servers of the test's own (to stop or pause), all removed after it."""
    servers: list[PostgresServer] = []

    def make() -> PostgresServer:
        servers.append(PostgresServer(postgres_cluster))
        return servers[-1]

    yield make
    for server in servers:
        server.remove()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The redis-server the store tests share; emptied before each test that uses it."""
    server = RedisServer()
    yield server
    server.remove()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the shared Redis server, emptied for this test."""
    redis_server.flush()
    return redis_server.url()


@pytest.fixture
def make_redis_server() -> Iterator[Callable[[], RedisServer]]:
    """Start Redis servers of the test's own (to stop or pause), all removed after it."""
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        servers.append(RedisServer())
        return servers[-1]

    yield make
    for server in servers:
        server.remove()


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    """Every key store that ships with apiguard, PostgreSQL and Redis on real servers."""
    if request.param == "memory":
        key_store: KeyStore = MemoryKeyStore()
    elif request.param == "sqlite":
        key_store = open_store(f"sqlite:///{tmp_path}/keys.db")
    else:
        key_store = open_store(request.getfixturevalue(f"{request.param}_url"))
    yield key_store
    await key_store.aclose()


@pytest.fixture
def manager(store: KeyStore, hasher: KeyHasher) -> KeyManager:
    return KeyManager(store, hasher)


MakeClient = Callable[..., httpx.AsyncClient]


@pytest.fixture
def make_client() -> MakeClient:
    def make(app: ASGIApp, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", **kwargs
        )

    return make


# 30 s into a minute and 8 h into a UTC day: no window of a minute, hour or day ends
# while a test runs, whatever the wall clock says.
FROZEN_NOW = 1_800_000_030.0


class _FrozenTime:
    """Stands in for the `time` module where rate limits read the clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def frozen_limits_clock(monkeypatch: pytest.MonkeyPatch) -> _FrozenTime:
    """Freeze the clock of `limits`' memory storage and strategies and of apiguard's
    rate-limit modules, so that window boundaries never depend on when a test runs."""
    import limits.aio.strategies
    import limits.storage.memory
    import limits.strategies

    import apiguard.ratelimit._pipeline
    import apiguard.ratelimit._windows
    import apiguard.ratelimit.failures
    import apiguard.ratelimit.policy

    frozen = _FrozenTime(FROZEN_NOW)
    for module in (
        limits.storage.memory,
        limits.strategies,
        limits.aio.strategies,
        apiguard.ratelimit._pipeline,
        apiguard.ratelimit._windows,
        apiguard.ratelimit.failures,
        apiguard.ratelimit.policy,
    ):
        monkeypatch.setattr(module, "time", frozen)
    return frozen


# --- Hypothesis ---------------------------------------------------------------
# Property tests draw the same examples on every run and keep no example database,
# so that CI cannot flake on a newly found input: a failure prints the example and
# the `@reproduce_failure` blob. `HYPOTHESIS_PROFILE=explore` draws new, random
# examples on each run (as many per test), for a search by hand.
settings.register_profile(
    "apiguard",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", parent=settings.get_profile("apiguard"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "apiguard"))


# --- secret-leak scan (tests/leak_scan.py) ------------------------------------

_SCANNER = LeakScanner()


def _public_classes() -> list[type]:
    import apiguard
    import apiguard.exceptions
    import apiguard.keys
    import apiguard.tokens

    found: dict[int, type] = {}
    for module in (apiguard, apiguard.keys, apiguard.tokens, apiguard.exceptions):
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if (
                isinstance(value, type)
                and not getattr(value, "_is_protocol", False)
                and value.__module__.startswith("apiguard")
            ):
                found[id(value)] = value
    return list(found.values())


def _track(patch: pytest.MonkeyPatch, cls: type) -> None:
    original = cls.__init__  # type: ignore[misc]

    @functools.wraps(original)  # inspect.signature() still shows the real parameters
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if type(self) is cls:
            _SCANNER.objects.append(self)

    patch.setattr(cls, "__init__", init)


@pytest.fixture(scope="session", autouse=True)
def _leak_scan_hooks() -> Iterator[LeakScanner]:
    """Record each secret where the suite makes it; scan what apiguard shows."""
    import jwt
    from click.testing import CliRunner
    from starlette.responses import Response

    import apiguard.keys.format
    import apiguard.keys.hashing
    from apiguard._challenge import ErrorResponder
    from apiguard.tokens import RemoteIntrospector

    from . import servers, token_support

    scanner = _SCANNER
    scanner.record(PEPPER, "the tests' pepper")
    for name in ("RSA_KEY", "RSA_KEY_2", "EC_KEY", "ED_KEY"):
        key = getattr(token_support, name)
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
        scanner.record("".join(pem.splitlines()[1:-1]), f"private key {name}")
    modules = [m for n, m in list(sys.modules.items()) if n.startswith(("apiguard", "tests"))]

    with pytest.MonkeyPatch.context() as patch:
        generate_key = apiguard.keys.format.generate_key

        @functools.wraps(generate_key)
        def recording_generate_key(*args: Any, **kwargs: Any) -> Any:
            key = generate_key(*args, **kwargs)
            scanner.record(key.value[-(SECRET_LENGTH + CHECKSUM_LENGTH) :], "a generated API key")
            scanner.generated.append(key.value)
            return key

        wrap_everywhere(patch.setattr, modules, generate_key, recording_generate_key)

        resolve_pepper = apiguard.keys.hashing._resolve_pepper

        @functools.wraps(resolve_pepper)
        def recording_resolve_pepper(pepper: Any) -> Any:
            resolved = resolve_pepper(pepper)
            scanner.record(resolved, "a pepper")
            return resolved

        patch.setattr(apiguard.keys.hashing, "_resolve_pepper", recording_resolve_pepper)

        encode = jwt.encode

        @functools.wraps(encode)
        def recording_encode(*args: Any, **kwargs: Any) -> str:
            token = encode(*args, **kwargs)
            scanner.record(token.rpartition(".")[2], "a minted JWT's signature")
            return token

        patch.setattr(jwt, "encode", recording_encode)

        introspector_init = RemoteIntrospector.__init__

        def recording_introspector(self: Any, *args: Any, **kwargs: Any) -> None:
            scanner.record(kwargs.get("client_secret"), "a client secret")
            introspector_init(self, *args, **kwargs)

        patch.setattr(RemoteIntrospector, "__init__", recording_introspector)

        server_url = servers.PostgresServer.url

        def recording_url(self: Any, *args: Any, **kwargs: Any) -> str:
            url = server_url(self, *args, **kwargs)
            scanner.record(url_password(url), "a store URL password")
            return url

        patch.setattr(servers.PostgresServer, "url", recording_url)

        for cls in _public_classes():
            _track(patch, cls)

        # Bodies apiguard sends (refusals, from its own or the app's hook); the tests'
        # apps echo requests back on purpose and are not scanned.
        respond = ErrorResponder.response

        async def scanned_response(self: ErrorResponder, *args: Any) -> Response:
            response = await respond(self, *args)
            scanner.scan(bytes(response.body), f"a {response.status_code} refusal body")
            return response

        patch.setattr(ErrorResponder, "response", scanned_response)

        invoke = CliRunner.invoke

        def scanned_invoke(self: CliRunner, *args: Any, **kwargs: Any) -> Any:
            before = len(scanner.generated)
            result = invoke(self, *args, **kwargs)
            with contextlib.ExitStack() as shown:
                for key in scanner.generated[before:]:  # `keys create` shows a key once
                    shown.enter_context(scanner.exempt(key))
                scanner.scan(result.output, "the apiguard command's output")
            return result

        patch.setattr(CliRunner, "invoke", scanned_invoke)
        # Every logger logs at DEBUG into the scan, apiguard's and its drivers'; what
        # reaches the handlers (and caplog) is still decided by the configured levels.
        handler = ScanHandler(scanner)
        is_enabled_for = logging.Logger.isEnabledFor
        scanner.real_is_enabled_for = is_enabled_for
        handle = logging.Logger.handle

        def scanned_handle(self: logging.Logger, record: logging.LogRecord) -> Any:
            handler.emit(record)
            if is_enabled_for(self, record.levelno):
                return handle(self, record)
            return None

        patch.setattr(logging.Logger, "isEnabledFor", lambda self, level: not self.disabled)
        patch.setattr(logging.Logger, "handle", scanned_handle)
        yield scanner


@pytest.fixture
def leak_scanner(_leak_scan_hooks: LeakScanner) -> LeakScanner:
    """The suite's secret-leak scanner, for tests of the scan itself."""
    return _leak_scan_hooks


@pytest.fixture(autouse=True)
def _leak_scan(_leak_scan_hooks: LeakScanner) -> Iterator[None]:
    """Fail the test if a secret was seen while it ran."""
    scanner = _leak_scan_hooks
    scanner.objects.clear()
    scanner.findings.clear()
    yield
    shown: dict[str, str] = {}  # each distinct text once: a test may make many alike
    for obj in scanner.objects:
        for text in (repr(obj), str(obj)):
            shown.setdefault(text, type(obj).__name__)
    scanner.objects.clear()
    for text, kind in shown.items():
        scanner.scan(text, f"repr/str of a {kind}")
    try:
        scanner.check()
    except LeakFound as exc:
        pytest.fail(str(exc), pytrace=False)
