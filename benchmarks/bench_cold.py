"""Cold key checks: event-loop CPU per lookup, and a burst of distinct new keys.

    .venv/bin/python -m benchmarks.bench_cold [--keys 100000] [--sequential 300]
        [--burst 500] [--rounds 3]

Every store (memory, SQLite, PostgreSQL, Redis; the servers are started on loopback
by tests/servers.py) holds the same `--keys` key records. Each check is
`KeyVerifier.verify()` of a real key that its verifier has never seen (a cold cache:
one store read and one hash check), next to a hand-written peer on the same data:
the driver's lookup by key id and an HMAC comparison, with sqlite3 run in a worker
thread, asyncpg and redis-py as they are.

- Sequential: `--sequential` checks one after the other, the stores and peers in
  turn; the event-loop thread's CPU time (`time.thread_time()` on that thread, so
  the drivers' worker threads are not counted) and the wall time of each.
- Burst: `--burst` distinct new keys checked at once (`asyncio.gather`), as every
  worker sees them after a deploy; keys checked per second, p50/p99 latency and
  loop CPU per key, and how many were refused (503: the store could not be asked).
  `--rounds` rounds, the stores and peers in turn in each.

`PYTHONPATH=/path/to/other/src` measures another apiguard (an earlier commit) with
the same script.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import hmac
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from tests.servers import PostgresCluster, PostgresServer, RedisServer

import apiguard
from apiguard import BackendUnavailableError
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store
from apiguard.keys.format import parse_key
from apiguard.keys.verifier import KeyVerifier
from apiguard.types import KeyStore
from benchmarks.bench_stores import fill_postgres, fill_redis, fill_sqlite

PEPPER = b"benchmark-pepper-0123456789abcdefghijklmnop"
WARM_UP = 30

Check = Callable[[bytes], Awaitable[object]]


def hand_written(fetch: Callable[[str], Awaitable[str | None]]) -> Check:
    """The peer: parse the key, read its hash by key id, compare HMACs."""

    async def check(raw: bytes) -> object:
        parsed = parse_key(raw.decode("ascii"))
        stored = await fetch(parsed.key_id)
        if stored is None:
            raise LookupError(parsed.key_id)
        expected = hmac.new(PEPPER, parsed.secret.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(stored.rpartition("$")[2], expected):
            raise ValueError("wrong secret")
        return parsed.key_id

    return check


def sqlite_fetch(path: Path) -> Callable[[str], Awaitable[str | None]]:
    """sqlite3 in the default executor's threads, one connection per thread."""
    local = threading.local()

    def read(key_id: str) -> str | None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(path, check_same_thread=False)
        row = conn.execute(
            "SELECT secret_hash, scopes, metadata FROM apiguard_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        if row is None:
            return None
        json.loads(row[1]), json.loads(row[2])
        return str(row[0])

    async def fetch(key_id: str) -> str | None:
        return await asyncio.to_thread(read, key_id)

    return fetch


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def sequential(checks: dict[str, Check], keys: list[bytes]) -> dict[str, dict[str, float]]:
    cpu: dict[str, list[float]] = {name: [] for name in checks}
    wall: dict[str, list[float]] = {name: [] for name in checks}
    for raw in keys:
        for name, check in checks.items():
            c0, w0 = time.thread_time(), time.perf_counter()
            await check(raw)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.thread_time() - c0)
    return {
        name: {
            "cpu_ms": 1e3 * statistics.mean(cpu[name]),
            "p50_ms": 1e3 * statistics.median(wall[name]),
            "p99_ms": 1e3 * percentile(wall[name], 0.99),
        }
        for name in checks
    }


async def burst(check: Check, keys: list[bytes]) -> dict[str, float]:
    """Rate and latency of the checks that succeed; `failed` counts the others (503s)."""
    latencies: list[float] = []
    failed = 0

    async def one(raw: bytes) -> None:
        nonlocal failed
        start = time.perf_counter()
        try:
            await check(raw)
        except BackendUnavailableError:
            failed += 1
            return
        latencies.append(time.perf_counter() - start)

    c0, w0 = time.thread_time(), time.perf_counter()
    await asyncio.gather(*(one(raw) for raw in keys))
    elapsed = time.perf_counter() - w0
    return {
        "failed": failed,
        "rate": len(latencies) / elapsed,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * percentile(latencies, 0.99),
        "cpu_ms": 1e3 * (time.thread_time() - c0) / len(keys),
    }


