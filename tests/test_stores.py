from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

import apiguard.keys
from apiguard import BackendUnavailableError, ConfigurationError
from apiguard.keys import BaseKeyStore, MemoryKeyStore, open_store, register_scheme
from apiguard.testing import KeyStoreContract, make_record
from apiguard.types import KeyStore


class TestShippedStores(KeyStoreContract):
    """The contract suite over every store that ships (the `store` fixture in conftest)."""


def test_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryKeyStore(), KeyStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/k.db"), KeyStore)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", "MemoryKeyStore"),
        ("sqlite:///keys.db", "SQLKeyStore"),
        ("sqlite+aiosqlite:///keys.db", "SQLKeyStore"),
    ],
)
def test_open_store_by_url(url: str, kind: str) -> None:
    assert type(open_store(url)).__name__ == kind


@pytest.mark.parametrize("url", ["redis2://x", "keys.db", "", "memory://extra"])
def test_open_store_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url)


made: list[str] = []


def lazy_factory(url: str) -> KeyStore:
    made.append(url)
    return MemoryKeyStore()


def test_register_scheme_with_a_callable_and_a_lazy_path() -> None:
    made.clear()

    def factory(url: str) -> KeyStore:
        made.append(url)
        return MemoryKeyStore()

    register_scheme("custom", factory)
    register_scheme("lazy", "tests.test_stores:lazy_factory")
    try:
        assert isinstance(open_store("custom://x"), MemoryKeyStore)
        assert made == ["custom://x"]
        assert isinstance(open_store("lazy://here"), MemoryKeyStore)
        assert made == ["custom://x", "lazy://here"]
    finally:
        del apiguard.keys._SCHEMES["custom"], apiguard.keys._SCHEMES["lazy"]


def test_sql_driver_is_imported_lazily() -> None:
    """Importing apiguard does not import SQLAlchemy; the attribute does."""
    import subprocess

    code = (
        "import sys, apiguard, apiguard.keys;"
        "assert 'sqlalchemy' not in sys.modules;"
        "apiguard.keys.SQLKeyStore;"
        "assert 'sqlalchemy' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603
    with pytest.raises(AttributeError):
        apiguard.keys.NoSuchThing  # noqa: B018


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without SQLAlchemy, the SQL store says which extra to install."""
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.delitem(sys.modules, "apiguard.keys.sql", raising=False)
    with pytest.raises(ConfigurationError, match=r"apiguard\[sqlite\]"):
        open_store("sqlite:///keys.db")


@pytest.mark.anyio
async def test_unreachable_sqlite_is_backend_unavailable(tmp_path: Path) -> None:
    """A database that cannot be opened raises BackendUnavailableError, not a driver error."""
    store = open_store(f"sqlite:///{tmp_path}/missing-dir/keys.db")
    try:
        with pytest.raises(BackendUnavailableError) as info:
            await store.get("K" * 12)
        assert "OperationalError" in str(info.value)
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_sqlite_persists_across_store_objects(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/keys.db"
    async with open_store(url) as first:  # type: ignore[attr-defined]
        await first.add(make_record())
    async with open_store(url) as second:  # type: ignore[attr-defined]
        assert await second.get("K" * 12) == make_record()


@pytest.mark.anyio
async def test_broken_listener_does_not_undo_a_revoke(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryKeyStore()

    def broken(key_id: str) -> None:
        raise RuntimeError("listener bug")

    seen: list[str] = []
    store.add_listener(broken)
    store.add_listener(seen.append)
    await store.add(make_record())
    record = await store.revoke("K" * 12, at=make_record().created_at)
    assert record.status() == "revoked"
    assert seen == ["K" * 12]
    assert "listener failed" in caplog.text


def test_base_store_is_an_async_context_manager() -> None:
    assert hasattr(BaseKeyStore, "__aenter__")
    assert hasattr(BaseKeyStore, "__aexit__")


def test_sql_errors_never_carry_statement_parameters(tmp_path: Path) -> None:
    """A driver error's message would otherwise include the values bound, a secret hash among them."""
    from apiguard.keys.sql import SQLKeyStore

    store = SQLKeyStore.from_url(f"sqlite:///{tmp_path}/keys.db")
    assert store._engine.sync_engine.hide_parameters is True


def test_failed_sqlite_connection_leaves_no_worker_behind(tmp_path: Path) -> None:
    """When a connection fails, its driver thread has ended before the error reaches us.

    Otherwise the thread reports to an event loop that `asyncio.run` (the CLI) has
    already closed, and dies with "Event loop is closed".
    """

    async def fail() -> None:
        store = open_store(f"sqlite:///{tmp_path}/missing-dir/keys.db")
        try:
            with pytest.raises(BackendUnavailableError):
                await store.get("K" * 12)
        finally:
            await store.aclose()

    before = set(threading.enumerate())
    for _ in range(20):  # without the wait, most tries leave the thread running
        asyncio.run(fail())
        assert [t.name for t in threading.enumerate() if t not in before] == []
