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
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import RedisServer, free_port

from apiguard.keys import KeyHasher, KeyManager, open_store

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
VARIANTS = ("bare", "apikey")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root: int) -> float:
    """User and system CPU time of process `root` and its children, in seconds."""
    total = 0.0
    pids = [root]
    while pids:
        pid = pids.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return total


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("uvicorn exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if sock.recv(64):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("uvicorn did not start")


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
        wrk = [shutil.which("wrk") or "wrk", "-t1", "-c32", "--latency", "-H", f"X-API-Key: {key}"]
        url = f"http://127.0.0.1:{port}/"
        # Warm both workers (and their caches) first.
        subprocess.run([*wrk, "-d2s", url], check=True, capture_output=True)  # noqa: S603
        before = cpu_seconds(server.pid)
        done = subprocess.run(  # noqa: S603
            [*wrk, f"-d{duration}s", url], check=True, capture_output=True, text=True
        )
        cpu = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(30)
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{variant}: errors in wrk's run:\n{out}")
    match = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(rate.group(1)), cpu / int(match.group(1)) * 1e6


async def make_key(url: str) -> str:
    store = open_store(url)
    try:
        return (await KeyManager(store, KeyHasher(PEPPER)).create("bench")).key
    finally:
        await store.aclose()


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
        key = asyncio.run(make_key(url))
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
