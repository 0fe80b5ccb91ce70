"""Memory per cached credential: API keys in `KeyVerifier`'s cache, tokens in `TokenVerifier`'s.

    .venv/bin/python -m benchmarks.bench_memory [--count 100000] [--runs 1]

Each measurement runs in a process of its own, through the public API:

- keys: `--count` distinct API keys, issued into a SQLite store (a store that reads
  records back from a database, as in production), then each checked once by one
  `KeyVerifier` whose cache holds them all (`CacheOptions(max_size=count)`).
  Most keys share a few scope sets and carry no metadata, as issued keys do.
- tokens: `--count` distinct tokens checked once by one `TokenVerifier`, through an
  introspector that returns `TokenInfo.from_claims()` of typical access-token
  claims (sub, client_id, scope, aud, iss, exp, iat, jti).
- peer: a hand-written cache of the same keys, a dict from the key's digest to a
  tuple (key id, name, scopes), as the floor.

Reported per credential: the growth of traced Python memory (tracemalloc, after a
garbage collection) and, in another process without tracemalloc, of the resident
set size, both from after the inputs are made to after every credential is cached.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

from apiguard import CacheOptions
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore, open_store
from apiguard.keys.format import parse_key
from apiguard.keys.verifier import KeyVerifier
from apiguard.tokens import TokenInfo, TokenVerifier

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
SCOPE_SETS = (["items:read"], ["items:read", "items:write"], ["admin"])
CHUNK = 500  # checks at once


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class Measure:
    def __init__(self, traced: bool) -> None:
        self.traced = traced

    def start(self) -> None:
        gc.collect()
        self.base = tracemalloc.get_traced_memory()[0] if self.traced else rss_bytes()

    def stop(self) -> int:
        gc.collect()
        now = tracemalloc.get_traced_memory()[0] if self.traced else rss_bytes()
        return now - self.base


async def keys(count: int, measure: Measure, tmp: Path) -> int:
    from benchmarks.bench_stores import fill_sqlite

    hasher = KeyHasher(PEPPER)
    issuer = KeyManager(MemoryKeyStore(), hasher)
    issued = [
        await issuer.create(f"owner-{n}", scopes=SCOPE_SETS[n % len(SCOPE_SETS)])
        for n in range(count)
    ]
    store = open_store(f"sqlite:///{tmp}/keys.db")
    await store.get("0" * 12)  # creates the tables
    fill_sqlite(tmp / "keys.db", [item.record for item in issued], 0)
    raws = [item.key.encode() for item in issued]
    del issued, issuer
    verifier = KeyVerifier(store, hasher, cache=CacheOptions(max_size=count))
    await verifier.verify(raws[0])
    measure.start()
    for at in range(0, count, CHUNK):
        await asyncio.gather(*(verifier.verify(raw) for raw in raws[at : at + CHUNK]))
    grown = measure.stop()
    assert len(verifier._verdicts.positive) == count
    await store.aclose()
    return grown


class ClaimsIntrospector:
    """Typical access-token claims for any token: what an introspector would return."""

    leeway = 0.0

    def __init__(self) -> None:
        self.now = int(time.time())

    async def introspect(self, token: str) -> TokenInfo:
        n = token.rpartition(".")[2]
        claims = {
            "iss": "https://issuer.example",
            "sub": f"user-{n}",
            "client_id": f"client-{int(n) % 50}",
            "aud": "https://api.example",
            "scope": " ".join(SCOPE_SETS[int(n) % len(SCOPE_SETS)]),
            "exp": self.now + 3600,
            "iat": self.now,
            "jti": f"jti-{n}",
        }
        return TokenInfo.from_claims(claims)

    async def aclose(self) -> None:
        pass


async def tokens(count: int, measure: Measure, tmp: Path) -> int:
    verifier = TokenVerifier(ClaimsIntrospector(), cache=CacheOptions(max_size=count, ttl=3000))
    raws = [f"header.payload.{n}".encode() for n in range(count)]
    await verifier.verify(raws[0])
    measure.start()
    for at in range(0, count, CHUNK):
        await asyncio.gather(*(verifier.verify(raw) for raw in raws[at : at + CHUNK]))
    grown = measure.stop()
    assert len(verifier._verdicts.positive) == count
    return grown


async def peer(count: int, measure: Measure, tmp: Path) -> int:
    hasher = KeyHasher(PEPPER)
    issuer = KeyManager(MemoryKeyStore(), hasher)
    issued = [
        await issuer.create(f"owner-{n}", scopes=SCOPE_SETS[n % len(SCOPE_SETS)])
        for n in range(count)
    ]
    rows = [
        (item.key.encode(), json.dumps(sorted(item.record.scopes)), item.record.name)
        for item in issued
    ]
    del issued, issuer
    cache: dict[bytes, tuple[str, str, tuple[str, ...]]] = {}
    measure.start()
    for raw, scopes, name in rows:
        key_id = parse_key(raw.decode()).key_id
        cache[hashlib.blake2s(raw).digest()] = (key_id, name, tuple(json.loads(scopes)))
    return measure.stop()


KINDS = {"keys": keys, "tokens": tokens, "peer": peer}


def child(kind: str, count: int, traced: bool) -> None:
    if traced:
        tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="apiguard-bench-") as tmp:
        grown = asyncio.run(KINDS[kind](count, Measure(traced), Path(tmp)))
    print(json.dumps({"bytes": grown}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.count, args.child[1] == "traced")
        return
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for kind in KINDS:
            for how in ("traced", "rss"):
                out = subprocess.run(  # noqa: S603 - this same script
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.bench_memory",
                        "--count",
                        str(args.count),
                        "--child",
                        kind,
                        how,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                grown = json.loads(out.strip().splitlines()[-1])["bytes"]
                results.setdefault((kind, how), []).append(grown / args.count)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{args.count:,} credentials cached, {args.runs} run(s), {stamp}\n")
    print("| cache | tracemalloc bytes per entry | RSS bytes per entry |")
    print("|---|---:|---:|")
    names = {
        "keys": "API keys (KeyVerifier)",
        "tokens": "tokens (TokenVerifier)",
        "peer": "hand-written dict of keys (floor)",
    }
    for kind in KINDS:
        traced = " / ".join(f"{v:.0f}" for v in results[(kind, "traced")])
        rss = " / ".join(f"{v:.0f}" for v in results[(kind, "rss")])
        print(f"| {names[kind]} | {traced} | {rss} |")


if __name__ == "__main__":
    main()
