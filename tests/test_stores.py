from __future__ import annotations

import asyncio
import logging
import sys
import threading
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import registry as sa_registry
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite

import apiguard.keys
from apiguard import BackendUnavailableError, ConfigurationError, KeyNotFoundError, KeyStateError
from apiguard.keys import (
    BaseKeyStore,
    KeyHasher,
    KeyManager,
    KeyVerifier,
    MemoryKeyStore,
    open_store,
    register_scheme,
)
from apiguard.keys._url import redact_url
from apiguard.testing import KeyStoreContract, make_record
from apiguard.types import KeyStore


class TestShippedStores(KeyStoreContract):
    """The contract suite over every store that ships (the `store` fixture in conftest)."""


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", "MemoryKeyStore"),
        ("sqlite:///keys.db", "SQLKeyStore"),
        ("sqlite+aiosqlite:///keys.db", "SQLKeyStore"),
        ("postgresql://app:pw@db.example:5432/keys", "SQLKeyStore"),
        ("postgres://app:pw@db.example/keys", "SQLKeyStore"),
        ("postgresql+asyncpg://app:pw@db.example/keys", "SQLKeyStore"),
        ("redis://cache.example:6379/0", "RedisKeyStore"),
        ("rediss://:pw@cache.example:6380/1", "RedisKeyStore"),
        ("unix:///run/redis/redis.sock?db=2", "RedisKeyStore"),
    ],
)
def test_open_store_by_url(url: str, kind: str) -> None:
    """Opening connects to nothing yet; each store satisfies the protocol."""
    store = open_store(url)
    assert type(store).__name__ == kind
    assert isinstance(store, KeyStore)
    asyncio.run(store.aclose())


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
    with pytest.raises(ConfigurationError, match=r"apiguard-asgi\[sqlite\]"):
        open_store("sqlite:///keys.db")


@pytest.mark.anyio
async def test_the_same_key_id_added_at_once_is_stored_once(store: KeyStore) -> None:
    """Twenty adds of one key id race: exactly one succeeds, the rest are refused."""
    results = await asyncio.gather(
        *(store.add(make_record(name=f"owner-{i}")) for i in range(20)), return_exceptions=True
    )
    assert results.count(None) == 1
    assert all(isinstance(r, KeyStateError) for r in results if r is not None)
    got = await store.get("K" * 12)
    assert got is not None
    assert got.name == f"owner-{results.index(None)}"


@pytest.mark.anyio
async def test_update_hash_of_an_unknown_key_raises(store: KeyStore) -> None:
    """Replacing the hash of a key that does not exist creates nothing."""
    with pytest.raises(KeyNotFoundError):
        await store.update_hash("unknown00000", "$hmac-sha256$" + "1" * 64)
    assert await store.get("unknown00000") is None


@pytest.mark.anyio
async def test_list_breaks_ties_by_key_id_in_byte_order(store: KeyStore) -> None:
    """Upper case before lower case on every store, whatever the database's collation."""
    for key_id in ("abcdefghijkl", "ABCDEFGHIJKL", "0bcdefghijkl", "Zbcdefghijkl"):
        await store.add(make_record(key_id))
    assert [r.key_id for r in await store.list()] == [
        "0bcdefghijkl",
        "ABCDEFGHIJKL",
        "Zbcdefghijkl",
        "abcdefghijkl",
    ]


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


# --- store URLs with passwords ------------------------------------------------

PASSWORD = "s3cret-Pa55"


def shown(exc: BaseException) -> str:
    """Everything a traceback of `exc` shows, as `logger.exception` would log it."""
    return "".join(traceback.format_exception(exc))


class LeakyDialect(SQLiteDialect_aiosqlite):
    """A third-party SQLAlchemy dialect whose error quotes the URL, password and all."""

    def create_connect_args(self, url: sa.URL) -> Any:
        raise sa_exc.ArgumentError(f"cannot use {url.render_as_string(hide_password=False)}")


