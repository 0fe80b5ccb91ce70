"""Cold key lookups: concurrent lookups batched into one store round trip, every store
answering a burst of new keys, and the default hash checked without passlib's parsing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Mapping

import anyio
import pytest

from apiguard import BackendUnavailableError
from apiguard.keys import KeyHasher, KeyManager, KeyVerifier, MemoryKeyStore
from apiguard.keys._argon2 import verify_single_threaded
from apiguard.keys._batch import LookupBatcher
from apiguard.keys.format import parse_key
from apiguard.keys.hashing import DEFAULT_SCHEME
from apiguard.keys.record import EMPTY_METADATA
from apiguard.keys.verifier import slow_hash_threads
from apiguard.testing import make_record
from apiguard.types import KeyStore
from tests.conftest import PEPPER

pytestmark = pytest.mark.anyio


class Fetcher:
    """A `fetch` that records each batch of ids, and may be held or made to fail."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def __call__(self, ids: list[str]) -> Mapping[str, str]:
        self.batches.append(ids)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return {key_id: f"record of {key_id}" for key_id in ids if key_id in self.known}


async def test_concurrent_lookups_of_different_keys_share_one_fetch() -> None:
    fetch = Fetcher({f"id{n}" for n in range(0, 50, 2)})
    batcher = LookupBatcher(fetch)
    found = await asyncio.gather(*(batcher.get(f"id{n}") for n in range(50)))
    assert found == [f"record of id{n}" if n % 2 == 0 else None for n in range(50)]
    assert fetch.batches == [[f"id{n}" for n in range(50)]]


async def test_lookups_arriving_during_a_fetch_go_together_in_the_next() -> None:
    fetch = Fetcher({"a", "b", "c"})
    fetch.gate = asyncio.Event()
    batcher = LookupBatcher(fetch)
    first = asyncio.ensure_future(batcher.get("a"))
    await anyio.wait_all_tasks_blocked()
    later = [asyncio.ensure_future(batcher.get(key_id)) for key_id in ("b", "c", "b")]
    await anyio.wait_all_tasks_blocked()
    fetch.gate.set()
    assert await first == "record of a"
    assert [await f for f in later] == ["record of b", "record of c", "record of b"]
    assert fetch.batches == [["a"], ["b", "c"]]


async def test_batches_are_bounded() -> None:
    fetch = Fetcher(set())
    batcher = LookupBatcher(fetch, max_batch=3)
    await asyncio.gather(*(batcher.get(f"id{n}") for n in range(7)))
    assert [len(ids) for ids in fetch.batches] == [3, 3, 1]


async def test_a_caller_that_gives_up_does_not_cut_the_fetch_for_the_others() -> None:
    fetch = Fetcher({"a", "b"})
    fetch.gate = asyncio.Event()
    batcher = LookupBatcher(fetch)
    other = asyncio.ensure_future(batcher.get("b"))
    with anyio.move_on_after(0.01):
        await batcher.get("a")
    fetch.gate.set()
    assert await other == "record of b"
    assert [sorted(ids) for ids in fetch.batches] == [["a", "b"]]


async def test_a_failed_fetch_fails_its_callers_and_not_the_next() -> None:
    fetch = Fetcher({"a"})
    fetch.error = BackendUnavailableError("key store unavailable: OSError")
    batcher = LookupBatcher(fetch)
    outcomes = await asyncio.gather(batcher.get("a"), batcher.get("b"), return_exceptions=True)
    assert all(isinstance(o, BackendUnavailableError) for o in outcomes)
    fetch.error = None
    assert await batcher.get("a") == "record of a"


async def test_closing_cancels_the_lookups_under_way() -> None:
    fetch = Fetcher({"a"})
    fetch.gate = asyncio.Event()
    batcher = LookupBatcher(fetch)
    pending = asyncio.ensure_future(batcher.get("a"))
    await anyio.wait_all_tasks_blocked()
    await batcher.aclose()
    with pytest.raises(asyncio.CancelledError):
        await pending


