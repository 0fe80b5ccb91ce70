"""`SQLKeyStore`: keys in a SQL database through SQLAlchemy 2 (async).

SQLite through aiosqlite is the embedded default (`sqlite:///keys.db`,
`pip install 'apiguard-asgi[sqlite]'`); PostgreSQL goes through asyncpg
(`postgresql://user:password@host/db`, `pip install 'apiguard-asgi[postgres]'`). Both run
the same statements on the same tables.

The schema carries a version per component, in the table `apiguard_schema`: `keys`
(the keys table) and `usage` (the request counts, `keys/_sql_usage.py`). The first
store to use a database creates the tables and records the versions; a later apiguard
whose schema differs upgrades each component one version at a time, under a lock, so
that several workers starting at once neither race nor upgrade twice.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio

from apiguard.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    KeyNotFoundError,
    KeyStateError,
)
from apiguard.keys._batch import LookupBatcher
from apiguard.keys._sql_lookup import SqliteReader, postgres_query, record_from_row
from apiguard.keys._url import hide_password, redact_url
from apiguard.keys.base import BaseKeyStore
from apiguard.keys.channel import (
    InvalidationChannel,
    PostgresChannel,
    channel_from_push,
    split_push,
)
from apiguard.keys.record import EMPTY_METADATA, KeyRecord, utcnow
from apiguard.keys.usage import (
    Granularity,
    UsageBatch,
    UsageBucket,
    UsageRetention,
    check_range,
)

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
    from sqlalchemy.util import greenlet_spawn
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "SQLKeyStore needs SQLAlchemy and a driver: pip install 'apiguard-asgi[sqlite]' "
        "for SQLite, 'apiguard-asgi[postgres]' for PostgreSQL"
    ) from exc

from apiguard.keys import _sql_usage

__all__ = ["SQLKeyStore"]

# URL scheme -> SQLAlchemy dialect+driver; other schemes go to SQLAlchemy as written.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
# SQLAlchemy dialect -> the extra that installs its driver.
_EXTRAS = {"sqlite": "sqlite", "postgresql": "postgres"}


class _UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


_metadata = sa.MetaData()
keys_table = sa.Table(
    "apiguard_keys",
    _metadata,
    # Byte order on PostgreSQL too, as on SQLite and in Python: `list()` breaks ties
    # by key id, and key ids mix upper and lower case.
    sa.Column(
        "key_id",
        sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql"),
        primary_key=True,
    ),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("expires_at", _UTCDateTime),
    sa.Column("revoked_at", _UTCDateTime),
    sa.Column("last_used_at", _UTCDateTime),
    sa.Column("metadata", sa.JSON, nullable=False),
    # Version 2.
    sa.Column("rate_limit", sa.String(255)),
    sa.Column("quota", sa.String(255)),
)
# One row per versioned part of the schema; the keys table is "keys".
schema_table = sa.Table(
    "apiguard_schema",
    _metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# Schema upgrades, in order: _UPGRADES[0] takes a database from version 1 to 2, and so
# on. Each runs in the transaction that records the new version. Version 1 is the
# layout above, the one apiguard used before it recorded versions.
_UPGRADES: list[Callable[[sa.Connection], None]] = []


def _add_limits(conn: sa.Connection) -> None:
    """Version 2: each key may carry its own rate limit and quota."""
    for column in ("rate_limit", "quota"):
        conn.execute(sa.text(f"ALTER TABLE apiguard_keys ADD COLUMN {column} VARCHAR(255)"))


_UPGRADES.append(_add_limits)
# Any fixed number: the PostgreSQL advisory lock held while the schema is checked.
_SCHEMA_LOCK = 0x61706967756172  # "apiguar"


def _components() -> tuple[tuple[str, sa.MetaData, list[Callable[[sa.Connection], None]]], ...]:
    """Each versioned part of the schema: its name, its tables, its upgrades."""
    return (
        ("keys", _metadata, _UPGRADES),
        ("usage", _sql_usage.usage_metadata, _sql_usage.USAGE_UPGRADES),
    )


def schema_version(component: str = "keys") -> int:
    """The version of a schema component (`"keys"`, `"usage"`) that this apiguard makes."""
    for name, _, upgrades in _components():
        if name == component:
            return 1 + len(upgrades)
    raise ValueError(f"no schema component {component!r}")


def _prepare_schema(conn: sa.Connection) -> None:
    """Create the tables, or upgrade them, and record the versions; under a lock."""
    existing = set(sa.inspect(conn).get_table_names())
    versions: dict[str, int] = {}
    if schema_table.name in existing:
        rows = conn.execute(sa.select(schema_table.c.component, schema_table.c.version))
        versions = {component: version for component, version in rows}
    for component, metadata, upgrades in _components():
        latest = 1 + len(upgrades)
        version = versions.get(component)
        if version is None:
            # A component's tables without a recorded version have version 1's layout
            # (the keys table of an apiguard that recorded no versions).
            tables = set(metadata.tables) - {schema_table.name}
            version = 1 if tables & existing else latest
            metadata.create_all(conn)
            conn.execute(sa.insert(schema_table).values(component=component, version=version))
        if version > latest:
            raise ConfigurationError(
                f"the key store's {component} schema is version {version}, newer than this"
                f" apiguard's ({latest}): upgrade apiguard"
            )
        for upgrade in upgrades[version - 1 :]:
            upgrade(conn)
            version += 1
            conn.execute(
                sa.update(schema_table)
                .where(schema_table.c.component == component)
                .values(version=version)
            )


def _to_row(record: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "name": record.name,
        "secret_hash": record.secret_hash,
        "scopes": sorted(record.scopes),
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
        "last_used_at": record.last_used_at,
        "metadata": dict(record.metadata),
        "rate_limit": record.rate_limit,
        "quota": record.quota,
    }


def _from_row(row: sa.RowMapping) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        name=row["name"],
        secret_hash=row["secret_hash"],
        scopes=frozenset(row["scopes"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        metadata=MappingProxyType(dict(row["metadata"])) if row["metadata"] else EMPTY_METADATA,
        rate_limit=row["rate_limit"],
        quota=row["quota"],
    )


def _engine_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"not a store URL: {redact_url(url)!r}")
    return f"{_DRIVERS.get(scheme, scheme)}://{rest}"


def _error_names(exc: BaseException) -> str:
    """`exc`'s class and the driver's error under it: names only, never a message.

    A driver's message can quote the values of a failed statement.
    """
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    names = type(exc).__name__
    if type(root).__name__ != names:
        names += f" ({type(root).__name__})"
    return names


class _NoCallArguments(logging.Filter):
    """Drops aiosqlite's DEBUG records that carry a call and its arguments.

    aiosqlite logs "executing %s" and "operation %s completed" with the call it runs,
    whose repr holds the statement's parameters: a secret hash on INSERT and UPDATE.
    Logger levels stay as the application set them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.DEBUG and record.args)


