"""Every backend, faulted for real: the answer is a 503 with `Retry-After` (or the 401
the credential deserves), never a 500 and never a pass; it comes within the deadline;
the backend is not hammered while it is failing; and service comes back on its own.

The authorization server is `tests.fault_server` on loopback (uvicorn), PostgreSQL
and Redis are real servers (`tests.servers`), SQLite is a real file. Requests go
through the whole middleware. Each fault kind is listed in docs/faults-and-load.md.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import apiguard.keys.verifier as key_verifier
from apiguard import APIKeyAuth, AuthMiddleware, BearerAuth, CacheOptions
from apiguard._backoff import Backoff
from apiguard.keys import BaseKeyStore, KeyHasher, KeyManager, KeyRecord, MemoryKeyStore
from apiguard.keys.redis import RedisKeyStore
from apiguard.keys.sql import SQLKeyStore
from apiguard.testing import FakeClock
from apiguard.tokens import JWTIntrospector, RemoteIntrospector, TrustedIssuer
from apiguard.tokens.shared_cache import RedisTokenCache
from apiguard.types import KeyStore

from .fault_server import FAULTS, INTROSPECTION_FAULTS, FaultyServer, faulty_server
from .servers import PostgresServer, RedisServer, free_port
from .token_support import AUDIENCE, mint

pytestmark = pytest.mark.anyio

DEADLINE = 1.0  # seconds: every verifier and introspector here is configured with it
MARGIN = 2.0  # generous: the assertion is "bounded by the deadline", not a benchmark
BURST = 20  # requests sent together once the outage has been noticed
RETRY_AFTER = 7

Credential = Callable[[], Awaitable[dict[str, str]]]


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("reached the app")


@dataclass
class Rig:
    """One guarded app in front of one faulted backend, and how to drive the fault."""

    app: AuthMiddleware
    fresh: Credential  # a new credential the backend, when well, accepts
    calls: Callable[[], int]  # requests the backend has received so far
    heal: Callable[[], Awaitable[None]]
    clock: FakeClock


async def timed(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get("/", headers=headers)
    return response, time.monotonic() - started


def assert_refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.text != "reached the app"
    if status == 503:
        assert response.headers["retry-after"] == str(RETRY_AFTER)
    else:  # RFC 6750 §3 / the ApiKey challenge: a 401 names its scheme
        assert "www-authenticate" in response.headers


async def check_fault(
    rig: Rig,
    *,
    expected: int = 503,
    same_credential: bool = False,
    burst_calls: int = 0,
) -> None:
    """The four properties of every case.

    `expected`: 503 for an outage, 401 for a fault that is about the credential.
    `same_credential`: the burst repeats the first credential (a refusal is cached)
    rather than new ones (an outage is never cached: only the backoff spares the
    backend). `burst_calls`: backend requests the burst may still cost.
    """
    async with client_for(rig.app) as client:
        first = await rig.fresh()
        response, elapsed = await timed(client, first)
        assert_refused(response, expected)
        assert elapsed < DEADLINE + MARGIN, f"{elapsed:.2f} s"

        noticed = rig.calls()
        credentials = [first if same_credential else await rig.fresh() for _ in range(BURST)]
        results: list[tuple[httpx.Response, float]] = []

        async def one(headers: dict[str, str]) -> None:
            results.append(await timed(client, headers))

        async with anyio.create_task_group() as tg:
            for headers in credentials:
                tg.start_soon(one, headers)
        for response, elapsed in results:
            assert_refused(response, expected)
            assert elapsed < DEADLINE + MARGIN, f"{elapsed:.2f} s"
        assert rig.calls() - noticed <= burst_calls, (noticed, rig.calls())

        # The backend is back: no restart, no intervention, past the backoff.
        await rig.heal()
        rig.clock.now += 120
        for _ in range(3):  # a pool may hold one dead connection per slot: see docs
            response = await client.get("/", headers=await rig.fresh())
            if response.status_code == 200:
                break
        assert response.status_code == 200, response.text
        assert response.text == "reached the app"


def client_for(app: AuthMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def guarded(*authenticators: Any) -> AuthMiddleware:
    return AuthMiddleware(
        Starlette(routes=[Route("/", ok)]),
        authenticators=list(authenticators),
        retry_after=RETRY_AFTER,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the authorization server: JWKS, discovery, introspection -------------------


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    with faulty_server() as state:
        yield state


def jwt_rig(server: FaultyServer, *, discover: bool, http: httpx.AsyncClient) -> Rig:
    clock = FakeClock()
    trusted = TrustedIssuer(
        server.issuer, AUDIENCE, jwks_uri=None if discover else f"{server.issuer}/jwks"
    )
    introspector = JWTIntrospector(trusted, http_client=http, deadline=DEADLINE, clock=clock)

    async def fresh() -> dict[str, str]:
        return bearer(mint(iss=server.issuer, jti=secrets.token_hex(8)))

    async def heal() -> None:
        server.heal()

    return Rig(
        guarded(BearerAuth(introspector)),
        fresh,
        lambda: server.calls["discovery"] + server.calls["jwks"],
        heal,
        clock,
    )


def introspection_rig(
    server: FaultyServer, http: httpx.AsyncClient, *, token_cache: RedisTokenCache | None = None
) -> Rig:
    clock = FakeClock()
    introspector = RemoteIntrospector(
        f"{server.issuer}/introspect",
        client_id="api",
        client_secret="api-secret",
        audience=AUDIENCE,
        http_client=http,
        deadline=DEADLINE,
        retries=1,
        clock=clock,
    )

    async def fresh() -> dict[str, str]:
        token = secrets.token_urlsafe(24)
        server.active[token] = {"active": True, "sub": "client-1", "aud": AUDIENCE}
        return bearer(token)

    async def heal() -> None:
        server.heal()

    return Rig(
        guarded(BearerAuth(introspector, token_cache=token_cache)),
        fresh,
        lambda: server.calls["introspect"],
        heal,
        clock,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.mark.parametrize("fault", FAULTS)
async def test_jwks_fault(fault: str, server: FaultyServer, http: httpx.AsyncClient) -> None:
    server.modes["jwks"] = fault
    await check_fault(jwt_rig(server, discover=False, http=http))


@pytest.mark.parametrize("fault", FAULTS)
async def test_discovery_fault(fault: str, server: FaultyServer, http: httpx.AsyncClient) -> None:
    server.modes["discovery"] = fault
    await check_fault(jwt_rig(server, discover=True, http=http))


@pytest.mark.parametrize("fault", FAULTS + INTROSPECTION_FAULTS[:1] + INTROSPECTION_FAULTS[2:])
async def test_introspection_fault(
    fault: str, server: FaultyServer, http: httpx.AsyncClient
) -> None:
    server.modes["introspect"] = fault
    # One call and its one retry (`retries=1`), then nothing while backing off.
    await check_fault(introspection_rig(server, http))
    assert server.calls["introspect"] <= 2 + 1  # the outage, then the recovery


async def test_introspection_refuses_the_token(
    server: FaultyServer, http: httpx.AsyncClient
) -> None:
    """RFC 7662 §2.3: a 400 about the token is the token's fault: 401, and cached."""
    server.modes["introspect"] = "token_400"
    await check_fault(introspection_rig(server, http), expected=401, same_credential=True)