async def test_every_store_answers_a_burst_of_new_keys(store: KeyStore) -> None:
    """300 lookups at once: more than redis-py's 100 pooled connections, and more
    than SQLAlchemy's pool; each gets its own record, or `None`."""
    ids = [f"burst{n:07d}" for n in range(300)]
    for key_id in ids[::3]:
        await store.add(make_record(key_id, name=f"owner of {key_id}"))
    found = await asyncio.gather(*(store.get(key_id) for key_id in ids))
    for n, (key_id, record) in enumerate(zip(ids, found, strict=True)):
        if n % 3 == 0:
            assert record == make_record(key_id, name=f"owner of {key_id}")
        else:
            assert record is None


async def test_a_lookup_cut_off_by_a_deadline_leaves_the_store_working(store: KeyStore) -> None:
    await store.add(make_record("cut000000000"))
    with anyio.move_on_after(0):
        await store.get("cut000000000")
    assert await store.get("cut000000000") == make_record("cut000000000")


async def test_an_issued_key_verifies_against_its_stored_hash() -> None:
    hasher = KeyHasher(PEPPER)
    issued = await KeyManager(MemoryKeyStore(), hasher).create("alice")
    stored = issued.record.secret_hash
    secret = parse_key(issued.key).secret
    assert hasher.is_fast(stored)
    assert hasher.verify(secret, stored) == (True, None)
    assert hasher.verify(issued.key, stored) == (False, None)  # the whole key is not the secret
    assert KeyHasher("another-pepper-0123456789abcdef-xyz").verify(secret, stored) == (False, None)


@pytest.mark.parametrize(
    "checksum",
    ["", "0" * 63, "G" * 64, "é" * 64, "\x00" * 64],
    ids=["empty", "short", "not-hex", "non-ascii", "nul"],
)
def test_a_malformed_default_hash_matches_nothing(checksum: str) -> None:
    hasher = KeyHasher(PEPPER)
    assert hasher.verify("secret", f"$hmac-sha256${checksum}") == (False, None)


def test_the_default_hash_is_an_hmac_of_the_secret_under_the_pepper() -> None:
    hasher = KeyHasher(PEPPER)
    digest = hmac.new(PEPPER.encode(), b"s3cret", hashlib.sha256).hexdigest()
    assert hasher.hash("s3cret") == f"$hmac-sha256${digest}"
    assert hasher.verify("s3cret", f"$hmac-sha256${digest}") == (True, None)
    assert hasher.verify("s3creT", f"$hmac-sha256${digest}") == (False, None)
    assert hasher.verify("s3cret", f"$hmac-sha256${digest.upper()}") == (False, None)
    assert DEFAULT_SCHEME == "apiguard_hmac_sha256"


async def test_cached_keys_share_their_scope_sets_and_empty_metadata(store: KeyStore) -> None:
    """What makes a cached key cost well under a kilobyte: keys granting the same
    scopes share one scope set and one `AuthCredentials`, and keys without metadata
    one empty mapping."""
    hasher = KeyHasher(PEPPER)
    manager = KeyManager(store, hasher)
    first, second, other = [
        await manager.create(name, scopes=scopes)
        for name, scopes in (("a", ["x", "y"]), ("b", ["y", "x"]), ("c", ["x"]))
    ]
    verifier = KeyVerifier(store, hasher)
    (p1, c1), (p2, c2), (p3, c3) = [
        await verifier.verify(issued.key.encode()) for issued in (first, second, other)
    ]
    assert p1.scopes == p2.scopes == {"x", "y"}
    assert p3.scopes == {"x"}
    assert p1.scopes is p2.scopes
    assert c1 is c2
    assert c1.scopes == ["x", "y"]
    assert c3.scopes == ["x"]
    assert p1.metadata is p2.metadata is p3.metadata is EMPTY_METADATA
    assert dict(p1.metadata) == {}
    assert dict(p1.claims) == {}


