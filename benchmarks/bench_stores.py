"""Cold lookups in the key stores with many keys: SQLite, PostgreSQL and Redis side by side.

    .venv/bin/python -m benchmarks.bench_stores [--keys 1000000] [--lookups 2000]

Starts a PostgreSQL and a Redis server on loopback (tests/servers.py) and a SQLite file
in a temporary directory, fills each with the same `--keys` key records through bulk
paths (COPY, one executemany transaction, pipelines), then times `store.get(key_id)`
for random stored ids and for ids that are not stored, and `KeyVerifier.verify()` for
real keys seen for the first time (no cache hit), through the public API. The
lookups are interleaved, one per store in turn, so that noise from a shared machine
hits every store alike. "Cold" means apiguard's cache does not answer; the servers'
own caches are warm from the fill, as they are in a running service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from tests.servers import PostgresCluster, PostgresServer, RedisServer

from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store
from apiguard.keys.format import BASE62, KEY_ID_LENGTH
from apiguard.keys.record import KeyRecord
from apiguard.keys.redis import _fields as redis_fields
from apiguard.keys.verifier import KeyVerifier
from apiguard.testing import make_record
from apiguard.types import KeyStore

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
BATCH = 20_000
WARM_UP = 50  # lookups and verifications first made in each store, not measured
# Filler key ids: i * MULTIPLIER mod 62**12 in base62, distinct for distinct i (the
# multiplier is prime to 62) and scattered over the id space, as random ids are.
_SPACE = 62**KEY_ID_LENGTH
_MULTIPLIER = 2_654_435_761
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
)


def filler_id(i: int) -> str:
    n = (i * _MULTIPLIER) % _SPACE
    chars = []
    for _ in range(KEY_ID_LENGTH):
        n, digit = divmod(n, 62)
        chars.append(BASE62[digit])
    return "".join(chars)


def batches(real: Sequence[KeyRecord], fillers: int) -> Iterator[list[KeyRecord | str]]:
    """The real records, then the filler key ids (all sharing one template record)."""
    batch: list[KeyRecord | str] = list(real)
    for i in range(fillers):
        batch.append(filler_id(i))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


TEMPLATE = make_record("0" * KEY_ID_LENGTH, name="filler")


def sql_row(item: KeyRecord | str) -> tuple[Any, ...]:
    record = TEMPLATE if isinstance(item, str) else item
    return (
        item if isinstance(item, str) else record.key_id,
        record.name,
        record.secret_hash,
        json.dumps(sorted(record.scopes)),
        record.created_at,
        record.expires_at,
        record.revoked_at,
        record.last_used_at,
        json.dumps(dict(record.metadata)),
    )


def _sqlite_time(value: datetime | None) -> str | None:
    """How SQLAlchemy's SQLite dialect stores a datetime (naive UTC)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