@pytest.mark.parametrize("endpoint", ["jwks", "discovery", "introspect"])
async def test_authorization_server_down(endpoint: str, http: httpx.AsyncClient) -> None:
    """Nothing listens on the port (connection refused) until the server starts there."""
    port = free_port()
    state = FaultyServer(issuer=f"http://127.0.0.1:{port}")
    connections: list[int] = []  # refused connections leave no trace on a server: count them

    async def count(request: httpx.Request) -> None:
        connections.append(1)

    with ExitStack() as stack:
        async with httpx.AsyncClient(timeout=5.0, event_hooks={"request": [count]}) as client:
            if endpoint == "introspect":
                rig = introspection_rig(state, client)
            else:
                rig = jwt_rig(state, discover=endpoint == "discovery", http=client)
            rig.calls = lambda: len(connections)

            async def heal() -> None:
                stack.enter_context(faulty_server(port, state))

            rig.heal = heal
            await check_fault(rig)


# --- key stores -------------------------------------------------------------------


def counted(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count the store's `get` calls: the lookups the verifier makes."""
    calls = [0]
    get = store.get

    async def counting(key_id: str) -> KeyRecord | None:
        calls[0] += 1
        return await get(key_id)

    monkeypatch.setattr(store, "get", counting)
    return lambda: calls[0]


async def key_rig(
    store: KeyStore,
    hasher: KeyHasher,
    monkeypatch: pytest.MonkeyPatch,
    heal: Callable[[], Awaitable[None]],
    keys: list[str],
) -> Rig:
    """`keys` are made before the fault; each `fresh()` takes the next one."""
    pending = list(keys)

    async def fresh() -> dict[str, str]:
        return {"X-API-Key": pending.pop()}

    calls = counted(store, monkeypatch)
    # The verifier backs off on the rig's clock: the burst always comes within the
    # delay, however slowly a loaded machine runs it, and `check_fault` moves past it.
    clock = FakeClock()

    def backoff(**options: Any) -> Backoff:
        return Backoff(**{**options, "clock": clock})

    monkeypatch.setattr(key_verifier, "Backoff", backoff)
    auth = APIKeyAuth(store, hasher=hasher, deadline=DEADLINE, cache=CacheOptions())
    return Rig(guarded(auth), fresh, calls, heal, clock)


async def make_keys(store: KeyStore, hasher: KeyHasher, count: int) -> list[str]:
    manager = KeyManager(store, hasher)
    return [(await manager.create(f"k{n}")).key for n in range(count)]


KEYS = BURST + 5  # the first request, the burst, the recovery


@asynccontextmanager
async def sqlite_store(path: Path) -> AsyncIterator[SQLKeyStore]:
    store = SQLKeyStore.from_url(f"sqlite:///{path}")
    try:
        yield store
    finally:
        await store.aclose()


@pytest.mark.parametrize("lock", ["locked", "busy"])
async def test_sqlite_lock(
    lock: str, tmp_path: Path, hasher: KeyHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """locked: another process holds an exclusive lock, reads wait for it: 503 at the
    deadline. busy: another process is writing (a reserved lock): reads go on, 200."""
    path = tmp_path / "keys.db"
    async with sqlite_store(path) as store:
        keys = await make_keys(store, hasher, KEYS)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE" if lock == "locked" else "BEGIN IMMEDIATE")
        other.execute("UPDATE apiguard_keys SET name = name")

        async def heal() -> None:
            other.execute("ROLLBACK")
            other.close()

        rig = await key_rig(store, hasher, monkeypatch, heal, keys)
        if lock == "locked":
            await check_fault(rig)
            return
        async with client_for(rig.app) as client:
            # Answered; the usage write the lock holds up is dropped at the deadline.
            for _ in range(3):
                response, elapsed = await timed(client, await rig.fresh())
                assert response.status_code == 200
                assert elapsed < DEADLINE + MARGIN
        await heal()


async def test_sqlite_read_only(tmp_path: Path, hasher: KeyHasher) -> None:
    """The database opened read-only: keys are checked (200); usage writes fail quietly."""
    path = tmp_path / "keys.db"
    async with sqlite_store(path) as store:
        keys = await make_keys(store, hasher, KEYS)
    read_only = SQLKeyStore.from_url(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        app = guarded(APIKeyAuth(read_only, hasher=hasher, deadline=DEADLINE))
        async with client_for(app) as client:
            for key in keys:
                response, elapsed = await timed(client, {"X-API-Key": key})
                assert response.status_code == 200
                assert elapsed < DEADLINE + MARGIN
            forged = keys[0][:-8] + "AAAAAAAA"
            response = await client.get("/", headers={"X-API-Key": forged})
            assert response.status_code == 401
    finally:
        await read_only.aclose()


async def test_sqlite_corrupted(
    tmp_path: Path, hasher: KeyHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file overwritten with garbage under a running store, then restored."""
    path = tmp_path / "keys.db"
    async with sqlite_store(path) as store:
        keys = await make_keys(store, hasher, KEYS)
        good = path.read_bytes()
        path.write_bytes(secrets.token_bytes(len(good)))

        async def heal() -> None:
            path.write_bytes(good)

        await check_fault(await key_rig(store, hasher, monkeypatch, heal, keys))


async def check_restart(app: AuthMiddleware, keys: list[str], slots: int) -> None:
    """After a restart under open connections: 200 or 503, and 200 again within `slots` + 1."""
    async with client_for(app) as client:
        for attempt in range(slots + 1):
            response, elapsed = await timed(client, {"X-API-Key": keys[attempt]})
            assert elapsed < DEADLINE + MARGIN
            if response.status_code == 200:
                return
            assert_refused(response, 503)
            await anyio.sleep(2.0**attempt)  # past the backoff: 0.5-1 s, then 1-2 s
    pytest.fail("no recovery after the restart")


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["down", "paused", "slow", "restarted"])
async def test_postgres_fault(
    fault: str,
    make_postgres_server: Callable[[], PostgresServer],
    hasher: KeyHasher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncpg

    server = make_postgres_server()
    store = SQLKeyStore.from_url(server.url(), connect_args={"timeout": 2})
    try:
        keys = await make_keys(store, hasher, KEYS)
        if fault == "restarted":
            server.stop()
            server.start()
            app = guarded(APIKeyAuth(store, hasher=hasher, deadline=DEADLINE))
            await check_restart(app, keys, slots=2)
            return
        holder = None
        if fault == "down":
            server.stop()
        elif fault == "paused":
            server.pause()
        else:  # slow: another session holds a lock every lookup waits for
            holder = await asyncpg.connect(server.url())
            await holder.execute("BEGIN; LOCK TABLE apiguard_keys IN ACCESS EXCLUSIVE MODE")

        async def heal() -> None:
            if fault == "down":
                server.start()
            elif fault == "paused":
                server.resume()
            elif holder is not None:
                await holder.execute("ROLLBACK")
                await holder.close()

        await check_fault(await key_rig(store, hasher, monkeypatch, heal, keys))
    finally:
        server.resume()
        await store.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("fault", ["down", "paused", "slow", "restarted"])
async def test_redis_fault(
    fault: str,
    make_redis_server: Callable[[], RedisServer],
    hasher: KeyHasher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_redis_server()
    async with RedisKeyStore.from_url(
        server.url(), socket_timeout=0.5, socket_connect_timeout=0.5
    ) as store:
        keys = await make_keys(store, hasher, KEYS)
        with server.client() as admin:
            admin.save()  # to dump.rdb, which the server loads when it starts again
        if fault == "restarted":
            server.stop()
            server.start()
            app = guarded(APIKeyAuth(store, hasher=hasher, deadline=DEADLINE))
            await check_restart(app, keys, slots=2)
            return
        if fault == "down":
            server.stop()
        elif fault == "paused":
            server.pause()
        else:  # slow: every command held for 2.5 s (CLIENT PAUSE), longer than the deadline
            with server.client() as admin:
                admin.execute_command("CLIENT", "PAUSE", "2500", "ALL")

        async def heal() -> None:
            if fault == "down":
                server.start()
            elif fault == "paused":
                server.resume()
            else:
                with server.client() as admin:
                    admin.execute_command("CLIENT", "UNPAUSE")

        try:
            await check_fault(await key_rig(store, hasher, monkeypatch, heal, keys))
        finally:
            if fault == "paused":
                server.resume()


class FaultyStore(BaseKeyStore):
    """A custom `KeyStore` over a memory store whose `get` misbehaves while `fault` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = MemoryKeyStore()
        self.fault: str | None = None

    async def get(self, key_id: str) -> KeyRecord | None:
        if self.fault == "raises":
            raise RuntimeError("the store's own bug")
        if self.fault == "hangs":
            await anyio.sleep_forever()
        record = await self.inner.get(key_id)
        if self.fault == "wrong_type" and record is not None:
            return {"key_id": key_id, "secret_hash": record.secret_hash}  # type: ignore[return-value]
        if self.fault == "wrong_fields" and record is not None:
            return KeyRecord(**{**record.__dict__, "secret_hash": 12345, "scopes": None})
        return record

    async def add(self, record: KeyRecord) -> None:
        await self.inner.add(record)

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        return await self.inner.list(name=name)

    async def revoke(self, key_id: str, *, at: datetime) -> KeyRecord:
        return await self.inner.revoke(key_id, at=at)

    async def rotate(self, key_id: str, new: KeyRecord, *, old_expires_at: datetime) -> KeyRecord:
        return await self.inner.rotate(key_id, new, old_expires_at=old_expires_at)

    async def update_hash(self, key_id: str, secret_hash: str) -> None:
        await self.inner.update_hash(key_id, secret_hash)

    async def record_usage(self, key_id: str, *, at: datetime) -> None:
        await self.inner.record_usage(key_id, at=at)


@pytest.mark.parametrize("fault", ["raises", "hangs", "wrong_type", "wrong_fields"])
async def test_custom_store_fault(
    fault: str, hasher: KeyHasher, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = FaultyStore()
    keys = await make_keys(store, hasher, KEYS)
    store.fault = fault

    async def heal() -> None:
        store.fault = None

    rig = await key_rig(store, hasher, monkeypatch, heal, keys)
    if fault == "hangs":  # the deadline passes: an outage, backed off
        await check_fault(rig)
        return
    # A bug in the store (not a `BackendUnavailableError`): 503, logged with its
    # traceback, and not backed off: one lookup per request, never more.
    await check_fault(rig, burst_calls=BURST)
    assert "authentication failed unexpectedly; answering 503" in caplog.text


# --- the shared token cache ---------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("fault", ["down", "paused"])
async def test_shared_token_cache_fault(
    fault: str,
    make_redis_server: Callable[[], RedisServer],
    server: FaultyServer,
    http: httpx.AsyncClient,
) -> None:
    """Redis under the token cache fails: tokens are checked with the authorization
    server instead (200 for a good one, 401 for a bad one), never passed unchecked,
    never a 503 for the cache alone; Redis is used again once it is back."""
    redis_server = make_redis_server()
    cache = RedisTokenCache.from_url(redis_server.url(), timeout=0.2, retry_interval=0.2)
    rig = introspection_rig(server, http, token_cache=cache)
    app = rig.app
    down, up = (
        (redis_server.stop, redis_server.start)
        if fault == "down"
        else (redis_server.pause, redis_server.resume)
    )
    try:
        down()
        async with client_for(app) as client:
            for _ in range(5):
                response, elapsed = await timed(client, await rig.fresh())
                assert response.status_code == 200
                assert elapsed < DEADLINE + MARGIN
                bad = secrets.token_urlsafe(24)  # never issued: inactive
                response, elapsed = await timed(client, bearer(bad))
                assert_refused(response, 401)
                assert elapsed < DEADLINE + MARGIN
            available_while_down = cache.available
            up()
            await anyio.sleep(0.3)  # past retry_interval
            await client.get("/", headers=await rig.fresh())
            assert (available_while_down, cache.available) == (False, True)
            with redis_server.client() as admin:
                assert admin.dbsize() >= 1  # the verdict is shared again
    finally:
        if fault == "paused":
            redis_server.resume()
        await cache.aclose()