@pytest.mark.parametrize(
    "scheme",
    [
        {"type": "ID"},
        {"type": "I"},
        {"type": "D", "parallelism": 3},
        {"type": "ID", "parallelism": 1},
    ],
    ids=["argon2id", "argon2i", "argon2d-p3", "argon2id-p1"],
)
def test_argon2_hashes_verify_as_passlib_does_and_migrate(scheme: dict[str, object]) -> None:
    """Imported argon2 hashes, whatever their variant and parallelism, are verified
    (computed in one thread) with passlib's verdict, and migrated on success."""
    from passlib.hash import argon2

    hasher = KeyHasher(PEPPER)
    kind = str(scheme["type"]).lower()
    stored = argon2.using(
        type=kind, memory_cost=256, rounds=1, parallelism=scheme.get("parallelism", 4)
    ).hash("imported secret")
    assert verify_single_threaded("imported secret", stored) is True
    assert verify_single_threaded("imported secreT", stored) is False
    ok, new_hash = hasher.verify("imported secret", stored)
    assert ok is True
    assert new_hash is not None
    assert hasher.verify("imported secret", new_hash) == (True, None)
    assert hasher.verify("imported secreT", stored) == (False, None)


@pytest.mark.parametrize(
    "stored",
    [
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$",  # no checksum
        "$argon2id$v=19$m=99999999999,t=3,p=4$c2FsdHNhbHQ$YWJjZGVmZ2g",  # absurd memory
        "$argon2id$v=19$m=65536,t=3,p=0$c2FsdHNhbHQ$YWJjZGVmZ2g",  # no lanes
        "$argon2id$v=19$m=64,t=1,p=1$c2Fs$YWJjZGVmZ2g",  # salt too short
        "$argon2id$v=7$m=64,t=1,p=1$c2FsdHNhbHQ$YWJjZGVmZ2g",  # unknown version
        "$argon2x$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$YWJjZGVmZ2g",  # unknown variant
    ],
)
def test_argon2_hashes_it_cannot_read_are_left_to_passlib(stored: str) -> None:
    """Nothing is computed from a hash out of bounds; passlib refuses it (no match)."""
    assert verify_single_threaded("secret", stored) is None
    assert KeyHasher(PEPPER).verify("secret", stored) == (False, None)


def test_argon2_is_not_accepted_unless_asked_for() -> None:
    from passlib.hash import argon2

    stored = argon2.using(memory_cost=256, rounds=1).hash("imported secret")
    assert KeyHasher(PEPPER, accept=["bcrypt_sha256"]).verify("imported secret", stored) == (
        False,
        None,
    )


def test_slow_hash_threads_leave_the_event_loop_a_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for cores, threads in ((1, 1), (2, 1), (8, 7)):
        monkeypatch.setattr(os, "process_cpu_count", lambda n=cores: n, raising=False)
        assert slow_hash_threads() == threads
    monkeypatch.setattr(os, "process_cpu_count", lambda: None, raising=False)
    assert slow_hash_threads() == 1
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert slow_hash_threads() == 2


async def test_other_sql_databases_read_through_sqlalchemy_in_one_query() -> None:
    """In-memory SQLite (one connection for the whole engine) has no file for a
    connection of its own: lookups go through SQLAlchemy, still batched."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import StaticPool

    from apiguard.keys.sql import SQLKeyStore

    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    selects: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda *args: selects.append(args[2]) if "FROM apiguard_keys" in args[2] else None,
    )
    store = SQLKeyStore(engine)
    try:
        for n in range(0, 20, 2):
            await store.add(make_record(f"memory{n:06d}", name=f"n{n}"))
        selects.clear()
        found = await asyncio.gather(*(store.get(f"memory{n:06d}") for n in range(20)))
        assert found == [
            make_record(f"memory{n:06d}", name=f"n{n}") if n % 2 == 0 else None for n in range(20)
        ]
        assert len(selects) == 1
    finally:
        await store.aclose()
        await engine.dispose()