async def measure(
    args: argparse.Namespace, pg: PostgresServer, rds: RedisServer, tmp: Path
) -> None:
    hasher = KeyHasher(PEPPER)
    issuer = KeyManager(MemoryKeyStore(), hasher)
    needed = WARM_UP + args.sequential + args.rounds * args.burst
    issued = [await issuer.create(f"cold-{i}", scopes=["items:read"]) for i in range(needed)]
    real = [item.record for item in issued]
    raws = [item.key.encode() for item in issued]
    fillers = max(0, args.keys - needed)

    sqlite_path = tmp / "keys.db"
    pg_url = pg.url(pg.create_database())
    memory = MemoryKeyStore()
    for record in real:
        await memory.add(record)
    stores: dict[str, KeyStore] = {
        "memory": memory,
        "SQLite": open_store(f"sqlite:///{sqlite_path}"),
        "PostgreSQL": open_store(pg_url),
        "Redis": open_store(rds.url()),
    }
    pool = None
    # redis-py refuses a 101st connection; a hand-written check would wait for one.
    rds_client = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(rds.url(), max_connections=100)
    )
    try:
        for store in stores.values():  # creates the SQL tables; connects
            await store.get("0" * 12)
        fill_sqlite(sqlite_path, real, fillers)
        await fill_postgres(pg_url, real, fillers)
        fill_redis(rds, real, fillers)
        pool = await asyncpg.create_pool(pg_url, min_size=10, max_size=10)

        async def pg_fetch(key_id: str) -> str | None:
            value = await pool.fetchval(
                "SELECT secret_hash FROM apiguard_keys WHERE key_id = $1", key_id
            )
            return None if value is None else str(value)

        async def redis_fetch(key_id: str) -> str | None:
            stored = await rds_client.hgetall(f"apiguard:key:{key_id}")
            value = stored.get(b"secret_hash")
            return value.decode() if isinstance(value, bytes) else None

        hashes = {record.key_id: record.secret_hash for record in real}

        async def memory_fetch(key_id: str) -> str | None:
            return hashes.get(key_id)

        peers = {
            "memory": hand_written(memory_fetch),
            "SQLite": hand_written(sqlite_fetch(sqlite_path)),
            "PostgreSQL": hand_written(pg_fetch),
            "Redis": hand_written(redis_fetch),
        }

        def fresh_checks() -> dict[str, Check]:
            """A new verifier per store (an empty cache), next to each store's peer."""
            checks: dict[str, Check] = {}
            for name, store in stores.items():
                checks[f"{name}: apiguard"] = KeyVerifier(store, hasher).verify
                checks[f"{name}: hand-written"] = peers[name]
            return checks

        # The benchmark's own objects (the issued keys) are no work for the collector
        # of a real server: out of its way, so that no round pays for a full pass.
        gc.collect()
        gc.freeze()
        checks = fresh_checks()
        await sequential(checks, raws[:WARM_UP])  # connections, code paths
        at = WARM_UP
        seq = await sequential(checks, raws[at : at + args.sequential])
        at += args.sequential
        bursts: dict[str, list[dict[str, float]]] = {name: [] for name in checks}
        for _ in range(args.rounds):
            keys = raws[at : at + args.burst]
            at += args.burst
            for name, check in fresh_checks().items():
                bursts[name].append(await burst(check, keys))
    finally:
        if pool is not None:
            await pool.close()
        await rds_client.aclose()
        for store in stores.values():
            await store.aclose()

    load = " ".join(f"{n:.2f}" for n in os.getloadavg())
    print(
        f"{args.keys:,} keys per store; {args.sequential} sequential cold checks each;"
        f" apiguard from {Path(apiguard.__file__).parent}; load average {load}\n"
    )
    print("| check | loop CPU per check (ms) | p50 (ms) | p99 (ms) | CPU vs peer |")
    print("|---|---:|---:|---:|---:|")
    for name, row in seq.items():
        peer = seq[name.split(":")[0] + ": hand-written"]["cpu_ms"]
        print(
            f"| {name} | {row['cpu_ms']:.3f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f}"
            f" | {row['cpu_ms'] / peer:.2f} |"
        )
    print(f"\n{args.burst} distinct new keys at once, {args.rounds} rounds (each round)\n")
    print("| check | keys/s | p50 (ms) | p99 (ms) | loop CPU per key (ms) | failed (503) |")
    print("|---|---|---|---|---|---|")
    for name, rows in bursts.items():
        cells = [
            " / ".join(f"{r[k]:{fmt}}" for r in rows)
            for k, fmt in (
                ("rate", ".0f"),
                ("p50_ms", ".1f"),
                ("p99_ms", ".1f"),
                ("cpu_ms", ".3f"),
                ("failed", ".0f"),
            )
        ]
        print(f"| {name} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = PostgresCluster()
    servers: list[Any] = []
    try:
        pg = PostgresServer(cluster)
        servers.append(pg)
        rds = RedisServer()
        servers.append(rds)
        with tempfile.TemporaryDirectory(prefix="apiguard-bench-") as tmp:
            asyncio.run(measure(args, pg, rds, Path(tmp)))
    finally:
        for server in servers:
            server.remove()
        cluster.remove()


if __name__ == "__main__":
    main()