sa_registry.register("leaky", __name__, "LeakyDialect")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            f"mysql://app:{PASSWORD}@db.example/keys",
            "unknown key store URL scheme in 'mysql://app:***@db.example/keys'",
            id="unknown-scheme",
        ),
        pytest.param(
            f"memcached://:{PASSWORD}@cache.example:11211/0",
            "unknown key store URL scheme in 'memcached://:***@cache.example:11211/0'",
            id="password-only",
        ),
        pytest.param(
            f"memory://app:{PASSWORD}@here",
            "not 'memory://app:***@here'",
            id="memory",
        ),
        pytest.param(
            f"sqlite://app:{PASSWORD}@host/keys.db",
            "Invalid SQLite URL: sqlite+aiosqlite://app:***@host/keys.db",
            id="bad-sqlite-url",
        ),
    ],
)
def test_open_store_errors_never_show_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    assert message in str(info.value)
    assert PASSWORD not in shown(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            f"app:{PASSWORD}@db.example/keys",
            "not a store URL: 'app:***@db.example/keys'",
            id="no-scheme",
        ),
        pytest.param(
            f"sqlite+nosuchdriver://app:{PASSWORD}@host/keys.db",
            "Can't load plugin",
            id="unknown-driver",
        ),
        pytest.param(
            f"leaky://app:{PASSWORD}@db.example/keys",
            "cannot use leaky://app:***@db.example/keys",
            id="driver-quotes-the-url",
        ),
        pytest.param(
            f"leaky://app:{quote(PASSWORD + '@/')}@db.example/keys",
            "cannot use leaky://app:***@db.example/keys",
            id="escaped-password",
        ),
    ],
)
def test_sql_store_errors_never_show_the_password(url: str, message: str) -> None:
    from apiguard.keys.sql import SQLKeyStore

    with pytest.raises(ConfigurationError) as info:
        SQLKeyStore.from_url(url)
    assert message in str(info.value)
    assert PASSWORD not in shown(info.value)


@pytest.mark.parametrize(
    ("url", "shown_as"),
    [
        ("postgresql://app:pw@db.example:5432/keys", "postgresql://app:***@db.example:5432/keys"),
        ("redis://:pw@cache.example", "redis://:***@cache.example"),
        ("postgresql://app:p/w?#@db.example/keys", "postgresql://app:***@db.example/keys"),
        ("postgresql://app:p@w@db.example/keys", "postgresql://app:***@db.example/keys"),
        ("postgresql://ap@p:pw@db.example/keys", "postgresql://ap@p:***@db.example/keys"),
        (
            "postgresql://app:pw@db.example/k?cert=/a@b",
            "postgresql://app:***@db.example/k?cert=/a@b",
        ),
        ("app:pw@db.example", "app:***@db.example"),
        ("postgresql://app@db.example:5432/keys", "postgresql://app@db.example:5432/keys"),
        ("redis://:@cache.example", "redis://:@cache.example"),
        ("sqlite:////srv/a:b@c/keys.db", "sqlite:////srv/a:b@c/keys.db"),
        ("sqlite:///keys.db", "sqlite:///keys.db"),
        ("memory://", "memory://"),
        ("", ""),
        ("::@@//", ":***@//"),  # not a URL: no error, and nothing that could be one shown
        # libpq and SQLAlchemy also take the password as a query parameter.
        ("postgresql://app@db.example/k?password=pw", "postgresql://app@db.example/k?password=***"),
        (
            "postgresql://db.example/k?sslmode=require&PASSWORD=pw&x=1",
            "postgresql://db.example/k?sslmode=require&PASSWORD=***&x=1",
        ),
        ("postgresql://db.example/k?password=", "postgresql://db.example/k?password="),
    ],
)
def test_redact_url(url: str, shown_as: str) -> None:
    """Only a password is hidden; where parsers could read one differently, more is hidden."""
    assert redact_url(url) == shown_as


# --- driver logging -----------------------------------------------------------


