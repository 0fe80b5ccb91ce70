"""The key lookup of `SQLKeyStore`, straight through the driver.

Every cold key check reads one row by primary key. Through SQLAlchemy's async layer
that costs about half a millisecond of event-loop CPU (a greenlet per call, result
processing), more than the rest of the check together; here the same statement goes
to the driver itself, on the same table:

- SQLite (a database file): a `sqlite3` connection of its own, used by one worker
  thread at a time, which also turns the rows into records: the event loop only
  hands over the ids and takes back the records.
- PostgreSQL through asyncpg: the engine's own pooled connection, and asyncpg's
  prepared statement, without SQLAlchemy's result layer.

Other databases and drivers, and in-memory SQLite, read through SQLAlchemy as
before. The rows are decoded as SQLAlchemy stores them (`sql.py`): JSON text for
scopes and metadata; on SQLite, naive UTC datetimes as text.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from apiguard.keys.record import EMPTY_METADATA, KeyRecord

__all__ = ["COLUMNS", "SqliteReader", "postgres_query", "record_from_row"]

COLUMNS = (
    "key_id",
    "name",
    "secret_hash",
    "scopes",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
    "metadata",
    "rate_limit",
    "quota",
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM apiguard_keys WHERE key_id"  # noqa: S608


def postgres_query() -> str:
    """The PostgreSQL lookup of any number of ids, as one array parameter."""
    return f"{_SELECT} = ANY($1::varchar[])"


def _utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def record_from_row(row: Any) -> KeyRecord:
    """A `KeyRecord` from a row of `COLUMNS`, as sqlite3 or asyncpg return it."""
    metadata = _json(row[8])
    created_at = _utc(row[4])
    assert created_at is not None  # noqa: S101 - NOT NULL in the schema
    return KeyRecord(
        key_id=row[0],
        name=row[1],
        secret_hash=row[2],
        scopes=frozenset(_json(row[3])),
        created_at=created_at,
        expires_at=_utc(row[5]),
        revoked_at=_utc(row[6]),
        last_used_at=_utc(row[7]),
        metadata=MappingProxyType(metadata) if metadata else EMPTY_METADATA,
        rate_limit=row[9],
        quota=row[10],
    )


class SqliteReader:
    """Reads key records from a SQLite file through one `sqlite3` connection.

    `read` blocks: call it in a worker thread, one at a time. A lock held by
    another connection raises `sqlite3.OperationalError` after `timeout` seconds.
    """

    __slots__ = ("_conn", "_path", "_timeout")

    def __init__(self, path: str, timeout: float) -> None:
        self._path = Path(path).resolve().as_uri()
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None

    def read(self, ids: list[str]) -> dict[str, KeyRecord]:
        conn = self._conn
        if conn is None:
            # Read-only, and never creating the file: the store made it (`_prepare`).
            conn = sqlite3.connect(
                f"{self._path}?mode=ro",
                uri=True,
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            self._conn = conn
        rows = conn.execute(f"{_SELECT} IN ({', '.join('?' * len(ids))})", ids).fetchall()
        return {row[0]: record_from_row(row) for row in rows}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
