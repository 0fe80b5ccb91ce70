"""Event-loop lag and CPU per request of one uvicorn worker under pipelined load,
bare and behind apiguard, in the same run.

    .venv/bin/python -m benchmarks.bench_loop_lag [--requests 10000] [--rounds 3]
        [--rate 200] [--paced-requests 1000]
    .venv/bin/python -m benchmarks.bench_loop_lag --scenario argon2 [--cores 2]
        [--keys 8] [--rounds 3]
    .venv/bin/python -m benchmarks.bench_loop_lag --jwt-burst 100 [--rounds 3]

The `argon2` scenario is described in `argon2_lag()`, the JWT burst in `jwt_burst()`.

The server is tests/load_app.py (the app of tests/test_load.py): API keys from a
SQLite store, JWTs against a loopback JWKS and opaque tokens against a loopback
introspection endpoint (tests/fault_server.py, in this process), or, with
`APIGUARD_LOAD_BARE`, the same app without apiguard. Each round sends `--requests`
requests over 500 connections, 20 pipelined on each (10,000 in flight at the start),
carrying credentials whose verifications are cached (the steady state: the warm-up
sends each once). The server's ticker task sleeps 5 ms at a time and records how
late it wakes: that lag is everything the loop did meanwhile (uvicorn's parsing,
Starlette, apiguard), so the difference between the variants is apiguard's share.
CPU time is read from /proc for the server process.

A saturated loop's lag measures its queue (every ready connection's work runs
between two ticks), not any one step; the paced rounds (`--rate` requests a second,
spread evenly over 50 connections, one at a time on each) leave the loop idle
between requests, so their lag shows how long single steps hold it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from tests.fault_server import faulty_server
from tests.load_client import get, pipelined, start_load_app
from tests.token_support import AUDIENCE, mint

from apiguard.keys import KeyHasher, KeyManager, open_store
from apiguard.types import ASGIApp, Scope

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
TICKS = os.sysconf("SC_CLK_TCK")
PACED_CONNECTIONS = 50


async def paced(port: int, requests: list[bytes], rate: float) -> list[int]:
    """Send `requests` at `rate` a second in all, over `PACED_CONNECTIONS` connections."""
    statuses: list[int] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    interval = PACED_CONNECTIONS / rate

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n, request in enumerate(requests[offset::PACED_CONNECTIONS]):
                delay = start + offset / rate + n * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                statuses.append(int(head.split(" ", 2)[1]))
                length = next(
                    int(line.split(":", 1)[1])
                    for line in head.split("\r\n")
                    if line.lower().startswith("content-length:")
                )
                await reader.readexactly(length)
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(connection(n) for n in range(PACED_CONNECTIONS)))
    return statuses


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def main(requests: int, rounds: int, rate: float, paced_requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, faulty_server() as issuer:
        store_url = f"sqlite:///{tmp}/keys.db"
        store = open_store(store_url)
        manager = KeyManager(store, KeyHasher(PEPPER))
        keys = [(await manager.create(f"k{n}")).key for n in range(50)]
        await store.aclose()
        opaque = [f"opaque-token-{n:04d}" for n in range(50)]
        for token in opaque:
            issuer.active[token] = {"active": True, "sub": token, "aud": AUDIENCE}
        jwts = [mint(iss=issuer.issuer, jti=str(n)) for n in range(100)]
        headers = [("X-API-Key", k) for k in keys] + [
            ("Authorization", f"Bearer {t}") for t in opaque + jwts
        ]
        warm = [get("/", [h]) for h in headers]
        load = [warm[n % len(warm)] for n in range(requests)]
        gentle = [warm[n % len(warm)] for n in range(paced_requests)]
        results: dict[str, list[dict[str, float]]] = {
            "bare": [],
            "apiguard": [],
            "bare, paced": [],
            "apiguard, paced": [],
        }
        for _ in range(rounds):
            for variant in results:
                env = {
                    "APIGUARD_LOAD_STORE": store_url,
                    "APIGUARD_LOAD_ISSUER": issuer.issuer,
                    "APIGUARD_LOAD_AUDIENCE": AUDIENCE,
                    "APIGUARD_LOAD_PEPPER": PEPPER,
                    "APIGUARD_LOAD_MAX_SIZE": "10000",
                    "APIGUARD_LOAD_TOKEN_TTL": "300",
                }
                if variant.startswith("bare"):
                    env["APIGUARD_LOAD_BARE"] = "1"
                count = paced_requests if variant.endswith("paced") else requests
                server = start_load_app(env, Path(tmp) / f"{variant}.log")
                try:
                    async with httpx.AsyncClient(timeout=120) as client:
                        await server.wait_until(client, "/stats")
                        await pipelined(server.port, warm, connections=50)
                        await client.get(f"http://127.0.0.1:{server.port}/stats/reset")
                        cpu = cpu_seconds(server.process.pid)
                        if variant.endswith("paced"):
                            statuses = await paced(server.port, gentle, rate)
                        else:
                            answers = await pipelined(server.port, load, connections=500, depth=20)
                            statuses = [a.status for a in answers]
                        cpu = cpu_seconds(server.process.pid) - cpu
                        stats = (await client.get(f"http://127.0.0.1:{server.port}/stats")).json()
                finally:
                    server.stop(timeout=30)
                assert statuses == [200] * count, "a request was refused"
                results[variant].append(
                    {
                        "p50": stats["lag_p50_ms"],
                        "p99": stats["lag_p99_ms"],
                        "max": stats["lag_max_ms"],
                        "cpu_us": 1e6 * cpu / count,
                    }
                )
    print(f"{requests} requests a round, {rounds} rounds; medians of the rounds")
    print("| variant | lag p50 (ms) | lag p99 (ms) | lag max (ms) | server CPU per request (µs) |")
    print("|---|---:|---:|---:|---:|")
    for variant, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"| {variant} | {med['p50']:.2f} | {med['p99']:.2f} | {med['max']:.2f} | {med['cpu_us']:.0f} |"
        )


async def _ticker(lags: list[float], stop: asyncio.Event, every: float = 0.001) -> None:
    """Sleep `every` seconds at a time until `stop`, recording how late each wake-up is."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + every
        await asyncio.sleep(every)
        lags.append(loop.time() - due)


