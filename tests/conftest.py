from __future__ import annotations

import pytest

# The contract suite in apiguard.testing asserts; let pytest explain its failures.
pytest.register_assert_rewrite("apiguard.testing")

from collections.abc import AsyncIterator, Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store  # noqa: E402
from apiguard.types import ASGIApp, KeyStore  # noqa: E402

PEPPER = "test-pepper-0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def anyio_backend() -> str:
    # SQLAlchemy's async engine (and later redis.asyncio) run on asyncio only.
    return "asyncio"


@pytest.fixture(scope="session")
def hasher() -> KeyHasher:
    return KeyHasher(PEPPER)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    """Every key store that ships with apiguard."""
    if request.param == "memory":
        key_store: KeyStore = MemoryKeyStore()
    else:
        key_store = open_store(f"sqlite:///{tmp_path}/keys.db")
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
