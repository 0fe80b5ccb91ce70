"""A key store of your own: API key records in a JSON file, one object per key.

Any class with the `KeyStore` methods will do; `BaseKeyStore` adds the listeners
(`add_listener`) and `aclose()`. Check it with the contract suite every store
passes (tests/test_examples_more.py does it for this one):

    from apiguard.testing import KeyStoreContract

    class TestJSONFileKeyStore(KeyStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return JSONFileKeyStore(tmp_path / "keys.json")

Run the API with it (a key is made and printed at startup):

    uvicorn examples.custom_store:app
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiguard import APIKeyMiddleware, KeyNotFoundError, KeyRecord, KeyStateError
from apiguard.keys import BaseKeyStore, KeyHasher, KeyManager

_TIMES = ("created_at", "expires_at", "revoked_at", "last_used_at")


def _to_json(record: KeyRecord) -> dict[str, Any]:
    data = {field.name: getattr(record, field.name) for field in fields(record)}
    data |= {"scopes": sorted(record.scopes), "metadata": dict(record.metadata)}
    for name in _TIMES:
        data[name] = None if data[name] is None else data[name].isoformat()
    return data


def _from_json(data: dict[str, Any]) -> KeyRecord:
    times = {n: None if data[n] is None else datetime.fromisoformat(data[n]) for n in _TIMES}
    collections = {
        "scopes": frozenset(data["scopes"]),
        "metadata": MappingProxyType(data["metadata"]),
    }
    return KeyRecord(**(data | times | collections))


class JSONFileKeyStore(BaseKeyStore):
    """Key records in one JSON file, rewritten whole (atomically) on every change.

    For a handful of keys and one process; reads are served from memory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self._path = Path(path)
        self._lock = anyio.Lock()
        self._records: dict[str, KeyRecord] = {}
        if self._path.exists():
            for data in json.loads(self._path.read_text()):
                record = _from_json(data)
                self._records[record.key_id] = record

    def __repr__(self) -> str:
        return f"JSONFileKeyStore({str(self._path)!r})"

    async def _save(self) -> None:
        text = json.dumps([_to_json(r) for r in self._records.values()], indent=2)

        def write() -> None:
            with tempfile.NamedTemporaryFile("w", dir=self._path.parent, delete=False) as out:
                out.write(text)
            os.replace(out.name, self._path)  # readers see the old file or the new one

        await anyio.to_thread.run_sync(write)

    def _require(self, key_id: str) -> KeyRecord:
        if key_id not in self._records:
            raise KeyNotFoundError(f"no key with id {key_id!r}")
        return self._records[key_id]

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        records = [r for r in self._records.values() if name is None or r.name == name]
        return sorted(records, key=lambda r: (r.created_at, r.key_id))

    async def add(self, record: KeyRecord) -> None:
        async with self._lock:
            if record.key_id in self._records:
                raise KeyStateError(f"a key with id {record.key_id!r} already exists")
            self._records[record.key_id] = record
            await self._save()

    async def revoke(self, key_id: str, *, at: datetime) -> KeyRecord:
        async with self._lock:
            record = self._require(key_id)
            if record.revoked_at is None:
                record = self._records[key_id] = replace(record, revoked_at=at)
                await self._save()
        self._changed(key_id)  # tells the middleware's cache at once
        return record

    async def rotate(self, key_id: str, new: KeyRecord, *, old_expires_at: datetime) -> KeyRecord:
        async with self._lock:
            old = self._require(key_id)
            if new.key_id in self._records:
                raise KeyStateError(f"a key with id {new.key_id!r} already exists")
            self._records[new.key_id] = new
            if old.expires_at is None or old.expires_at > old_expires_at:
                old = self._records[key_id] = replace(old, expires_at=old_expires_at)
            await self._save()
        self._changed(key_id)
        return old

    async def update_hash(self, key_id: str, secret_hash: str) -> None:
        async with self._lock:
            self._records[key_id] = replace(self._require(key_id), secret_hash=secret_hash)
            await self._save()

    async def record_usage(self, key_id: str, *, at: datetime) -> None:
        # Kept in memory only: a file rewrite per request would cost more than it tells.
        record = self._records.get(key_id)
        if record is not None and (record.last_used_at is None or record.last_used_at < at):
            self._records[key_id] = replace(record, last_used_at=at)


store = JSONFileKeyStore(os.environ.get("KEYS_FILE", "apiguard-keys.json"))
pepper = os.environ.get("APIGUARD_PEPPER") or secrets.token_urlsafe(32)


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": request.user.display_name})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    issued = await KeyManager(store, KeyHasher(pepper)).create("me")
    print(f"curl -H 'X-API-Key: {issued.key}' http://127.0.0.1:8000/")
    yield
    await store.aclose()


app = Starlette(
    routes=[Route("/", hello)],
    middleware=[Middleware(APIKeyMiddleware, store=store, pepper=pepper)],
    lifespan=lifespan,
)
