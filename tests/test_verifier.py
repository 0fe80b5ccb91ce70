from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from passlib.hash import pbkdf2_sha256

from apiguard import BackendUnavailableError, CacheOptions, ConfigurationError, InvalidCredentials
from apiguard.keys import KeyHasher, KeyManager, KeyVerifier, MemoryKeyStore, open_store
from apiguard.keys.channel import ALL_KEYS, InvalidationChannel
from apiguard.keys.record import KeyRecord
from apiguard.testing import FakeClock, make_record

pytestmark = pytest.mark.anyio


class CountingStore(MemoryKeyStore):
    """A memory store that counts lookups and can be switched off."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.down = False
        self.quiet = False  # changes made as if by another process: no listener is told
        self.gate: anyio.Event | None = None

    def _changed(self, key_id: str) -> None:
        if not self.quiet:
            super()._changed(key_id)

    async def get(self, key_id: str) -> KeyRecord | None:
        self.gets += 1
        if self.down:
            raise BackendUnavailableError("store down")
        if self.gate is not None:
            await self.gate.wait()
        return await super().get(key_id)


@pytest.fixture
def counting() -> CountingStore:
    return CountingStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(counting: CountingStore, hasher: KeyHasher, clock: FakeClock) -> KeyVerifier:
    return KeyVerifier(counting, hasher, cache=CacheOptions(ttl=30, negative_ttl=5), clock=clock)


async def test_valid_key_gives_principal(verifier: KeyVerifier, hasher: KeyHasher) -> None:
    issued = await KeyManager(verifier.store, hasher).create(
        "billing", scopes=["invoices:read"], metadata={"tier": "gold"}
    )
    principal, credentials = await verifier.verify(issued.key.encode())
    assert principal.kind == "api_key"
    assert principal.identity == principal.key_id == issued.record.key_id
    assert principal.display_name == "billing"
    assert principal.scopes == {"invoices:read"}
    assert dict(principal.metadata) == {"tier": "gold"}
    assert credentials.scopes == ["invoices:read"]


async def test_warm_cache_skips_the_store(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    issued = await KeyManager(counting, hasher).create("a")
    for _ in range(5):
        await verifier.verify(issued.key.encode())
    assert counting.gets == 1
    clock.now += 31  # the positive TTL has passed
    await verifier.verify(issued.key.encode())
    assert counting.gets == 2


async def test_refusals_are_negative_cached_but_malformed_keys_never_reach_the_store(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    issued = await KeyManager(counting, hasher).create("a")
    wrong = issued.key[:4] + "000000000000" + issued.key[16:]  # well-formed id? no: checksum
    with pytest.raises(InvalidCredentials) as info:
        await verifier.verify(wrong.encode())
    assert info.value.reason == "bad checksum"
    assert counting.gets == 0

    from apiguard.keys import format_key

    unknown = format_key("apg", "unknown00000", "x" * 43)
    for _ in range(3):
        with pytest.raises(InvalidCredentials) as info:
            await verifier.verify(unknown.encode())
        assert info.value.reason == "unknown key"
    assert counting.gets == 1
    clock.now += 6  # the negative TTL has passed
    with pytest.raises(InvalidCredentials):
        await verifier.verify(unknown.encode())
    assert counting.gets == 2


async def test_wrong_secret_for_a_real_key_id(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher
) -> None:
    from apiguard.keys import format_key

    issued = await KeyManager(counting, hasher).create("a")
    forged = format_key("apg", issued.record.key_id, "y" * 43)
    with pytest.raises(InvalidCredentials) as info:
        await verifier.verify(forged.encode())
    assert info.value.reason == "wrong secret"
    assert info.value.credential_id == issued.record.key_id


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"apg_" + "é".encode() * 40, b"a" * 10_000])
async def test_garbage_bytes_are_malformed(verifier: KeyVerifier, raw: bytes) -> None:
    with pytest.raises(InvalidCredentials) as info:
        await verifier.verify(raw)
    assert info.value.reason == "malformed"


async def test_revoke_in_this_process_takes_effect_at_once(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher
) -> None:
    manager = KeyManager(counting, hasher)
    issued = await manager.create("a")
    await verifier.verify(issued.key.encode())
    await manager.revoke(issued.record.key_id)
    with pytest.raises(InvalidCredentials) as info:
        await verifier.verify(issued.key.encode())
    assert info.value.reason == "revoked"


async def test_revoke_elsewhere_takes_effect_within_the_ttl(
    tmp_path: Path, hasher: KeyHasher, clock: FakeClock
) -> None:
    """Another process (another store object on the same database) is seen after the TTL."""
    url = f"sqlite:///{tmp_path}/keys.db"
    server_store, admin_store = open_store(url), open_store(url)
    try:
        verifier = KeyVerifier(server_store, hasher, cache=CacheOptions(ttl=30), clock=clock)
        admin = KeyManager(admin_store, hasher)
        issued = await admin.create("a")
        await verifier.verify(issued.key.encode())
        await admin.revoke(issued.record.key_id)
        await verifier.verify(issued.key.encode())  # still cached: within the TTL
        clock.now += 30
        with pytest.raises(InvalidCredentials):
            await verifier.verify(issued.key.encode())
    finally:
        await server_store.aclose()
        await admin_store.aclose()


async def test_all_keys_forgets_every_verification(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher
) -> None:
    """`ALL_KEYS` (a channel that reconnected, having missed events) empties the cache."""
    manager = KeyManager(counting, hasher)
    keys = [(await manager.create(name)).key.encode() for name in ("a", "b")]
    for key in keys:
        await verifier.verify(key)
    verifier.invalidate(ALL_KEYS)
    for key in keys:
        await verifier.verify(key)
    assert counting.gets == 4


async def test_revoke_during_a_lookup_is_not_undone_by_it(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher
) -> None:
    """A lookup that read the record before a revoke must not cache its result."""
    manager = KeyManager(counting, hasher)
    issued = await manager.create("a")
    counting.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(verifier.verify, issued.key.encode())
        await anyio.sleep(0.01)  # the lookup is waiting inside store.get
        verifier.invalidate(issued.record.key_id)  # as a revoke would
        counting.gate.set()
    counting.gate = None
    await verifier.verify(issued.key.encode())
    assert counting.gets == 2  # the first result was not cached


async def test_a_request_after_a_revoke_never_joins_a_lookup_from_before_it(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher
) -> None:
    """A request that starts after `revoke()` returned is refused, even while a lookup
    that read the key before the revoke is still in flight for the same key."""
    manager = KeyManager(counting, hasher)
    issued = await manager.create("a")
    key = issued.key.encode()
    read, release = anyio.Event(), anyio.Event()

    async def read_then_wait(key_id: str) -> KeyRecord | None:
        record = await MemoryKeyStore.get(counting, key_id)  # read before the revoke
        read.set()
        await release.wait()
        return record

    counting.get = read_then_wait  # type: ignore[method-assign]
    outcomes: dict[str, str] = {}

    async def request(name: str) -> None:
        try:
            await verifier.verify(key)
        except InvalidCredentials as exc:
            outcomes[name] = exc.reason
        else:
            outcomes[name] = "granted"

    async with anyio.create_task_group() as tg:
        tg.start_soon(request, "before")
        await read.wait()
        await manager.revoke(issued.record.key_id)
        tg.start_soon(request, "after")
        await anyio.sleep(0.01)  # "after" is now waiting, not sharing "before"'s lookup
        release.set()
    assert outcomes == {"before": "granted", "after": "revoked"}


async def test_cache_never_outlives_the_key(counting: CountingStore, hasher: KeyHasher) -> None:
    verifier = KeyVerifier(counting, hasher, cache=CacheOptions(ttl=3600))
    issued = await KeyManager(counting, hasher).create("a", expires_in=timedelta(seconds=0.3))
    await verifier.verify(issued.key.encode())
    await anyio.sleep(0.35)
    with pytest.raises(InvalidCredentials) as info:
        await verifier.verify(issued.key.encode())
    assert info.value.reason == "expired"


async def test_concurrent_requests_share_one_lookup(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher
) -> None:
    issued = await KeyManager(counting, hasher).create("a")
    counting.gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(verifier.verify, issued.key.encode())
        await anyio.sleep(0.01)
        counting.gate.set()
    assert counting.gets == 1


async def test_store_outage_raises_and_is_not_cached(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    """An outage is not cached, but the store is not asked again at once (backoff)."""
    manager = KeyManager(counting, hasher)
    issued, other = await manager.create("a"), await manager.create("b")
    counting.down = True
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(issued.key.encode())
    assert counting.gets == 1
    counting.down = False
    for key in (issued.key, other.key):  # any key: it is the store that is failing
        with pytest.raises(BackendUnavailableError, match="backing off"):
            await verifier.verify(key.encode())
    assert counting.gets == 1
    clock.now += 1.0  # the first delay is 0.5-1 s
    principal, _ = await verifier.verify(issued.key.encode())
    assert principal.key_id == issued.record.key_id


async def test_keys_verified_before_an_outage_are_served_from_the_cache(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher
) -> None:
    """During an outage, a key verified less than `ttl` ago still works; others get 503."""
    manager = KeyManager(counting, hasher)
    known, unknown = await manager.create("a"), await manager.create("b")
    await verifier.verify(known.key.encode())
    counting.down = True
    principal, _ = await verifier.verify(known.key.encode())
    assert principal.key_id == known.record.key_id
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(unknown.key.encode())


async def test_a_hanging_store_is_cut_off_by_the_deadline(
    counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    """A lookup ends within `deadline` (503), and the store is not asked again at once."""
    verifier = KeyVerifier(counting, hasher, deadline=0.2, clock=clock)
    issued = await KeyManager(counting, hasher).create("a")
    counting.gate = anyio.Event()  # never set: the store hangs
    started = anyio.current_time()
    with pytest.raises(BackendUnavailableError, match=r"no answer within 0\.2 s"):
        await verifier.verify(issued.key.encode())
    assert anyio.current_time() - started < 2
    counting.gate = None
    with pytest.raises(BackendUnavailableError, match="backing off"):  # not asked at once
        await verifier.verify(issued.key.encode())
    clock.now += 1.0
    await verifier.verify(issued.key.encode())


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - polls a list the tasks append to
            await anyio.sleep(0.005)


async def _slow_record(counting: CountingStore, secret: str) -> None:
    await counting.add(make_record("SLOWSLOWSLOW", secret_hash=pbkdf2_sha256.hash(secret)))


async def test_slow_hash_is_verified_off_the_loop_once_and_migrated(
    verifier: KeyVerifier,
    counting: CountingStore,
    hasher: KeyHasher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apiguard.keys import format_key

    secret = "s" * 43
    await _slow_record(counting, secret)
    threads: list[int] = []
    real_verify = KeyHasher.verify

    def spy(self: KeyHasher, secret: str, stored: str) -> tuple[bool, str | None]:
        threads.append(threading.get_ident())
        time.sleep(0.05)
        return real_verify(self, secret, stored)

    monkeypatch.setattr(KeyHasher, "verify", spy)
    key = format_key("apg", "SLOWSLOWSLOW", secret).encode()

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        for _ in range(10):
            await verifier.verify(key)
        tg.cancel_scope.cancel()
    await verifier.flush()

    assert len(threads) == 1  # hashed once for ten requests
    assert threads[0] != threading.get_ident()  # in a worker thread
    assert ticks >= 3  # the event loop kept running while it hashed
    record = await counting.get("SLOWSLOWSLOW")
    assert record is not None
    assert hasher.is_fast(record.secret_hash)  # migrated to the default scheme


async def test_failed_migration_still_grants(
    verifier: KeyVerifier, counting: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    from apiguard.keys import format_key

    await _slow_record(counting, "s" * 43)

    async def fail(key_id: str, secret_hash: str) -> None:
        raise BackendUnavailableError("down")

    counting.update_hash = fail  # type: ignore[method-assign]
    principal, _ = await verifier.verify(format_key("apg", "SLOWSLOWSLOW", "s" * 43).encode())
    assert principal.key_id == "SLOWSLOWSLOW"
    await verifier.flush()
    assert "could not migrate" in caplog.text


async def test_forged_secrets_for_one_imported_key_cannot_starve_the_others(
    counting: CountingStore, hasher: KeyHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow-hash work is bounded per key id and in all: a flood of forged secrets for
    one imported key is shed (503) beyond its share, and another imported key is
    still verified."""
    from apiguard.keys import format_key

    await _slow_record(counting, "s" * 43)
    await counting.add(make_record("OTHEROTHEROT", secret_hash=pbkdf2_sha256.hash("o" * 43)))
    release = threading.Event()  # forged hashes take as long as the test says
    hashed: list[str] = []
    real_verify = KeyHasher.verify

    def slow(self: KeyHasher, secret: str, stored: str) -> tuple[bool, str | None]:
        hashed.append(secret[0])
        if secret[0] != "o":
            release.wait(10)
        return real_verify(self, secret, stored)

    monkeypatch.setattr(KeyHasher, "verify", slow)
    verifier = KeyVerifier(counting, hasher, slow_hash_concurrency=2, slow_hash_per_key=4)
    outcomes: list[str] = []

    async def forged(i: int) -> None:
        try:
            await verifier.verify(format_key("apg", "SLOWSLOWSLOW", f"{i:043d}").encode())
        except InvalidCredentials:
            outcomes.append("401")
        except BackendUnavailableError:
            outcomes.append("503")

    async def legit() -> None:
        await verifier.verify(format_key("apg", "OTHEROTHEROT", "o" * 43).encode())
        outcomes.append("legit")

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(forged, i)
        tg.start_soon(legit)
        await _until(lambda: len(outcomes) >= 96)
        await anyio.sleep(0.05)
        assert outcomes == ["503"] * 96  # shed at once, while the admitted ones wait
        release.set()
    assert sorted(outcomes) == ["401"] * 4 + ["503"] * 96 + ["legit"]
    assert len(hashed) == 5  # the key's share of the queue, and the other key


