"""A real uvicorn server on loopback, and a raw HTTP/1.1 client that sends paths unaltered.

httpx removes dot-segments from URLs before sending them (RFC 3986 §5.2.4), so
requests that must reach the server with `..`, `%2E%2E` or `//` in their target
go through a plain socket instead.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from apiguard.types import ASGIApp

_STARTUP_TIMEOUT = 10.0
_IO_TIMEOUT = 10.0


@contextmanager
def serve(app: ASGIApp, *, port: int = 0, **options: Any) -> Iterator[int]:
    """Serve `app` with uvicorn on 127.0.0.1, on `port` or one the OS picks; yields the port.

    `options` go to `uvicorn.Config` (TLS files, `lifespan="on"`, say).

    The server runs in a thread with its own event loop. It is ready when the
    context is entered (uvicorn's `started` flag is polled) and stopped, its
    connections closed, when the context exits. `options` are more
    `uvicorn.Config` arguments (`ssl_certfile`, ...).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "loop": "asyncio",
        "http": "h11",
        "ws": "none",
        "lifespan": "off",
        "log_config": None,
        "access_log": False,
    }
    config = uvicorn.Config(app, **(settings | options))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        yield port
    finally:
        server.should_exit = True
        thread.join(_STARTUP_TIMEOUT)
        sock.close()
    if thread.is_alive():  # pragma: no cover - a hung shutdown fails the test
        raise RuntimeError("uvicorn did not stop")


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(
    port: int,
    target: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
) -> RawResponse:
    """Send one HTTP/1.1 request with `target` exactly as given; read the whole answer."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    with socket.create_connection(("127.0.0.1", port), timeout=_IO_TIMEOUT) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(": ")
        fields[name.lower()] = value
    # Every response here has a Content-Length (no chunked bodies).
    assert "transfer-encoding" not in fields
    return RawResponse(int(status_line.split()[1]), fields, body)
