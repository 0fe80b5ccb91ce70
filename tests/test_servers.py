"""The test servers themselves: a missing server skips locally and fails under CI."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import servers


@pytest.fixture
def no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without PostgreSQL or redis-server installed."""
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(servers, "postgres_bin_dir", lambda: None)


@pytest.mark.parametrize("start", [servers.PostgresCluster, servers.RedisServer])
def test_a_missing_server_skips_locally_and_says_how_to_install_it(
    no_servers: None, monkeypatch: pytest.MonkeyPatch, start: Callable[[], object]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed: run scripts/install"):
        start()


@pytest.mark.parametrize("start", [servers.PostgresCluster, servers.RedisServer])
def test_a_missing_server_fails_under_ci(
    no_servers: None, monkeypatch: pytest.MonkeyPatch, start: Callable[[], object]
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI the store tests must run"):
        start()


@pytest.mark.postgres
def test_postgres_runs_as_a_user_it_accepts(postgres_server: servers.PostgresServer) -> None:
    """As root, the server belongs to the `postgres` user; otherwise to whoever runs the tests."""
    owner = os.stat(f"/proc/{postgres_server.pid}").st_uid
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert owner == expected


@pytest.mark.postgres
def test_pausing_postgres_stops_all_its_processes(
    make_postgres_server: Callable[[], servers.PostgresServer],
) -> None:
    """Each PostgreSQL process is in a session of its own: every one is paused, then resumed."""
    server = make_postgres_server()
    processes = server._processes()
    assert len(processes) > 1  # the postmaster and its background workers
    server.pause()
    try:
        paused = {servers.process_state(pid) for pid in processes}
    finally:
        server.resume()
    assert paused == {"T"}
    assert "T" not in {servers.process_state(pid) for pid in processes}


def test_a_command_that_hangs_or_fails_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(servers.ServerError, match=r"sleeping: no answer within 0.1 s"):
        servers._run(["sleep", "5"], tmp_path, 0.1, "sleeping")
    with pytest.raises(servers.ServerError, match=r"listing failed \(2\):\n.*no-such-file"):
        servers._run(["ls", "no-such-file"], tmp_path, 5, "listing")


@pytest.mark.redis
def test_redis_that_cannot_start_says_why(
    redis_server: servers.RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port taken by another server: the error quotes the server's log, nothing is left behind."""
    monkeypatch.setattr(servers, "free_port", lambda: redis_server.port)
    before = set(servers._running)
    with pytest.raises(servers.ServerError, match=r"did not start(.|\n)*Address already in use"):
        servers.RedisServer()
    assert servers._running == before


@pytest.mark.postgres
def test_postgres_that_cannot_start_says_why(
    postgres_server: servers.PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port taken by another server: the error quotes the server's log, nothing is left behind."""
    monkeypatch.setattr(servers, "free_port", lambda: postgres_server.port)
    before = set(servers._running)
    with pytest.raises(
        servers.ServerError,
        match=r"pg_ctl start failed(.|\n)*server log:(.|\n)*Address already in use",
    ):
        servers.PostgresServer(postgres_server.cluster)
    assert servers._running == before