async def test_the_slow_hash_queue_is_bounded_in_all(
    counting: CountingStore, hasher: KeyHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apiguard.keys import format_key

    for i in range(10):
        await counting.add(make_record(f"SLOW{i:08d}", secret_hash=pbkdf2_sha256.hash("s" * 43)))
    release = threading.Event()

    def blocked(self: KeyHasher, secret: str, stored: str) -> tuple[bool, str | None]:
        release.wait(10)
        return False, None

    monkeypatch.setattr(KeyHasher, "verify", blocked)
    verifier = KeyVerifier(counting, hasher, slow_hash_queue=6, slow_hash_per_key=4)
    statuses: list[str] = []

    async def forged(i: int) -> None:
        try:
            await verifier.verify(format_key("apg", f"SLOW{i % 10:08d}", f"{i:043d}").encode())
        except InvalidCredentials:
            statuses.append("401")
        except BackendUnavailableError:
            statuses.append("503")

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(forged, i)
        await _until(lambda: len(statuses) >= 44)
        await anyio.sleep(0.05)
        assert statuses == ["503"] * 44
        release.set()
    assert sorted(statuses) == ["401"] * 6 + ["503"] * 44


async def test_prefixes_are_configurable(counting: CountingStore, hasher: KeyHasher) -> None:
    verifier = KeyVerifier(counting, hasher, prefixes=["acme"])
    issued = await KeyManager(counting, hasher, prefix="acme").create("a")
    principal, _ = await verifier.verify(issued.key.encode())
    assert principal.name == "a"
    other = await KeyManager(counting, hasher).create("b")
    with pytest.raises(InvalidCredentials) as info:
        await verifier.verify(other.key.encode())
    assert info.value.reason == "unknown prefix"


async def test_bad_options(counting: CountingStore, hasher: KeyHasher) -> None:
    with pytest.raises(ConfigurationError):
        KeyVerifier(counting, hasher, prefixes=[])
    with pytest.raises(ConfigurationError):
        CacheOptions(max_size=0)
    with pytest.raises(ConfigurationError):
        CacheOptions(ttl=-1)


async def test_record_fields_reach_the_principal(
    counting: CountingStore, hasher: KeyHasher
) -> None:
    """A record edited in the store is picked up on the next cache fill."""
    verifier = KeyVerifier(counting, hasher, cache=CacheOptions(ttl=0))
    issued = await KeyManager(counting, hasher).create("a", scopes=["x"])
    counting._records[issued.record.key_id] = replace(issued.record, scopes=frozenset({"y"}))
    principal, _ = await verifier.verify(issued.key.encode())
    assert principal.scopes == {"y"}


class SwitchChannel(InvalidationChannel):
    """A channel the test connects and loses by hand (no subscriber task)."""

    def __init__(self) -> None:
        super().__init__()
        self.apply: Callable[[str], None] = lambda key_id: None

    async def publish(self, key_id: str) -> None:
        pass

    async def _listen(self, connected: Callable[[], None], deliver: Callable[[str], None]) -> None:
        raise NotImplementedError

    def start(self, apply: Callable[[str], None]) -> None:
        self.apply = apply

    def up(self) -> None:
        self.connected = True
        self.apply(ALL_KEYS)

    def down(self) -> None:
        self.connected = False
        for callback in self._lost:
            callback()


async def test_a_shorter_ttl_while_the_channel_is_down(
    counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    """`ttl_without_push`: lost, the cache empties and refills for the short ttl; back, `ttl`."""
    channel = SwitchChannel()
    counting.channel = channel
    options = CacheOptions(ttl=300, ttl_without_push=1)
    verifier = KeyVerifier(counting, hasher, cache=options, clock=clock)
    key = (await KeyManager(counting, hasher).create("a")).key.encode()
    channel.up()
    await verifier.verify(key)
    clock.now += 100
    await verifier.verify(key)
    assert counting.gets == 1  # pushed: trusted for the whole ttl
    channel.down()
    await verifier.verify(key)
    assert counting.gets == 2  # the loss emptied the cache
    clock.now += 0.5
    await verifier.verify(key)
    clock.now += 1
    await verifier.verify(key)
    assert counting.gets == 3  # while down, one second at a time
    channel.up()
    await verifier.verify(key)
    clock.now += 100
    await verifier.verify(key)
    assert counting.gets == 4


async def test_without_ttl_without_push_a_lost_channel_changes_nothing(
    counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    """By default a channel outage keeps the cache and its `ttl`."""
    channel = SwitchChannel()
    counting.channel = channel
    verifier = KeyVerifier(counting, hasher, cache=CacheOptions(ttl=300), clock=clock)
    key = (await KeyManager(counting, hasher).create("a")).key.encode()
    await verifier.verify(key)
    channel.down()
    clock.now += 100
    await verifier.verify(key)
    assert counting.gets == 1


def test_ttl_without_push_cannot_be_negative() -> None:
    with pytest.raises(ConfigurationError):
        CacheOptions(ttl_without_push=-1)


STALE = CacheOptions(ttl=30, negative_ttl=5, stale_if_error=60)


async def test_stale_if_error_serves_a_grant_past_its_ttl_during_an_outage(
    counting: CountingStore,
    hasher: KeyHasher,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Within `ttl` + `stale_if_error` an outage is answered from the cache, and logged."""
    verifier = KeyVerifier(counting, hasher, cache=STALE, clock=clock)
    issued = await KeyManager(counting, hasher).create("a")
    key = issued.key.encode()
    await verifier.verify(key)
    counting.down = True
    clock.now += 31
    with caplog.at_level(logging.WARNING, logger="apiguard.keys"):
        principal, _ = await verifier.verify(key)
    assert principal.key_id == issued.record.key_id
    assert counting.gets == 2  # the store was asked first
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "stale_if_error" in record.getMessage()
    assert f"key_id={issued.record.key_id}" in record.getMessage()
    assert issued.key not in caplog.text
    assert issued.key.rsplit("_", 1)[-1] not in caplog.text  # nor the secret part
    clock.now += 9.9
    await verifier.verify(key)
    assert len(caplog.records) == 1  # at most once per 10 s per key
    clock.now += 0.1
    await verifier.verify(key)
    assert len(caplog.records) == 2
    clock.now += 48.5
    await verifier.verify(key)
    clock.now += 0.5  # 30 + 60 s after the verification
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(key)
    counting.down = False
    clock.now += 4.0  # past the backoff (the store failed three times in a row)
    await verifier.verify(key)
    assert counting.gets == 5  # asked once per backoff delay, not on every request


async def test_stale_if_error_is_off_by_default(
    verifier: KeyVerifier, counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    key = (await KeyManager(counting, hasher).create("a")).key.encode()
    await verifier.verify(key)
    counting.down = True
    clock.now += 30
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(key)


async def test_stale_if_error_never_serves_past_the_keys_expiry(
    counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    verifier = KeyVerifier(counting, hasher, cache=replace(STALE, stale_if_error=3600), clock=clock)
    issued = await KeyManager(counting, hasher).create("a", expires_in=timedelta(seconds=120))
    key = issued.key.encode()
    await verifier.verify(key)
    counting.down = True
    clock.now += 60
    await verifier.verify(key)
    clock.now += 61  # past the key's expiry, well within stale_if_error
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(key)


@pytest.mark.parametrize("how", ["revoke", "all keys"])
async def test_stale_if_error_never_serves_an_invalidated_key(
    counting: CountingStore, hasher: KeyHasher, clock: FakeClock, how: str
) -> None:
    """A revoke in this process, or a pushed one, drops the grant: an outage is then 503."""
    verifier = KeyVerifier(counting, hasher, cache=STALE, clock=clock)
    manager = KeyManager(counting, hasher)
    issued = await manager.create("a")
    await verifier.verify(issued.key.encode())
    if how == "revoke":
        await manager.revoke(issued.record.key_id)
    else:
        verifier.invalidate(ALL_KEYS)
    counting.down = True
    for _ in range(2):  # also within the ttl
        with pytest.raises(BackendUnavailableError):
            await verifier.verify(issued.key.encode())
        clock.now += 31


async def test_stale_if_error_never_serves_a_refused_key(
    counting: CountingStore, hasher: KeyHasher, clock: FakeClock
) -> None:
    """A key refused after its grant (revoked elsewhere) is not served stale later."""
    verifier = KeyVerifier(counting, hasher, cache=STALE, clock=clock)
    manager = KeyManager(counting, hasher)
    issued, never = await manager.create("a"), await manager.create("b")
    await verifier.verify(issued.key.encode())
    counting.quiet = True
    await manager.revoke(issued.record.key_id)
    clock.now += 31
    with pytest.raises(InvalidCredentials):
        await verifier.verify(issued.key.encode())
    clock.now += 5  # the refusal is no longer cached either
    counting.down = True
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(issued.key.encode())
    with pytest.raises(BackendUnavailableError):
        await verifier.verify(never.key.encode())  # never granted, nothing to serve


def test_stale_if_error_cannot_be_negative() -> None:
    with pytest.raises(ConfigurationError):
        CacheOptions(stale_if_error=-1)
