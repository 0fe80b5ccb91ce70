"""Helpers for the benchmarks that serve over real sockets: CPU time from /proc, wrk runs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["cpu_seconds", "wait_ready", "wrk_round"]

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
    """Return once the server on `port` answers a request; raise if it exits or never does."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if sock.recv(64):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def wrk_round(
    url: str,
    server_pid: int,
    *,
    headers: Sequence[str],
    duration: int,
    warmup: int = 2,
    connections: int = 32,
    cpus: str | None = None,
) -> tuple[float, float]:
    """Requests per second and the server's CPU µs per request of one wrk run.

    wrk runs `warmup` seconds first (connections, caches), then `duration`
    seconds, during which the CPU time of process `server_pid` and its children is
    read from /proc before and after. `cpus` pins wrk to those cores (`taskset -c`).
    Any non-2xx answer or socket error is an error.
    """
    wrk = [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", "--latency"]
    for header in headers:
        wrk += ["-H", header]
    if cpus is not None:
        wrk = [shutil.which("taskset") or "taskset", "-c", cpus, *wrk]
    subprocess.run([*wrk, f"-d{warmup}s", url], check=True, capture_output=True)  # noqa: S603
    before = cpu_seconds(server_pid)
    done = subprocess.run(  # noqa: S603
        [*wrk, f"-d{duration}s", url], check=True, capture_output=True, text=True
    )
    cpu = cpu_seconds(server_pid) - before
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors in wrk's run against {url}:\n{out}")
    count = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if count is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(rate.group(1)), cpu / int(count.group(1)) * 1e6


async def make_key(url: str, pepper: str) -> str:
    """A new API key in the store at `url`, hashed with `pepper`."""
    from apiguard.keys import KeyHasher, KeyManager, open_store

    store = open_store(url)
    try:
        return (await KeyManager(store, KeyHasher(pepper)).create("bench")).key
    finally:
        await store.aclose()
