"""Real PostgreSQL and Redis servers for the store tests, on loopback, in temporary directories.

`scripts/install` installs Debian's `postgresql` and `redis-server` when they are
missing. Without them the tests that need a server are skipped with a message saying
so, except under CI (`CI` set), where that is a failure: a skipped store suite would
pass CI without proving anything.

PostgreSQL refuses to run as root. As root, `initdb` and `pg_ctl` run as the
`postgres` user that Debian's package creates, in directories it owns.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

# What is still running or on disk: removed when the interpreter exits, should a test
# run end before its fixtures' teardown.
_running: set[PostgresCluster | PostgresServer | RedisServer] = set()


def unavailable(what: str) -> NoReturn:
    """Skip the test for want of a server, or fail it under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}; under CI the store tests must run, not skip", pytrace=False)
    pytest.skip(f"{what}: run scripts/install")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _new_dir(prefix: str, owner: list[str]) -> Path:
    # Not under pytest's tmp_path: that is private to the user running pytest, and
    # PostgreSQL runs as another user when the tests run as root.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


class ServerError(RuntimeError):
    """A test server did not start or stop."""


def process_state(pid: int) -> str:
    """The state letter of a process, from /proc: T when stopped."""
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _wait_stopped(pids: list[int]) -> None:
    """Return once every process has stopped: SIGSTOP takes effect asynchronously."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(process_state(pid) != "T" for pid in pids):
        if time.monotonic() > deadline:  # pragma: no cover - diagnostics
            raise ServerError(f"processes {pids} did not stop")
        time.sleep(0.005)


# --- PostgreSQL ----------------------------------------------------------------

_PG_TOOLS = ("initdb", "pg_ctl", "postgres", "psql")


def _version(bin_dir: Path) -> tuple[int, ...]:
    name = bin_dir.parent.name
    return tuple(int(p) for p in name.split(".")) if name.replace(".", "").isdigit() else ()


def postgres_bin_dir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: on PATH, else Debian's newest version."""
    candidates = []
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(Path(pg_ctl).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in _PG_TOOLS):
            return candidate
    return None


