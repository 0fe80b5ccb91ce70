from __future__ import annotations

import pytest

# The contract suite in apiguard.testing asserts; let pytest explain its failures.
pytest.register_assert_rewrite("apiguard.testing")

# apiguard's own fixtures, as its users get them (docs/testing.md).
pytest_plugins = ["apiguard.pytest_plugin"]

import logging  # noqa: E402
import re  # noqa: E402
from collections.abc import AsyncIterator, Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store  # noqa: E402
from apiguard.types import ASGIApp, KeyStore  # noqa: E402
from tests.servers import PostgresCluster, PostgresServer, RedisServer  # noqa: E402

PEPPER = "test-pepper-0123456789abcdefghijklmnopqrstuvwxyz"


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
    import limits.aio.storage.memory
    import limits.aio.strategies

    import apiguard.ratelimit._pipeline
    import apiguard.ratelimit.failures
    import apiguard.ratelimit.policy

    frozen = _FrozenTime(FROZEN_NOW)
    for module in (
        limits.aio.storage.memory,
        limits.aio.strategies,
        apiguard.ratelimit._pipeline,
        apiguard.ratelimit.failures,
        apiguard.ratelimit.policy,
    ):
        monkeypatch.setattr(module, "time", frozen)
    return frozen