_no_call_arguments = _NoCallArguments()


async def _open_sqlite(*args: Any, **kwargs: Any) -> Any:
    """`aiosqlite.connect(...)` that, when it fails, waits for its worker thread to end.

    aiosqlite stops the worker of a failed connection without waiting for it; the worker
    then reports back to the event loop, which may be closed by then (a CLI command's
    `asyncio.run`), and the thread dies with "Event loop is closed".
    """
    import aiosqlite

    connection = aiosqlite.connect(*args, **kwargs)
    # Before aiosqlite 0.22 the connection was itself the thread.
    thread: threading.Thread = getattr(connection, "_thread", None) or connection  # type: ignore[assignment]
    thread.daemon = True  # as SQLAlchemy does: never hold up interpreter exit
    try:
        return await connection
    except BaseException:
        if thread.is_alive():
            thread.join(1.0)  # it only has to close nothing and return: microseconds
        raise


_LOCK_POLL = 0.05  # seconds SQLite itself waits for a lock before we retry
_PRUNE_INTERVAL = timedelta(hours=1)  # between two deletions of expired counts
LOCK_TIMEOUT = 10.0  # seconds a SQLite operation waits for another process's lock in all

P = ParamSpec("P")
T = TypeVar("T")


class _Locked(Exception):
    """SQLite's lock is held by another connection: retry after a pause."""