@pytest.mark.anyio
async def test_debug_logging_never_shows_hashes_or_keys(
    tmp_path: Path, hasher: KeyHasher, caplog: pytest.LogCaptureFixture
) -> None:
    """With every logger at DEBUG, no record carries a key or a secret hash.

    aiosqlite logs each call it runs at DEBUG, with its statement parameters.
    """
    caplog.set_level(logging.DEBUG)
    store = open_store(f"sqlite:///{tmp_path}/keys.db")
    try:
        manager = KeyManager(store, hasher)
        verifier = KeyVerifier(store, hasher)
        issued = await manager.create("billing", scopes=["items:read"])
        await verifier.verify(issued.key.encode())
        rotated = await manager.rotate(issued.record.key_id)
        await store.update_hash(rotated.record.key_id, hasher.hash("another secret"))
        await manager.revoke(issued.record.key_id)
        hidden = {
            issued.key,
            issued.record.secret_hash,
            rotated.key,
            rotated.record.secret_hash,
            (await manager.get(rotated.record.key_id)).secret_hash,
        }
    finally:
        await store.aclose()
    assert logging.getLogger("aiosqlite").isEnabledFor(logging.DEBUG)  # levels untouched
    for record in caplog.records:
        logged = record.getMessage() + repr(record.args)
        assert not [value for value in hidden if value in logged], record.name


@pytest.mark.anyio
async def test_sqlite_waits_for_another_writer_then_writes(tmp_path: Path) -> None:
    """A write lock held by another process (the CLI) is waited for, not an error."""
    import sqlite3
    import time

    store = open_store(f"sqlite:///{tmp_path}/keys.db")
    try:
        await store.add(make_record("A" * 12))
        other = sqlite3.connect(tmp_path / "keys.db", isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        releaser = threading.Timer(0.5, lambda: other.execute("COMMIT"))
        releaser.start()
        started = time.monotonic()
        await store.add(make_record("B" * 12))
        assert time.monotonic() - started >= 0.4
        releaser.join()
        other.close()
        assert {r.key_id for r in await store.list()} == {"A" * 12, "B" * 12}
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_lookup_cut_off_by_its_deadline_leaves_no_lock_behind(
    tmp_path: Path, hasher: KeyHasher
) -> None:
    """A deadline that cancels a lookup waiting on SQLite's lock must not leave the
    connection holding a lock: another process's revoke right after still works."""
    import sqlite3

    import anyio

    url = f"sqlite:///{tmp_path}/keys.db"
    server, admin = open_store(url), open_store(url)  # two processes, in effect
    try:
        issued = await KeyManager(server, hasher).create("a")
        verifier = KeyVerifier(server, hasher, deadline=0.3)
        other = sqlite3.connect(tmp_path / "keys.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # a long write elsewhere (a VACUUM, say)
        with pytest.raises(BackendUnavailableError, match="no answer within"):
            await verifier.verify(issued.key.encode())
        other.execute("COMMIT")
        other.close()
        with anyio.fail_after(5):
            await KeyManager(admin, hasher).revoke(issued.record.key_id)
        record = await server.get(issued.record.key_id)
        assert record is not None
        assert record.revoked_at is not None
    finally:
        await server.aclose()
        await admin.aclose()


@pytest.mark.parametrize(
    ("text", "url", "shown"),
    [
        (
            "auth failed: s3cret-Pa55 at postgresql://u:s3cret-Pa55@h/db",
            "postgresql://u:s3cret-Pa55@h/db",
            "auth failed: *** at postgresql://u:***@h/db",
        ),
        # A password that is also the user name or the scheme is not masked in words.
        (
            "No module named 'asyncpg'; pip install 'apiguard-asgi[postgres]'",
            "postgresql://postgres:postgres@localhost/app",
            "No module named 'asyncpg'; pip install 'apiguard-asgi[postgres]'",
        ),
        (
            "RedisKeyStore needs redis-py",
            "redis://:redis@cache",
            "RedisKeyStore needs redis-py",
        ),
        ("cannot open the pg store", "postgresql://u:p@h/db", "cannot open the pg store"),
    ],
)
def test_hide_password_masks_the_password_not_words_that_contain_it(
    text: str, url: str, shown: str
) -> None:
    from apiguard.keys._url import hide_password

    assert hide_password(text, url) == shown
