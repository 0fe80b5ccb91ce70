"""Apps served by uvicorn processes of their own, for tests (and benchmarks) that need
separate workers: each on a free loopback port, so the caller knows which one answers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.servers import free_port

ROOT = Path(__file__).parent.parent
STARTUP_TIMEOUT = 60.0


def _ok(response: httpx.Response) -> bool:
    return response.status_code == 200


class UvicornProcess:
    """`app` (`"tests.push_app:app"`) in a uvicorn process on a free loopback port.

    `env` is added to this process's environment; `options` are more uvicorn
    arguments (`"--lifespan", "on"`). The process's output goes to `log`.
    """

    def __init__(self, app: str, env: Mapping[str, str], log: Path, *options: str) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning", "--no-access-log",
                 *options],
                cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text()

    async def wait_until(
        self,
        client: httpx.AsyncClient,
        path: str,
        ready: Callable[[httpx.Response], bool] = _ok,
    ) -> None:
        """Return once `GET path` answers `ready`; raise if the process ends or takes
        longer than `STARTUP_TIMEOUT`."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                if ready(await client.get(f"{self.url}{path}")):
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.app} on port {self.port} not ready:\n{self.output()}")
            await asyncio.sleep(0.05)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, as a process manager stops a server (killed if it hangs); the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@contextmanager
def uvicorn_processes(
    app: str, env: Mapping[str, str], logs: Path, count: int, *options: str
) -> Iterator[list[UvicornProcess]]:
    """`count` processes serving `app`, stopped on exit; a traceback in any fails."""
    started = [UvicornProcess(app, env, logs / f"worker-{n}.log", *options) for n in range(count)]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()
    for worker in started:
        assert "Traceback" not in worker.output(), worker.output()