def _retry_while_locked(
    method: Callable[Concatenate[SQLKeyStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SQLKeyStore, P], Coroutine[Any, Any, T]]:
    """Retry `method` while SQLite reports another connection's lock, up to `LOCK_TIMEOUT`.

    The pauses are cancellable awaits, so a deadline interrupts the wait cleanly.
    """

    @functools.wraps(method)
    async def retrying(store: SQLKeyStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        waited, pause = 0.0, 0.005
        while True:
            try:
                return await method(store, *args, **kwargs)
            except _Locked:
                if waited >= LOCK_TIMEOUT:
                    raise BackendUnavailableError(
                        "key store unavailable: database is locked"
                    ) from None
            await anyio.sleep(pause)
            waited += pause + _LOCK_POLL
            pause = min(pause * 2, 0.1)

    return retrying


class SQLKeyStore(BaseKeyStore):
    """A key store in a SQL database: SQLite or PostgreSQL.

    The tables (`apiguard_keys`, and `apiguard_schema` for the schema version) are
    created on first use.

    Args:
        engine: An SQLAlchemy `AsyncEngine`. The store does not dispose of an engine
            it was given; `from_url()` makes one the store owns.
        channel: Pushes key changes to other processes (`apiguard.keys.channel`). With
            a `PostgresChannel` on the same database, the `NOTIFY` is part of the
            write's transaction: sent on commit, never for a write rolled back.
        usage_retention: How long request counts are kept; older buckets are
            deleted by `add_usage`, at most once an hour per store.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        channel: InvalidationChannel | None = None,
        usage_retention: UsageRetention | None = None,
        _owns_engine: bool = False,
    ) -> None:
        super().__init__(channel=channel)
        self._retention = usage_retention or UsageRetention()
        self._prune_at: datetime | None = None  # the next deletion of expired counts
        self._notify = (
            channel.notify_channel
            if channel is not None and engine.dialect.name == "postgresql"
            else None
        )
        self._channel = channel
        self._engine = engine
        self._owns_engine = _owns_engine
        if engine.dialect.driver == "aiosqlite":
            logging.getLogger("aiosqlite").addFilter(_no_call_arguments)  # once: a no-op after
        self._shielded = engine.dialect.name == "sqlite"
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        # What a database that cannot be reached raises (on Python 3.10,
        # asyncio.TimeoutError is not the builtin TimeoutError).
        self._unavailable: tuple[type[BaseException], ...] = (
            sa_exc.DBAPIError,
            OSError,
            TimeoutError,
            asyncio.TimeoutError,
        )
        if engine.dialect.driver == "asyncpg":
            # SQLAlchemy translates asyncpg's errors only once a connection is open;
            # connecting (a wrong password, say) raises asyncpg's own.
            import asyncpg

            self._unavailable += (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            )
        # Lookups: batched (`_batch.py`), and through the driver where it can (`_sql_lookup.py`).
        self._lookups: LookupBatcher[KeyRecord] = LookupBatcher(self._get_many)
        self._sqlite: SqliteReader | None = None
        self._sqlite_limiter = anyio.CapacityLimiter(1)
        database = engine.url.database
        if (
            engine.dialect.driver == "aiosqlite"
            and database
            and database != ":memory:"
            and not database.startswith("file:")
            and not engine.url.query
        ):
            self._sqlite = SqliteReader(database, _LOCK_POLL)
        self._asyncpg = engine.dialect.driver == "asyncpg"

    @classmethod
    def from_url(cls, url: str, **engine_options: Any) -> SQLKeyStore:
        """Open a store at `url`.

        `sqlite:///keys.db` (relative path), `sqlite:////abs/keys.db`, or
        `postgresql://user:password@host:5432/db` (`postgres://` too). PostgreSQL
        connections give up after 10 s and statements after 30 s unless
        `connect_args` says otherwise.

        `engine_options` go to `sqlalchemy.ext.asyncio.create_async_engine`.

        Key changes reach other processes through PostgreSQL `LISTEN/NOTIFY` on
        PostgreSQL; add `?push=redis://host:6379/0` (URL-encoded) to use Redis pub/sub
        instead (on SQLite too), or `?push=off` for none (the cache ttl then bounds
        how long other processes accept a revoked key).

        Raises:
            ConfigurationError: The URL is malformed or its driver is not installed.
        """
        url, push = split_push(url)
        engine_url = _engine_url(url)
        # Driver errors must not carry statement parameters (a secret hash) into logs.
        engine_options.setdefault("hide_parameters", True)
        if engine_url.startswith("sqlite"):
            # SQLite waits for another process's write lock inside a blocking call
            # that nothing can cancel; a short wait there, retried here between
            # awaits (`_retry_while_locked`), keeps every wait cancellable.
            engine_options.setdefault(
                "connect_args", {"timeout": _LOCK_POLL, "async_creator_fn": _open_sqlite}
            )
        elif engine_url.startswith("postgresql+asyncpg"):
            # asyncpg waits 60 s to connect, and for a statement forever, by default.
            engine_options.setdefault("connect_args", {"timeout": 10, "command_timeout": 30})
        try:
            engine = create_async_engine(engine_url, **engine_options)
        except (ImportError, sa_exc.ArgumentError) as exc:
            # The driver's message may quote the URL: shown without its password, and
            # not chained, so no traceback carries the original either.
            message = f"cannot open key store: {hide_password(str(exc), url)}"
            extra = _EXTRAS.get(engine_url.split(":", 1)[0].split("+", 1)[0])
            if isinstance(exc, ImportError) and extra:
                message += f"; pip install 'apiguard-asgi[{extra}]'"
            raise ConfigurationError(message) from None
        channel: InvalidationChannel | None = None
        if push is not None:
            channel = channel_from_push(push)
        elif engine.dialect.name == "postgresql":
            dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            channel = PostgresChannel(dsn)
        return cls(engine, channel=channel, _owns_engine=True)

    def __repr__(self) -> str:
        return f"SQLKeyStore(url={self._engine.url.render_as_string(hide_password=True)!r})"

    async def _prepare(self) -> None:
        """Create or upgrade the schema, once per store, one process at a time."""
        async with self._schema_lock:
            if self._schema_ready:
                return
            async with self._engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # Take SQLite's write lock before looking at the tables, so that a
                    # second process waits and then finds them made. The driver's own
                    # transaction handling is off (AUTOCOMMIT) for this one transaction.
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                    try:
                        await conn.run_sync(_prepare_schema)
                    except BaseException:
                        await conn.exec_driver_sql("ROLLBACK")
                        raise
                    await conn.exec_driver_sql("COMMIT")
                else:
                    async with conn.begin():
                        if conn.dialect.name == "postgresql":
                            # Concurrent CREATE TABLE IF NOT EXISTS can still collide
                            # in PostgreSQL's catalog: one schema check at a time.
                            await conn.execute(
                                sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK))
                            )
                        await conn.run_sync(_prepare_schema)
            self._schema_ready = True

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; driver errors become `BackendUnavailableError`.

        On SQLite the transaction is shielded from cancellation (a deadline, say):
        cut off inside a statement, SQLAlchemy abandons the connection to the garbage
        collector with its lock held, and other processes cannot write. Each attempt
        is short (SQLite waits at most `_LOCK_POLL` for a lock); the waits between
        attempts, in `_retry_while_locked`, are where a cancellation lands.
        """
        with anyio.CancelScope(shield=self._shielded):
            async with self._transaction() as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            if not self._schema_ready:
                await self._prepare()
            async with self._engine.begin() as conn:
                try:
                    yield conn
                except sa_exc.IntegrityError as exc:
                    raise KeyStateError("a key with that id already exists") from exc
        except sa_exc.OperationalError as exc:
            if "database is locked" in str(exc.orig):
                raise _Locked from None  # retried by `_retry_while_locked`
            raise BackendUnavailableError(f"key store unavailable: {_error_names(exc)}") from exc
        except self._unavailable as exc:
            raise BackendUnavailableError(f"key store unavailable: {_error_names(exc)}") from exc

    async def _get(self, conn: AsyncConnection, key_id: str) -> KeyRecord | None:
        result = await conn.execute(sa.select(keys_table).where(keys_table.c.key_id == key_id))
        row = result.mappings().first()
        return None if row is None else _from_row(row)

    async def get(self, key_id: str) -> KeyRecord | None:
        self._watch()
        return await self._lookups.get(key_id)

    @_retry_while_locked
    async def _get_many(self, ids: builtins.list[str]) -> dict[str, KeyRecord]:
        if not self._schema_ready or not (self._sqlite or self._asyncpg):
            async with self._connect() as conn:
                if not (self._sqlite or self._asyncpg):
                    result = await conn.execute(
                        sa.select(keys_table).where(keys_table.c.key_id.in_(ids))
                    )
                    return {row["key_id"]: _from_row(row) for row in result.mappings()}
        try:
            if self._sqlite is not None:
                return await anyio.to_thread.run_sync(
                    self._sqlite.read, ids, limiter=self._sqlite_limiter
                )
            return await self._get_many_asyncpg(ids)
        except sqlite3.OperationalError as exc:
            if "database is locked" in str(exc):
                raise _Locked from None  # retried by `_retry_while_locked`
            raise BackendUnavailableError(f"key store unavailable: {_error_names(exc)}") from exc
        except sqlite3.Error as exc:
            raise BackendUnavailableError(f"key store unavailable: {_error_names(exc)}") from exc
        except self._unavailable as exc:
            raise BackendUnavailableError(f"key store unavailable: {_error_names(exc)}") from exc

    async def _get_many_asyncpg(self, ids: builtins.list[str]) -> dict[str, KeyRecord]:
        raw = await self._engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            rows = await driver.fetch(postgres_query(), ids)
        except BaseException:
            await greenlet_spawn(raw.invalidate)
            raise
        await greenlet_spawn(raw.close)
        return {row[0]: record_from_row(row) for row in rows}

    @_retry_while_locked
    async def add(self, record: KeyRecord) -> None:
        async with self._connect() as conn:
            await conn.execute(sa.insert(keys_table).values(_to_row(record)))

    @_retry_while_locked
    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        query = sa.select(keys_table).order_by(keys_table.c.created_at, keys_table.c.key_id)
        if name is not None:
            query = query.where(keys_table.c.name == name)
        async with self._connect() as conn:
            result = await conn.execute(query)
            return [_from_row(row) for row in result.mappings()]

    @_retry_while_locked
    async def revoke(self, key_id: str, *, at: datetime) -> KeyRecord:
        return await self._change(
            key_id,
            sa.update(keys_table)
            .where(keys_table.c.key_id == key_id, keys_table.c.revoked_at.is_(None))
            .values(revoked_at=at),
        )

    async def _change(self, key_id: str, statement: sa.Update) -> KeyRecord:
        """Run `statement` on `key_id`'s record, read it back, and tell every process."""
        async with self._connect() as conn:
            await conn.execute(statement)
            record = await self._get(conn, key_id)
            if record is not None:
                await self._notify_on_commit(conn, key_id)
        if record is None:
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        await self._announce(key_id, published=self._notify is not None)
        return record

    async def _notify_on_commit(self, conn: AsyncConnection, key_id: str) -> None:
        # PostgreSQL delivers a NOTIFY when its transaction commits, and drops it on
        # a rollback: listeners never hear of a write that did not happen.
        if self._notify is not None and self._channel is not None:
            payload = self._channel.payload(key_id)
            await conn.execute(sa.select(sa.func.pg_notify(self._notify, payload)))

    @_retry_while_locked
    async def rotate(self, key_id: str, new: KeyRecord, *, old_expires_at: datetime) -> KeyRecord:
        async with self._connect() as conn:
            if await self._get(conn, key_id) is None:
                raise KeyNotFoundError(f"no key with id {key_id!r}")
            await conn.execute(sa.insert(keys_table).values(_to_row(new)))
            await conn.execute(
                sa.update(keys_table)
                .where(
                    keys_table.c.key_id == key_id,
                    sa.or_(
                        keys_table.c.expires_at.is_(None),
                        keys_table.c.expires_at > old_expires_at,
                    ),
                )
                .values(expires_at=old_expires_at)
            )
            old = await self._get(conn, key_id)
            if old is not None:
                await self._notify_on_commit(conn, key_id)
        if old is None:  # deleted by someone else inside our transaction: nothing to rotate
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        await self._announce(key_id, published=self._notify is not None)
        return old

    @_retry_while_locked
    async def update_hash(self, key_id: str, secret_hash: str) -> None:
        async with self._connect() as conn:
            result = await conn.execute(
                sa.update(keys_table)
                .where(keys_table.c.key_id == key_id)
                .values(secret_hash=secret_hash)
            )
        if result.rowcount == 0:
            raise KeyNotFoundError(f"no key with id {key_id!r}")

    @_retry_while_locked
    async def update_limits(
        self, key_id: str, *, rate_limit: str | None, quota: str | None
    ) -> KeyRecord:
        return await self._change(
            key_id,
            sa.update(keys_table)
            .where(keys_table.c.key_id == key_id)
            .values(rate_limit=rate_limit, quota=quota),
        )

    @_retry_while_locked
    async def record_usage(self, key_id: str, *, at: datetime) -> None:
        async with self._connect() as conn:
            await conn.execute(
                sa.update(keys_table)
                .where(
                    keys_table.c.key_id == key_id,
                    sa.or_(
                        keys_table.c.last_used_at.is_(None),
                        keys_table.c.last_used_at < at,
                    ),
                )
                .values(last_used_at=at)
            )

    @_retry_while_locked
    async def add_usage(self, batch: UsageBatch) -> None:
        now = utcnow()
        last_used = sorted(batch.last_used.items())
        async with self._connect() as conn:
            await _sql_usage.add_counts(conn, batch)
            if last_used:
                at = sa.bindparam("b_at", type_=_UTCDateTime)
                await conn.execute(
                    sa.update(keys_table)
                    .where(
                        keys_table.c.key_id == sa.bindparam("b_key_id"),
                        sa.or_(keys_table.c.last_used_at.is_(None), keys_table.c.last_used_at < at),
                    )
                    .values(last_used_at=at),
                    [{"b_key_id": key_id, "b_at": when} for key_id, when in last_used],
                )
            if self._prune_at is None or now >= self._prune_at:
                await _sql_usage.prune(conn, self._retention, now)
        if self._prune_at is None or now >= self._prune_at:
            self._prune_at = now + _PRUNE_INTERVAL

    @_retry_while_locked
    async def usage(
        self, key_id: str, *, since: datetime, until: datetime, granularity: Granularity
    ) -> builtins.list[UsageBucket]:
        check_range(since, until, granularity)
        async with self._connect() as conn:
            return await _sql_usage.read_buckets(conn, key_id, since, until, granularity)

    async def aclose(self) -> None:
        await super().aclose()
        await self._lookups.aclose()
        if self._sqlite is not None:
            async with self._sqlite_limiter:  # not while a worker thread reads
                self._sqlite.close()
        if self._owns_engine:
            await self._engine.dispose()
