"""The store contract suite, as a user of the installed wheel runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apiguard.keys import MemoryKeyStore, open_store
from apiguard.testing import KeyStoreContract
from apiguard.types import KeyStore


class TestMemoryStore(KeyStoreContract):
    @pytest.fixture
    async def store(self) -> KeyStore:
        return MemoryKeyStore()


class TestSQLiteStore(KeyStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[KeyStore]:
        store = open_store(f"sqlite:///{tmp_path}/keys.db")
        yield store
        await store.aclose()
