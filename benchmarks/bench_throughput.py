"""Throughput of a 2-worker uvicorn, bare and behind `APIKeyMiddleware` on the Redis store.

    .venv/bin/python -m benchmarks.bench_throughput [--duration 10] [--rounds 3]

Starts a Redis server on loopback (tests/servers.py), makes one key in it, and runs
a 2-worker uvicorn (benchmarks/throughput_server.py) serving
benchmarks/throughput_app.py, bare and guarded in
turn, each round driven by `wrk` on loopback with the same request (the key is sent
to the bare app too). wrk shares the machine with the server, so requests per second
move with the machine; the CPU time the uvicorn processes spend per request (read from
/proc before and after each round) is the steadier figure. The key's verification
is cached after its first request, which is the steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys

from tests.servers import RedisServer, free_port

from benchmarks.serving import make_key, wait_ready, wrk_round

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
VARIANTS = ("bare", "apikey")


def run_round(variant: str, key: str, store_url: str, duration: int) -> tuple[float, float]:
    """Requests per second and CPU µs per request of one wrk run against `variant`."""
    port = free_port()
    env = {
        **os.environ,
        "BENCH_VARIANT": variant,
        "BENCH_STORE": store_url,
        "APIGUARD_PEPPER": PEPPER,
    }
    server = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "benchmarks.throughput_server", str(port)], env=env
    )
    try:
        wait_ready(port, server)
        # Warms both workers (and their caches) first.
        return wrk_round(
            f"http://127.0.0.1:{port}/",
            server.pid,
            headers=[f"X-API-Key: {key}"],
            duration=duration,
        )
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("needs wrk (apt-get install wrk)")

    redis_server = RedisServer()
    try:
        url = redis_server.url()
        key = asyncio.run(make_key(url, PEPPER))
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                results[variant].append(run_round(variant, key, url, args.duration))
    finally:
        redis_server.remove()

    print(f"2 uvicorn workers, wrk -t1 -c32, {args.rounds} rounds of {args.duration} s\n")
    print("| variant | requests/s (median) | CPU µs/request (median) | CPU ratio vs bare |")
    print("|---|---:|---:|---:|")
    bare_cpu = statistics.median(cpu for _, cpu in results["bare"])
    for variant, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {variant} | {rate:,.0f} | {cpu:.1f} | {cpu / bare_cpu:.3f} |")
    print("\nper round (requests/s, CPU µs/request):")
    for variant, runs in results.items():
        print(f"  {variant}: " + ", ".join(f"{r:,.0f} / {c:.1f}" for r, c in runs))


if __name__ == "__main__":
    main()