def postgres_owner() -> list[str]:
    """The prefix that runs a command as a user PostgreSQL accepts: none unless root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        runuser = None
    if runuser is None:
        unavailable("PostgreSQL does not run as root, and there is no 'postgres' user to run it")
    return [runuser, "-u", "postgres", "--"]


def _run(command: list[str], cwd: Path, timeout: float, what: str) -> None:
    try:
        result = subprocess.run(  # noqa: S603
            command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what}: no answer within {timeout:g} s") from None
    if result.returncode != 0:
        raise ServerError(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


class PostgresCluster:
    """An initialized PostgreSQL data directory that servers are copied from.

    `initdb` runs once per test session; each server starts on a copy, which takes a
    fraction of the time.
    """

    user = "apiguard"

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            unavailable("PostgreSQL (initdb, pg_ctl) is not installed")
        self.bin_dir = bin_dir
        self.owner = postgres_owner()
        self.password = "pg-" + secrets.token_hex(12)
        self.root = _new_dir("apiguard-pgtemplate-", self.owner)
        self.data = self.root / "data"
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self.owner:
            user = pwd.getpwnam("postgres")
            os.chown(password_file, user.pw_uid, user.pw_gid)
        try:
            _run(
                [
                    *self.owner,
                    str(bin_dir / "initdb"),
                    f"--pgdata={self.data}",
                    f"--username={self.user}",
                    f"--pwfile={password_file}",
                    # Password checks over TCP (what the stores use); trust on the socket.
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                self.root,
                STARTUP_TIMEOUT,
                "initdb",
            )
        except BaseException:  # pragma: no cover - diagnostics
            self.remove()
            raise
        password_file.unlink()
        _running.add(self)

    def remove(self) -> None:
        _running.discard(self)
        shutil.rmtree(self.root, ignore_errors=True)


class PostgresServer:
    """A PostgreSQL server on 127.0.0.1, with its socket and data in a temporary directory."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self.cluster = cluster
        self.user = cluster.user
        self.password = cluster.password
        self.root = _new_dir("apiguard-pg-", cluster.owner)
        self.data = self.root / "data"
        self.port = free_port()
        self._databases = 0
        try:
            self._as_owner(["cp", "-a", str(cluster.data), str(self.data)], "copying the cluster")
            self.start()
        except BaseException:
            self.remove()
            raise

    def _as_owner(self, command: list[str], what: str, timeout: float = STARTUP_TIMEOUT) -> None:
        _run([*self.cluster.owner, *command], self.root, timeout, what)

    def _tool(self, name: str) -> str:
        return str(self.cluster.bin_dir / name)

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                # A throwaway server: durability buys nothing and costs time.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        log = self.root / "server.log"
        try:
            self._as_owner(
                [self._tool("pg_ctl"), "start", "--wait", f"--timeout={STARTUP_TIMEOUT:.0f}",
                 f"--pgdata={self.data}", f"--log={log}", f"--options={options}"],
                "pg_ctl start",
                STARTUP_TIMEOUT + 10,
            )  # fmt: skip
        except ServerError as exc:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServerError(f"{exc}\nserver log:\n{tail}") from None
        _running.add(self)

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def _processes(self) -> list[int]:
        """The postmaster and its children (each in a session of its own, so no killpg).

        None if the pid file names no postmaster of this server's (a stale pid).
        """
        try:
            postmaster = self.pid
            command = Path(f"/proc/{postmaster}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return []
        if str(self.data).encode() not in command:
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                if int(stat.read_text().rpartition(")")[2].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    def pause(self) -> None:
        """Freeze every process of the server (SIGSTOP): connections hang, nothing answers."""
        processes = self._processes()
        for pid in processes:
            os.kill(pid, signal.SIGSTOP)
        _wait_stopped(processes)

    def resume(self) -> None:
        for pid in self._processes():
            os.kill(pid, signal.SIGCONT)

    def stop(self) -> None:
        if self not in _running:
            return
        _running.discard(self)
        processes = self._processes()
        for pid in processes:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)  # a paused server cannot stop
        try:
            self._as_owner(
                [self._tool("pg_ctl"), "stop", "--wait", f"--timeout={STOP_TIMEOUT:.0f}",
                 f"--pgdata={self.data}", "--mode=fast"],
                "pg_ctl stop",
                STOP_TIMEOUT + 10,
            )  # fmt: skip
        except ServerError:  # pragma: no cover - a server that will not stop
            for pid in processes:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        password = self.password if password is None else password
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> None:
        """Run `sql` as the superuser over the unix socket."""
        _run(
            [self._tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
             "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql],
            self.root,
            STARTUP_TIMEOUT,
            "psql",
        )  # fmt: skip

    def create_database(self) -> str:
        """A new, empty database; returns its name.

        Its collation is linguistic (ICU's en-US, where the server has ICU), as on many
        production servers: unlike the cluster's C locale, it sorts "abc" before "ABD".
        """
        self._databases += 1
        name = f"test_{self._databases}"
        try:
            self.psql(
                f'CREATE DATABASE "{name}" TEMPLATE template0 '
                "LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            )
        except ServerError:  # built without ICU, or before PostgreSQL 15
            self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE "{name}" WITH (FORCE)')


# --- Redis ---------------------------------------------------------------------


class RedisServer:
    """A redis-server on 127.0.0.1 and on a unix socket, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.password = "redis-" + secrets.token_hex(12)
        self.root = _new_dir("apiguard-redis-", [])
        self.socket = self.root / "redis.sock"
        self.port = free_port()
        self._command = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--requirepass", self.password,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.root),
            "--logfile", str(self.root / "redis.log"),
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.remove()
            raise

    def client(self) -> redis.Redis:
        """A client over the unix socket that does not retry: waiting is the caller's business."""
        return redis.Redis(
            unix_socket_path=str(self.socket),
            password=self.password,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self) -> None:
        self._process = subprocess.Popen(  # noqa: S603
            self._command, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _running.add(self)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with self.client() as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
        log = self.root / "redis.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        self.stop()
        raise ServerError(f"redis-server did not start within {STARTUP_TIMEOUT:g} s:\n{tail}")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        _wait_stopped([self._process.pid])

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        _running.discard(self)
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - a server that will not stop
                process.kill()
                process.wait(STOP_TIMEOUT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def url(self, db: int = 0, *, password: str | None = None) -> str:
        password = self.password if password is None else password
        return f"redis://:{password}@127.0.0.1:{self.port}/{db}"

    def unix_url(self, db: int = 0) -> str:
        return f"unix://:{self.password}@{self.socket}?db={db}"


@atexit.register
def _stop_all() -> None:  # pragma: no cover - runs after the measurements
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.remove()
