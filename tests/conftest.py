from __future__ import annotations

import pytest

# The contract suite in apiguard.testing asserts; let pytest explain its failures.
pytest.register_assert_rewrite("apiguard.testing")

import os  # noqa: E402
from collections.abc import AsyncIterator, Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store  # noqa: E402
from apiguard.types import ASGIApp, KeyStore  # noqa: E402
from tests.servers import PostgresCluster, PostgresServer, RedisServer  # noqa: E402

PEPPER = "test-pepper-0123456789abcdefghijklmnopqrstuvwxyz"


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


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeClient = Callable[..., httpx.AsyncClient]


@pytest.fixture
def make_client() -> MakeClient:
    def make(app: ASGIApp, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", **kwargs
        )

    return make


# --- Hypothesis ---------------------------------------------------------------
# Property tests draw the same examples on every run and keep no example database,
# so that CI cannot flake on a newly found input: a failure prints the example and
# the `@reproduce_failure` blob. `HYPOTHESIS_PROFILE=explore` draws new examples,
# ten times as many, for a search by hand.
settings.register_profile(
    "apiguard",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore", parent=settings.get_profile("apiguard"), derandomize=False, max_examples=1000
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "apiguard"))