async def fill_postgres(url: str, real: Sequence[KeyRecord], fillers: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        for batch in batches(real, fillers):
            await conn.copy_records_to_table(
                "apiguard_keys", records=[sql_row(item) for item in batch], columns=COLUMNS
            )
        await conn.execute("ANALYZE apiguard_keys")
    finally:
        await conn.close()


def fill_sqlite(path: Path, real: Sequence[KeyRecord], fillers: int) -> int:
    """Fill the file at `path`; returns its size in bytes."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            for batch in batches(real, fillers):
                rows = []
                for item in batch:
                    row = list(sql_row(item))
                    row[4:8] = [_sqlite_time(value) for value in row[4:8]]
                    rows.append(row)
                conn.executemany(
                    f"INSERT INTO apiguard_keys ({', '.join(COLUMNS)}) "  # noqa: S608
                    f"VALUES ({', '.join('?' * len(COLUMNS))})",
                    rows,
                )
    finally:
        conn.close()
    return path.stat().st_size


def fill_redis(server: RedisServer, real: Sequence[KeyRecord], fillers: int) -> None:
    """The layout `RedisKeyStore` reads: one hash per key, and the set of key ids."""
    template = redis_fields(TEMPLATE)
    mapping = dict(zip(template[::2], template[1::2], strict=True))
    with server.client() as client:
        for batch in batches(real, fillers):
            pipe = client.pipeline(transaction=False)
            ids = []
            for item in batch:
                if isinstance(item, str):
                    key_id, fields = item, mapping
                else:
                    flat = redis_fields(item)
                    key_id, fields = item.key_id, dict(zip(flat[::2], flat[1::2], strict=True))
                ids.append(key_id)
                pipe.hset(f"apiguard:key:{key_id}", mapping=fields)
            pipe.sadd("apiguard:keys", *ids)
            pipe.execute()


async def sizes_report(
    sqlite_bytes: int, pg_conn: Any, rds_client: aioredis.Redis
) -> dict[str, str]:
    """What the keys take on disk or in memory, per store."""
    table = await pg_conn.fetchval("SELECT pg_total_relation_size('apiguard_keys')")
    memory = await rds_client.info("memory")
    return {
        "SQLite": f"file {sqlite_bytes / 2**20:.0f} MiB",
        "PostgreSQL": f"table and index {table / 2**20:.0f} MiB",
        "Redis": f"used_memory {memory['used_memory'] / 2**20:.0f} MiB",
    }


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max, in ms."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1e3, p99 * 1e3, ordered[-1] * 1e3


async def measure(
    args: argparse.Namespace, pg: PostgresServer, rds: RedisServer, tmp: Path
) -> None:
    hasher = KeyHasher(PEPPER)
    real_count = min(args.verify_keys, args.keys)
    issuer = KeyManager(MemoryKeyStore(), hasher)
    issued = [await issuer.create(f"bench-{i}", scopes=["items:read"]) for i in range(real_count)]
    real = [item.record for item in issued]
    fillers = args.keys - real_count

    sqlite_path = tmp / "keys.db"
    pg_url = pg.url(pg.create_database())
    stores: dict[str, KeyStore] = {
        "SQLite": open_store(f"sqlite:///{sqlite_path}"),
        "PostgreSQL": open_store(pg_url),
        "Redis": open_store(rds.url()),
    }
    try:
        for store in stores.values():  # creates the SQL tables; connects
            await store.get("0" * KEY_ID_LENGTH)

        fill_times: dict[str, float] = {}
        start = time.perf_counter()
        sqlite_bytes = fill_sqlite(sqlite_path, real, fillers)
        fill_times["SQLite"] = time.perf_counter() - start
        start = time.perf_counter()
        await fill_postgres(pg_url, real, fillers)
        fill_times["PostgreSQL"] = time.perf_counter() - start
        start = time.perf_counter()
        fill_redis(rds, real, fillers)
        fill_times["Redis"] = time.perf_counter() - start

        # What the stores read back is what was written.
        for name, store in stores.items():
            last = filler_id(fillers - 1)
            if await store.get(real[0].key_id) != real[0] or await store.get(last) != make_record(
                last, name="filler"
            ):
                raise RuntimeError(f"{name}: the records read back differ from those written")

        rng = random.Random(8)  # noqa: S311 - not a secret
        hits = [filler_id(i) for i in rng.sample(range(fillers), args.lookups)]
        misses = [filler_id(args.keys + i) for i in range(max(1, args.lookups // 20))]
        # The floor: one query by primary key, one HGETALL, straight through the drivers.
        pg_conn = await asyncpg.connect(pg_url)
        rds_client = aioredis.Redis.from_url(rds.url())
        sizes = await sizes_report(sqlite_bytes, pg_conn, rds_client)

        async def asyncpg_fetchrow(key_id: str) -> bool:
            row = await pg_conn.fetchrow("SELECT * FROM apiguard_keys WHERE key_id = $1", key_id)
            return row is not None

        async def redis_hgetall(key_id: str) -> bool:
            return bool(await rds_client.hgetall(f"apiguard:key:{key_id}"))

        lookups: dict[str, Callable[[str], Awaitable[object]]] = {
            f"{name} store.get()": store.get for name, store in stores.items()
        }
        lookups["PostgreSQL, asyncpg fetchrow (floor)"] = asyncpg_fetchrow
        lookups["Redis, redis-py HGETALL (floor)"] = redis_hgetall
        try:
            for lookup in lookups.values():  # warm connections and code paths, not data
                for key_id in hits[:WARM_UP]:
                    await lookup(key_id)
            hit_times: dict[str, list[float]] = {name: [] for name in lookups}
            miss_times: dict[str, list[float]] = {name: [] for name in lookups}
            pairs = ((hits[WARM_UP:], hit_times, True), (misses, miss_times, False))
            for key_ids, times, found in pairs:
                for key_id in key_ids:
                    for name, lookup in lookups.items():
                        start = time.perf_counter()
                        answer = await lookup(key_id)
                        times[name].append(time.perf_counter() - start)
                        if bool(answer) is not found:
                            raise RuntimeError(f"{name}: unexpected answer for {key_id}")
        finally:
            await pg_conn.close()
            await rds_client.aclose()

        verifiers = {name: KeyVerifier(store, hasher) for name, store in stores.items()}
        for item in issued[-WARM_UP:]:  # not measured: first calls, code paths
            for verifier in verifiers.values():
                await verifier.verify(item.key.encode())
        verify_times: dict[str, list[float]] = {name: [] for name in stores}
        for item in issued[: min(len(issued) - WARM_UP, args.lookups)]:
            raw = item.key.encode()
            for name, verifier in verifiers.items():
                start = time.perf_counter()
                await verifier.verify(raw)  # first sight of this key: the store is read
                verify_times[name].append(time.perf_counter() - start)
    finally:
        for store in stores.values():
            await store.aclose()

    print(f"{args.keys:,} keys per store; lookups interleaved across the stores\n")
    print("| store | fill (s) | size |")
    print("|---|---:|---|")
    for name in stores:
        print(f"| {name} | {fill_times[name]:.1f} | {sizes[name]} |")
    print()
    print("| lookup | hit p50 / p99 / max (ms) | miss p50 / max (ms) |")
    print("|---|---:|---:|")
    for name in lookups:
        h50, h99, hmax = percentiles(hit_times[name])
        m50, _, mmax = percentiles(miss_times[name])
        print(f"| {name} | {h50:.3f} / {h99:.3f} / {hmax:.3f} | {m50:.3f} / {mmax:.3f} |")
    print()
    print("| store | KeyVerifier.verify(), first sight: p50 / p99 / max (ms) |")
    print("|---|---:|")
    for name in stores:
        v50, v99, vmax = percentiles(verify_times[name])
        print(f"| {name} | {v50:.3f} / {v99:.3f} / {vmax:.3f} |")
    print(
        f"\n{len(hits) - WARM_UP} hits and {len(misses)} misses per lookup; verify(): "
        f"{len(verify_times['Redis'])} distinct keys per store; benchmark process peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--verify-keys", type=int, default=2_000)
    args = parser.parse_args()
    if args.lookups + WARM_UP > args.keys - args.verify_keys or args.verify_keys <= WARM_UP:
        parser.error(
            f"need --verify-keys > {WARM_UP} and --keys > --verify-keys + --lookups + {WARM_UP}"
        )

    cluster = PostgresCluster()
    servers: list[PostgresServer | RedisServer] = []
    try:
        pg = PostgresServer(cluster)
        servers.append(pg)
        rds = RedisServer()
        servers.append(rds)
        with tempfile.TemporaryDirectory(prefix="apiguard-bench-") as tmp:
            asyncio.run(measure(args, pg, rds, Path(tmp)))
    finally:  # Ctrl-C included
        for server in servers:
            server.remove()
        cluster.remove()


if __name__ == "__main__":
    main()