async def argon2_lag(cores: int, keys: int, rounds: int) -> None:
    """Event-loop lag while imported keys with argon2 hashes are verified.

    In this process, pinned to `cores` cores: `keys` distinct imported keys (passlib's
    default argon2id, as imported from elsewhere) are first verified at once by a
    fresh `KeyVerifier` (a cold cache; migrations are not written, so every round
    hashes again), while a ticker task sleeps 1 ms at a time and records how late it
    wakes. Side by side in each round: the ticker alone (bare), the verifier with
    the default worker threads (the cores available less one), and with as many
    threads as cores (what a fixed 2 was on two cores). With `PYTHONPATH` set to an
    earlier apiguard's source, its own default (2) and argon2 in as many threads as
    the hash's parallelism are measured the same way.
    """
    from passlib.hash import argon2

    from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
    from apiguard.keys.format import parse_key
    from apiguard.keys.verifier import KeyVerifier

    try:
        from apiguard.keys.verifier import slow_hash_threads
    except ImportError:  # an apiguard from before the default was sized from the cores

        def slow_hash_threads() -> int:
            return 2

    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[:cores])
    hasher = KeyHasher(PEPPER)
    issuer = KeyManager(MemoryKeyStore(), hasher)
    store = MemoryKeyStore()
    raws = []
    for n in range(keys):
        issued = await issuer.create(f"imported-{n}")
        secret = parse_key(issued.key).secret
        record = dataclasses.replace(issued.record, secret_hash=argon2.hash(secret))
        await store.add(record)
        raws.append(issued.key.encode())
    stored = await store.get(parse_key(raws[0].decode()).key_id)
    params = stored.secret_hash.split("$")[3] if stored else "?"
    variants: dict[str, int | None] = {
        "bare (no verifications)": None,
        f"default: {slow_hash_threads()} worker thread(s)": slow_hash_threads(),
        f"{cores} worker threads (one per core)": cores,
    }
    rows: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, threads in variants.items():
            lags: list[float] = []
            stop = asyncio.Event()
            ticker = asyncio.create_task(_ticker(lags, stop))
            await asyncio.sleep(0.05)
            start = time.perf_counter()
            if threads is None:
                await asyncio.sleep(0.5)
            else:
                verifier = KeyVerifier(
                    store,
                    hasher,
                    slow_hash_concurrency=threads,
                    slow_hash_queue=keys,
                    deadline=60,
                )
                await asyncio.gather(*(verifier.verify(raw) for raw in raws))
            elapsed = time.perf_counter() - start
            stop.set()
            await ticker
            ordered = sorted(lags)
            p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
            rows[variant].append(
                (1e3 * statistics.median(ordered), 1e3 * p99, 1e3 * ordered[-1], elapsed)
            )
    load = " ".join(f"{n:.2f}" for n in os.getloadavg())
    print(
        f"{keys} imported argon2 keys at once ({params}), "
        f"{cores} cores, {rounds} rounds, load average {load}"
    )
    print("| variant | lag p50 (ms) | lag p99 (ms) | lag max (ms) | all verified in (s) |")
    print("|---|---|---|---|---|")
    for variant, results in rows.items():
        cells = [" / ".join(f"{r[i]:.2f}" for r in results) for i in range(4)]
        print(f"| {variant} | {' | '.join(cells)} |")


