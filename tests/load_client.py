"""A bounded HTTP/1.1 load generator on raw asyncio sockets, for tests against real servers.

`pipelined()` sends a list of requests over a fixed number of kept-alive
connections, `depth` requests written back to back on each before its answers
are read (HTTP/1.1 pipelining, RFC 9112 §9.3). The first round is written on
every connection before any answer is read: `connections * depth` requests are
in flight together, while the client holds only `connections` sockets. Each
answer is returned with the moment its request was written, on the
`time.monotonic()` clock, which every process on the machine shares.

`start_load_app()` serves tests/load_app.py with uvicorn in a process of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.processes import UvicornProcess

_IO_TIMEOUT = 120.0  # seconds without progress on one connection: the test fails


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to request `index`: its status and body, when the request was
    written (a moment before its first byte left) and when the answer was read."""

    index: int
    status: int
    body: bytes
    written_at: float
    received_at: float


def get(path: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """One GET request, kept alive, with `headers` as given."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = None
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding":
            raise AssertionError("chunked answers are not read here")
    assert length is not None, head
    return status, await reader.readexactly(length)


async def pipelined(
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int,
    depth: int = 1,
    on_answer: Callable[[], None] | None = None,
) -> list[Answer]:
    """Send every request to 127.0.0.1:`port`; return the answers in request order.

    Requests are taken in order, `depth` at a time, by whichever connection is free.
    Every connection is open before the first request is written. `on_answer()`
    is called as each answer is read.
    """
    next_index = 0
    answers: list[Answer | None] = [None] * len(requests)
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(connections))
    )
    go = asyncio.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_index
        await go.wait()
        try:
            while next_index < len(requests):
                batch = range(next_index, min(next_index + depth, len(requests)))
                next_index = batch.stop
                written_at = time.monotonic()
                writer.write(b"".join(requests[n] for n in batch))
                await writer.drain()
                for n in batch:
                    status, body = await asyncio.wait_for(_read_answer(reader), _IO_TIMEOUT)
                    answers[n] = Answer(n, status, body, written_at, time.monotonic())
                    if on_answer is not None:
                        on_answer()
        finally:
            writer.close()
            await writer.wait_closed()

    tasks = [asyncio.ensure_future(connection(r, w)) for r, w in opened]
    go.set()
    await asyncio.gather(*tasks)
    assert all(answer is not None for answer in answers)
    return answers  # type: ignore[return-value]


def start_load_app(env: dict[str, str], log: Path) -> UvicornProcess:
    """Start uvicorn (one worker) on tests/load_app.py with `env` added to the environment.

    uvicorn picks uvloop and httptools when they are installed, asyncio and h11 if not.
    """
    return UvicornProcess(
        "tests.load_app:app", env, log,
        "--workers", "1", "--backlog", "4096", "--timeout-keep-alive", "120",
    )  # fmt: skip
