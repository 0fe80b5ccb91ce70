"""`uvicorn --workers 2` for bench_throughput, on a listening socket made with TCP's protocol number.

    python -m benchmarks.throughput_server PORT

What `uvicorn.run(..., workers=2)` does, but the socket is made with
`socket.socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)`. uvicorn 0.54 makes it with
`socket.socket(family=AF_INET)`, protocol 0, and asyncio sets `TCP_NODELAY` only on
accepted sockets whose protocol reads `IPPROTO_TCP`; without it, each response (headers
and body are two writes) waits on the client's delayed ACK: about 44 ms a request on
loopback, whatever the app (Kludex/uvicorn#3149, open at 0.54; fix proposed in #3154).
"""

from __future__ import annotations

import socket
import sys

from uvicorn import Config
from uvicorn.supervisors import Multiprocess


def main() -> None:
    port = int(sys.argv[1])
    config = Config(
        "benchmarks.throughput_app:app",
        host="127.0.0.1",
        port=port,
        workers=2,
        log_level="warning",
        access_log=False,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.set_inheritable(True)
    Multiprocess(config, sockets=[sock]).run()


if __name__ == "__main__":
    main()
