"""`SQLKeyStore`: keys in a SQL database through SQLAlchemy 2 (async).

SQLite through aiosqlite is the embedded default (`sqlite:///keys.db`); the same
code is meant to serve PostgreSQL. Install with `pip install 'apiguard-asgi[sqlite]'`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from apiguard.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    KeyNotFoundError,
    KeyStateError,
)
from apiguard.keys._url import hide_password, redact_url
from apiguard.keys.base import BaseKeyStore
from apiguard.keys.record import KeyRecord

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "SQLKeyStore needs SQLAlchemy and aiosqlite: pip install 'apiguard-asgi[sqlite]'"
    ) from exc

__all__ = ["SQLKeyStore"]

_DRIVERS = {"sqlite": "sqlite+aiosqlite"}


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
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("secret_hash", sa.Text, nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", _UTCDateTime, nullable=False),
    sa.Column("expires_at", _UTCDateTime),
    sa.Column("revoked_at", _UTCDateTime),
    sa.Column("last_used_at", _UTCDateTime),
    sa.Column("metadata", sa.JSON, nullable=False),
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
        metadata=MappingProxyType(dict(row["metadata"])),
    )


def _engine_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"not a store URL: {redact_url(url)!r}")
    return f"{_DRIVERS.get(scheme, scheme)}://{rest}"


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


class SQLKeyStore(BaseKeyStore):
    """A key store in a SQL database. The table `apiguard_keys` is created on first use.

    Args:
        engine: An SQLAlchemy `AsyncEngine`. The store does not dispose of an engine
            it was given; `from_url()` makes one the store owns.
    """

    def __init__(self, engine: AsyncEngine, *, _owns_engine: bool = False) -> None:
        super().__init__()
        self._engine = engine
        self._owns_engine = _owns_engine
        if engine.dialect.driver == "aiosqlite":
            logging.getLogger("aiosqlite").addFilter(_no_call_arguments)  # once: a no-op after
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, **engine_options: Any) -> SQLKeyStore:
        """Open a store at `url`, such as `sqlite:///keys.db` (relative) or `sqlite:////abs/keys.db`.

        `engine_options` go to `sqlalchemy.ext.asyncio.create_async_engine`.
        """
        engine_url = _engine_url(url)
        # Driver errors must not carry statement parameters (a secret hash) into logs.
        engine_options.setdefault("hide_parameters", True)
        if engine_url.startswith("sqlite"):
            # Wait for a writer in another process (the CLI) instead of failing at once.
            engine_options.setdefault(
                "connect_args", {"timeout": 10, "async_creator_fn": _open_sqlite}
            )
        try:
            engine = create_async_engine(engine_url, **engine_options)
        except (ImportError, sa_exc.ArgumentError) as exc:
            # The driver's message may quote the URL: shown without its password, and
            # not chained, so no traceback carries the original either.
            raise ConfigurationError(
                f"cannot open key store: {hide_password(str(exc), url)}"
            ) from None
        return cls(engine, _owns_engine=True)

    def __repr__(self) -> str:
        return f"SQLKeyStore(url={self._engine.url.render_as_string(hide_password=True)!r})"

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; driver errors become `BackendUnavailableError`."""
        try:
            if not self._schema_ready:
                async with self._schema_lock:
                    if not self._schema_ready:
                        async with self._engine.begin() as conn:
                            await conn.run_sync(_metadata.create_all)
                        self._schema_ready = True
            async with self._engine.begin() as conn:
                yield conn
        except sa_exc.IntegrityError as exc:
            raise KeyStateError("a key with that id already exists") from exc
        except (sa_exc.DBAPIError, sa_exc.InterfaceError, OSError, TimeoutError) as exc:
            raise BackendUnavailableError(f"key store unavailable: {type(exc).__name__}") from exc

    async def _get(self, conn: AsyncConnection, key_id: str) -> KeyRecord | None:
        result = await conn.execute(sa.select(keys_table).where(keys_table.c.key_id == key_id))
        row = result.mappings().first()
        return None if row is None else _from_row(row)

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self._connect() as conn:
            return await self._get(conn, key_id)

    async def add(self, record: KeyRecord) -> None:
        async with self._connect() as conn:
            await conn.execute(sa.insert(keys_table).values(_to_row(record)))

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        query = sa.select(keys_table).order_by(keys_table.c.created_at, keys_table.c.key_id)
        if name is not None:
            query = query.where(keys_table.c.name == name)
        async with self._connect() as conn:
            result = await conn.execute(query)
            return [_from_row(row) for row in result.mappings()]

    async def revoke(self, key_id: str, *, at: datetime) -> KeyRecord:
        async with self._connect() as conn:
            await conn.execute(
                sa.update(keys_table)
                .where(keys_table.c.key_id == key_id, keys_table.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            record = await self._get(conn, key_id)
        if record is None:
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        self._changed(key_id)
        return record

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
        if old is None:  # deleted by someone else inside our transaction: nothing to rotate
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        self._changed(key_id)
        return old

    async def update_hash(self, key_id: str, secret_hash: str) -> None:
        async with self._connect() as conn:
            result = await conn.execute(
                sa.update(keys_table)
                .where(keys_table.c.key_id == key_id)
                .values(secret_hash=secret_hash)
            )
        if result.rowcount == 0:
            raise KeyNotFoundError(f"no key with id {key_id!r}")

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

    async def aclose(self) -> None:
        if self._owns_engine:
            await self._engine.dispose()
