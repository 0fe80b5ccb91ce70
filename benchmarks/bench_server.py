"""Inside a real server: CPU per request of apiguard's paths under uvicorn, against the bare app.

    .venv/bin/python -m benchmarks.bench_server [--duration 10] [--rounds 3]

Serves benchmarks/server_app.py under uvicorn (uvloop and httptools, one worker,
pinned to one core) in five variants: the bare Starlette app, an empty pure ASGI
middleware (the control), the hand-written peer (SHA-256 of the `X-API-Key` header
and a dict lookup), `APIKeyMiddleware` on a SQLite store, and
`BearerTokenMiddleware` with a repeated RS256 JWT. In each round every variant gets
a fresh server, warmed by wrk for 2 s (the key's and the token's verifications are
cached, the steady state), then `wrk` on loopback, pinned to the other core, for
`--duration` seconds. `--baseline CHECKOUT` adds the two apiguard variants served
with the apiguard sources of another checkout (its `src/`), for a before/after in
the same run. The variants take turns, in a rotated order each round, and
every request carries the same headers (the key and the token), so that every
variant parses the same bytes.

Request rates follow whatever else the machine runs; the server's CPU time per
request (utime + stime from /proc, before and after) does not, so the table reports
it, and the share of the bare app's capacity: bare CPU per request ÷ the variant's,
in the same round.

    .venv/bin/python -m benchmarks.bench_server --in-process [--rounds 15]

runs the same five apps in this process instead, straight through ASGI with the
request wrk sends, and reports the CPU time (`time.thread_time`) per request, the
least of the rounds: the middleware's own cost without a server around it.

    .venv/bin/python -m benchmarks.bench_server --serve PORT --core N

is what each server process runs: pins itself to core N and serves on PORT.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from tests.servers import free_port

from apiguard.testing import make_signing_key
from benchmarks.serving import make_key, wait_ready, wrk_round

PEPPER = "benchmark-pepper-0123456789abcdefghijklmnop"
VARIANTS = {
    "bare": "bare Starlette",
    "control": "+ empty pure ASGI middleware (control)",
    "peer": "+ hand-written SHA-256 + dict check",
    "apikey": "+ APIKeyMiddleware, SQLite store (warm)",
    "bearer": "+ BearerTokenMiddleware, repeated RS256 JWT (warm)",
}
BASELINE = "@baseline"


def serve(port: int, core: int) -> None:
    """One uvicorn worker on `port`, pinned to `core`, serving benchmarks/server_app.py.

    The listening socket is made with TCP's protocol number, so that asyncio sets
    `TCP_NODELAY` on accepted connections (see benchmarks/throughput_server.py).
    """
    import uvicorn

    os.sched_setaffinity(0, {core})
    config = uvicorn.Config(
        "benchmarks.server_app:app",
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    uvicorn.Server(config).run(sockets=[sock])


def run_round(
    variant: str, env: dict[str, str], headers: list[str], args: argparse.Namespace
) -> tuple[float, float]:
    """Requests per second and server CPU µs per request of `variant`, in a fresh server."""
    if variant.endswith(BASELINE):  # the same app over the apiguard sources of --baseline
        variant = variant.removesuffix(BASELINE)
        path = [str(Path(args.baseline, "src")), env.get("PYTHONPATH", "")]
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    port = free_port()
    server = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "benchmarks.bench_server",
            "--serve",
            str(port),
            "--core",
            str(args.server_core),
        ],
        env={**env, "BENCH_VARIANT": variant},
    )
    try:
        wait_ready(port, server)
        return wrk_round(
            f"http://127.0.0.1:{port}/",
            server.pid,
            headers=headers,
            duration=args.duration,
            connections=args.connections,
            cpus=str(args.client_core),
        )
    finally:
        server.terminate()
        server.wait(30)


async def in_process(chosen: list[str], headers: list[str], rounds: int) -> None:
    """CPU µs per request of each app driven through ASGI in this process, least of `rounds`."""
    from benchmarks.server_app import build

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000")]
        + [
            (name.lower().encode(), value.encode())
            for name, _, value in (h.partition(": ") for h in headers)
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async def batch(app: Any, requests: int) -> float:
        started = time.thread_time()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        return (time.thread_time() - started) / requests * 1e6

    apps = {variant: build(variant) for variant in chosen}
    for app in apps.values():
        await batch(app, 2_000)  # caches warm
    times: dict[str, list[float]] = {variant: [] for variant in chosen}
    for _ in range(rounds):
        for variant, app in apps.items():
            times[variant].append(await batch(app, 20_000))
    if statuses != {200}:
        raise RuntimeError(f"unexpected statuses {statuses}")
    bare = min(times["bare"])
    print(f"in process, {rounds} rounds of 20,000 requests, least CPU µs per request\n")
    print("| app | CPU µs/request | + µs vs bare |")
    print("|---|---:|---:|")
    for variant, samples in times.items():
        print(f"| {VARIANTS[variant]} | {min(samples):.2f} | {min(samples) - bare:+.2f} |")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated; bare is always run"
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also serve apiguard's variants with the apiguard sources of this checkout",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="drive the apps through ASGI, no server"
    )
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.core)
        return
    if shutil.which("wrk") is None and not args.in_process:
        parser.error("needs wrk (apt-get install wrk)")
    chosen = ["bare", *(v for v in args.variants.split(",") if v in VARIANTS and v != "bare")]
    if args.baseline is not None:
        if args.in_process:
            parser.error("--baseline serves; it does not go with --in-process")
        for variant in ("apikey", "bearer"):
            if variant in chosen:
                chosen.append(variant + BASELINE)
                VARIANTS[variant + BASELINE] = f"{VARIANTS[variant]}, {args.baseline}"

    from benchmarks.server_app import issuer

    with tempfile.TemporaryDirectory() as tmpdir:
        store = f"sqlite:///{tmpdir}/keys.db"
        key = asyncio.run(make_key(store, PEPPER))
        pem = make_signing_key("RS256").private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
        Path(tmpdir, "jwt.pem").write_bytes(pem)
        token = issuer(pem).mint(exp=int(time.time()) + 86_400)
        env = {
            **os.environ,
            "APIGUARD_PEPPER": PEPPER,
            "BENCH_STORE": store,
            "BENCH_KEY": key,
            "BENCH_JWT_KEY": str(Path(tmpdir, "jwt.pem")),
        }
        headers = [f"X-API-Key: {key}", f"Authorization: Bearer {token}"]
        if args.in_process:
            os.environ.update(env)
            asyncio.run(in_process(chosen, headers, args.rounds))
            return
        started = datetime.datetime.now(datetime.timezone.utc)
        loads = [load()]
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in chosen}
        for n in range(args.rounds):
            for variant in chosen[n % len(chosen) :] + chosen[: n % len(chosen)]:
                results[variant].append(run_round(variant, env, headers, args))
            loads.append(load())

    report(args, chosen, results, started, loads)


def report(
    args: argparse.Namespace,
    chosen: list[str],
    results: dict[str, list[tuple[float, float]]],
    started: datetime.datetime,
    loads: list[str],
) -> None:
    import starlette
    import uvicorn

    print(
        f"{started:%Y-%m-%d %H:%M} UTC, Python {platform.python_version()},"
        f" uvicorn {uvicorn.__version__} (uvloop, httptools), Starlette {starlette.__version__};"
        f" one worker on core {args.server_core}, wrk -t1 -c{args.connections} on core"
        f" {args.client_core}; {args.rounds} rounds of {args.duration} s"
    )
    print(f"load average (1, 5, 15 min) at the start and after each round: {' | '.join(loads)}\n")
    bare = [cpu for _, cpu in results["bare"]]
    print(
        "| server | CPU µs/request (each round) | + µs vs bare (median)"
        " | share of the bare app's capacity (each round) | median share | requests/s (median) |"
    )
    print("|---|---|---:|---|---:|---:|")
    for variant in chosen:
        runs = results[variant]
        cpus = [cpu for _, cpu in runs]
        shares = [b / c for b, c in zip(bare, cpus, strict=True)]
        extra = statistics.median(c - b for b, c in zip(bare, cpus, strict=True))
        rate = statistics.median(r for r, _ in runs)
        print(
            f"| {VARIANTS[variant]} | {' / '.join(f'{c:.1f}' for c in cpus)} | {extra:+.1f}"
            f" | {' / '.join(f'{s:.3f}' for s in shares)} | {statistics.median(shares):.3f}"
            f" | {rate:,.0f} |"
        )
    if "peer" in results:
        peer = [cpu for _, cpu in results["peer"]]
        for variant in chosen:
            if variant.startswith(("apikey", "bearer")):
                above = [c - p for p, (_, c) in zip(peer, results[variant], strict=True)]
                print(
                    f"\n{variant}: CPU µs/request above the hand-written peer, each round:"
                    f" {' / '.join(f'{a:+.1f}' for a in above)}"
                    f" (median {statistics.median(above):+.1f})"
                )


if __name__ == "__main__":
    main()