async def jwt_burst(rounds: int, size: int) -> None:
    """A burst of `size` JWTs never seen before, all arriving at once, in this process.

    A ticker sleeps 1 ms at a time and records how late it wakes while the burst is
    checked: the loop's lag, which bounds the longest step anything held it for. The
    same burst goes through the bare app, the app behind a PyJWT decode per request
    (the same checks, written by hand: nothing yields), and the app behind
    `BearerTokenMiddleware` with and without its turns on the loop (`_turns.SLICE`).
    Each variant runs in every round, in turn; each gets its own fresh tokens.
    """
    from tests.token_support import ISSUER, RSA_KEY, FakeIssuer

    from apiguard import BearerTokenMiddleware
    from apiguard.tokens import JWTIntrospector, _turns
    from benchmarks.bench_bearer import PyJWTPerRequest, run_each, scope_for, starlette_app

    slice_ = _turns.SLICE
    idp = FakeIssuer()
    results: dict[str, list[tuple[float, float, float, float, float, float]]] = {
        "bare app": [],
        "app + PyJWT decode per request": [],
        "app + apiguard, no turns": [],
        "app + apiguard": [],
    }
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        await introspector.introspect(mint(RSA_KEY, "RS256", "rsa-1"))  # keys fetched
        apps: dict[str, ASGIApp] = {
            "bare app": starlette_app(),
            "app + PyJWT decode per request": PyJWTPerRequest(
                starlette_app(), RSA_KEY.public_key(), "RS256"
            ),
        }
        for round_ in range(rounds):
            for variant, samples in results.items():
                tokens = [
                    mint(RSA_KEY, "RS256", "rsa-1", jti=f"{round_}-{variant}-{n}")
                    for n in range(size)
                ]
                app: ASGIApp = apps.get(variant) or BearerTokenMiddleware(
                    starlette_app(), introspector=introspector
                )
                _turns.SLICE = float("inf") if variant.endswith("no turns") else slice_
                try:
                    scopes = [scope_for(t) for t in tokens]
                    samples.append(await _burst_lag(app, scopes, run_each))
                finally:
                    _turns.SLICE = slice_
    print(f"A burst of {size} new RS256 JWTs at once, {rounds} rounds; medians of the rounds")
    print(
        "| variant | burst (ms) | lag p50 (ms) | lag p99 (ms) | lag max (ms) "
        "| loop CPU between ticks p99 (ms) | max (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, rows in results.items():
        cells = " | ".join(f"{statistics.median(r[i] for r in rows):.2f}" for i in range(6))
        print(f"| {variant} | {cells} |")


async def _burst_lag(
    app: ASGIApp, scopes: list[Scope], run_each: Callable[[ASGIApp, list[Scope]], Awaitable[float]]
) -> tuple[float, float, float, float, float, float]:
    """Burst duration, the ticker's lag p50, p99 and max during it, and the CPU time
    the loop spent between two ticks (p99 and max), in ms.

    The CPU time (this thread's, `time.thread_time`) is what the loop did between
    two ticks, without the time the machine gave to other processes: on a shared
    machine that is the figure to compare.
    """
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    held: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            before, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - before - 0.001)
            held.append(time.thread_time() - cpu)

    async def one(scope: Scope) -> None:
        await run_each(app, [scope])

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)  # the ticker settles
    lags.clear()
    held.clear()
    start = loop.time()
    await asyncio.gather(*(one(scope) for scope in scopes))
    burst = loop.time() - start
    running = False
    await tick
    return (1e3 * burst, *_p50_p99_max(lags)[:3], *_p50_p99_max(held)[1:])


def _p50_p99_max(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values) or [0.0]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return 1e3 * statistics.median(ordered), 1e3 * p99, 1e3 * ordered[-1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=["server", "argon2"], default="server")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--paced-requests", type=int, default=1000)
    parser.add_argument("--jwt-burst", type=int, metavar="SIZE", help="only the JWT burst")
    args = parser.parse_args()
    if args.scenario == "argon2":
        asyncio.run(argon2_lag(args.cores, args.keys, args.rounds))
    elif args.jwt_burst:
        asyncio.run(jwt_burst(args.rounds, args.jwt_burst))
    else:
        asyncio.run(main(args.requests, args.rounds, args.rate, args.paced_requests))
