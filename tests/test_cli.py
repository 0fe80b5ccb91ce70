from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import apiguard.keys
from apiguard import APIKeyMiddleware, BackendUnavailableError, CacheOptions, ConfigurationError
from apiguard.cli import format_duration, main, parse_duration
from apiguard.keys import MemoryKeyStore, open_store, register_scheme
from apiguard.types import KeyStore

from .conftest import PEPPER


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/keys.db"
    monkeypatch.setenv("APIGUARD_STORE", url)
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    return url


def cli(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def create(*args: str) -> dict[str, Any]:
    return dict(json.loads(cli("keys", "create", "--json", *args).output))


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.user.display_name)


@pytest.fixture
def client(store_url: str) -> Iterator[TestClient]:
    """The app of another process: its own store object on the same database."""
    store = open_store(store_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Closed on the loop that used it: the SQLite driver's worker thread answers
        # to that loop, which is gone once the TestClient has exited.
        async with store:  # type: ignore[attr-defined]
            yield

    app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
    app.add_middleware(APIKeyMiddleware, store=store, cache=CacheOptions(ttl=0.2))
    with TestClient(app) as client:
        yield client


def test_create_use_revoke_refuse(client: TestClient) -> None:
    created = create("--name", "billing", "--scope", "items:read")
    key = created["key"]
    assert client.get("/", headers={"X-API-Key": key}).text == "billing"
    revoked = cli("keys", "revoke", created["key_id"])
    assert f"Revoked {created['key_id']}" in revoked.output
    assert key not in revoked.output
    time.sleep(0.25)  # the app's cache TTL
    assert client.get("/", headers={"X-API-Key": key}).status_code == 401


def test_rotate_both_work_then_grace_ends(client: TestClient) -> None:
    old = create("--name", "billing")
    new = json.loads(cli("keys", "rotate", old["key_id"], "--grace", "1s", "--json").output)
    assert new["key"] != old["key"]
    assert new["name"] == "billing"
    assert client.get("/", headers={"X-API-Key": old["key"]}).status_code == 200
    assert client.get("/", headers={"X-API-Key": new["key"]}).status_code == 200
    time.sleep(1.3)
    assert client.get("/", headers={"X-API-Key": old["key"]}).status_code == 401
    assert client.get("/", headers={"X-API-Key": new["key"]}).status_code == 200


def test_rotate_keeps_scopes_metadata_and_lifetime(store_url: str) -> None:
    old = create(
        "--name", "a", "--scope", "x", "--scope", "y", "--meta", "team=core", "--expires-in", "30d"
    )
    new = json.loads(cli("keys", "rotate", old["key_id"], "--json").output)
    assert new["scopes"] == ["x", "y"]
    assert new["metadata"] == {"team": "core"}
    assert new["expires_at"] is not None
    shown = json.loads(cli("keys", "show", old["key_id"], "--json").output)
    assert shown["expires_at"] < new["expires_at"]


def test_list_and_show_never_print_secrets(store_url: str) -> None:
    created = create("--name", "billing", "--scope", "items:read", "--expires-in", "90d")
    secret = created["key"].split("_")[2]
    listing = cli("keys", "list").output
    assert created["key_id"] in listing
    assert "billing" in listing
    assert "active" in listing
    shown = cli("keys", "show", created["key_id"]).output
    as_json = cli("keys", "list", "--json").output
    for output in (listing, shown, as_json):
        assert secret[:10] not in output
        assert "hmac" not in output
    record = json.loads(as_json)[0]
    assert set(record) == {
        "key_id", "name", "scopes", "status", "created_at", "expires_at",
        "revoked_at", "last_used_at", "metadata", "rate_limit", "quota",
        "requests_today", "requests_30_days",
    }  # fmt: skip


def test_create_prints_the_key_once_with_a_warning(store_url: str) -> None:
    output = cli("keys", "create", "--name", "x").output
    assert "apg_" in output
    assert "only time the key is shown" in output


def test_list_filters_by_name(store_url: str) -> None:
    create("--name", "alice")
    create("--name", "bob")
    names = [r["name"] for r in json.loads(cli("keys", "list", "--name", "bob", "--json").output)]
    assert names == ["bob"]


def test_init_suggests_a_pepper_only_when_missing(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "export APIGUARD_PEPPER" not in cli("keys", "init").output
    monkeypatch.delenv("APIGUARD_PEPPER")
    output = cli("keys", "init").output
    assert "Key store ready" in output
    assert "export APIGUARD_PEPPER=" in output
    suggested = json.loads(cli("keys", "init", "--json").output)["suggested_pepper"]
    assert len(suggested) >= 32


def test_init_refuses_a_pepper_too_short_to_use(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIGUARD_PEPPER", "x")
    result = cli("keys", "init", ok=False)
    assert result.exit_code == 1
    assert "too short" in result.output
    assert "Key store ready" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "x", "--scope", 'a"b'], "invalid scope"),
        (["keys", "create", "--name", "x", "--expires-in", "9y"], "not a duration"),
        (["keys", "create", "--name", "x", "--expires-in", "0"], "expires_in must be positive"),
        (["keys", "create", "--name", ""], "name must be"),
        (["keys", "create", "--name", "x", "--meta", "novalue"], "KEY=VALUE"),
        (["keys", "create", "--name", "x", "--prefix", "BAD"], "prefix"),
        (["keys", "show", "nosuchkey000"], "no key with id"),
        (["keys", "revoke", "nosuchkey000"], "no key with id"),
        (["keys", "rotate", "nosuchkey000"], "no key with id"),
        (["keys", "list", "--store", "nosuch://"], "unknown key store URL"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(
    store_url: str, args: list[str], message: str
) -> None:
    result = cli(*args, ok=False)
    assert result.exit_code != 0
    assert message in result.output
    assert json.loads(cli("keys", "list", "--json").output) == []


def test_create_and_rotate_need_the_pepper(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    created = create("--name", "x")
    monkeypatch.delenv("APIGUARD_PEPPER")
    for args in (["keys", "create", "--name", "y"], ["keys", "rotate", created["key_id"]]):
        result = cli(*args, ok=False)
        assert result.exit_code == 1
        assert "APIGUARD_PEPPER" in result.output
    assert cli("keys", "list").exit_code == 0  # reading needs no pepper
    assert cli("keys", "revoke", created["key_id"]).exit_code == 0


def test_rotating_a_revoked_key_is_refused(store_url: str) -> None:
    created = create("--name", "x")
    cli("keys", "revoke", created["key_id"])
    result = cli("keys", "rotate", created["key_id"], ok=False)
    assert "is revoked" in result.output
    assert len(json.loads(cli("keys", "list", "--json").output)) == 1


def test_a_store_in_a_missing_directory_says_which_and_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir.db"
    result = cli("keys", "list", "--store", url, ok=False)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: key store {url} unavailable: OperationalError: unable to open database file"
        f" (the directory {tmp_path}/no/such does not exist)\n"
    )


def test_a_read_only_store_says_which_and_why(store_url: str, tmp_path: Path) -> None:
    """SQLite opened read-only (as a read-only file is): reading works, writing says why."""
    create("--name", "x")
    read_only = f"sqlite:///file:{tmp_path}/keys.db?mode=ro&uri=true"
    assert len(json.loads(cli("keys", "list", "--json", "--store", read_only).output)) == 1
    result = cli("keys", "create", "--name", "y", "--store", read_only, ok=False)
    assert result.exit_code == 1
    assert f"key store {read_only} unavailable: OperationalError:" in result.output
    assert "attempt to write a readonly database" in result.output


@pytest.mark.parametrize(
    ("file_exists", "writable", "hint"),
    [
        (True, {"dir"}, "(the file {dir}/keys.db is read-only)"),
        (False, set(), "(the directory {dir} is not writable; SQLite creates the file there)"),
        (
            True,
            {"file"},
            "(the directory {dir} is not writable; SQLite creates its journal beside the file"
            " there)",
        ),
    ],
    ids=["read-only-file", "read-only-directory", "read-only-directory-with-file"],
)
def test_read_only_places_are_named(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    file_exists: bool,
    writable: set[str],
    hint: str,
) -> None:
    """Which file or directory SQLite cannot write.

    Root writes through permission bits, so the file system's answer is given here,
    and a driver error stands in for the one SQLite gives other users.
    """
    directory = tmp_path / "store"
    directory.mkdir()
    if file_exists:
        (directory / "keys.db").touch()

    def access(path: Any, mode: int) -> bool:
        kind = "dir" if Path(path) == directory else "file"
        return mode != os.W_OK or kind in writable

    def refusing(url: str) -> KeyStore:
        store = MemoryKeyStore()

        async def refuse(**_: Any) -> list[Any]:
            raise BackendUnavailableError("key store unavailable") from sqlite3.OperationalError(
                "unable to open database file"
            )

        store.list = refuse  # type: ignore[method-assign]
        return store

    monkeypatch.setattr("apiguard.cli.os.access", access)
    register_scheme("sqlite", refusing)
    try:
        result = cli("keys", "list", "--store", f"sqlite:///{directory}/keys.db", ok=False)
    finally:
        register_scheme("sqlite", "apiguard.keys.sql:SQLKeyStore.from_url")
    assert result.output.rstrip().endswith(hint.format(dir=directory))


@pytest.mark.parametrize("command", [["create", "--name", "x"], ["rotate", "K" * 12]])
def test_stores_that_do_not_persist_are_refused_for_new_keys(
    store_url: str, command: list[str]
) -> None:
    """A key made in memory:// would be gone when the command ends: none is printed."""
    result = cli("keys", *command, "--store", "memory://", ok=False)
    assert result.exit_code == 1
    assert "memory:// keeps keys only while this command runs" in result.output
    assert "apg_" not in result.output


def test_revoke_help_tells_the_cache_delay() -> None:
    text = " ".join(cli("keys", "revoke", "--help").output.split())
    assert "up to 30 seconds with the default cache" in text
    assert "at once" not in text


def test_revoking_twice_says_so(store_url: str) -> None:
    created = create("--name", "x")
    first = cli("keys", "revoke", created["key_id"]).output
    assert first.startswith(f"Revoked {created['key_id']} (x).")
    assert "within 30 seconds" in first
    again = cli("keys", "revoke", created["key_id"]).output
    assert again.startswith(f"{created['key_id']} (x) was already revoked at ")
    assert "nothing changed" in again
    shown = json.loads(cli("keys", "revoke", created["key_id"], "--json").output)
    assert shown["already_revoked"] is True
    assert shown["status"] == "revoked"


@pytest.mark.parametrize(
    ("grace", "said"),
    [
        ("24h", "keeps working for 1 day, until "),
        ("90m", "keeps working for 1 hour 30 minutes, until "),
        ("2w", "keeps working for 2 weeks, until "),
        ("0", "no longer works."),
    ],
)
def test_rotate_says_how_long_the_old_key_works(store_url: str, grace: str, said: str) -> None:
    old = create("--name", "x")
    output = cli("keys", "rotate", old["key_id"], "--grace", grace).output
    assert f"The old key {old['key_id']} {said}" in output
    assert "day, 0:00:00" not in output


def test_rotate_json_has_the_old_keys_new_expiry(store_url: str) -> None:
    old = create("--name", "x")
    rotated = json.loads(cli("keys", "rotate", old["key_id"], "--grace", "1h", "--json").output)
    replaced = rotated["replaces"]
    assert replaced["key_id"] == old["key_id"]
    assert replaced["expires_at"] is not None
    expires = datetime.fromisoformat(replaced["expires_at"])
    assert expires - datetime.fromisoformat(rotated["created_at"]) == timedelta(hours=1)
    shown = json.loads(cli("keys", "show", old["key_id"], "--json").output)
    assert {k: v for k, v in shown.items() if not k.startswith("requests_")} == replaced


@pytest.mark.parametrize(
    ("pepper", "message"),
    [
        (None, "APIGUARD_PEPPER is not set. New keys are hashed with the pepper your app uses"),
        ("short", "APIGUARD_PEPPER is too short: a pepper has at least 32 bytes"),
    ],
)
def test_pepper_messages_speak_to_cli_users(
    store_url: str, monkeypatch: pytest.MonkeyPatch, pepper: str | None, message: str
) -> None:
    if pepper is None:
        monkeypatch.delenv("APIGUARD_PEPPER")
    else:
        monkeypatch.setenv("APIGUARD_PEPPER", pepper)
    output = cli("keys", "create", "--name", "x", ok=False).output
    assert message in output
    assert "pepper=" not in output
    assert "characters" not in output


@pytest.mark.parametrize("option", ["--expires-in", "--grace"])
def test_a_huge_duration_is_too_large(store_url: str, option: str) -> None:
    command = ["create", "--name", "x"] if option == "--expires-in" else ["rotate", "K" * 12]
    result = cli("keys", *command, option, "99999999999d", ok=False)
    assert result.exit_code == 2
    assert "'99999999999d' is too large: at most 36500d (100 years)" in result.output


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def test_keys_on_a_real_server(
    server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI on a real server: the URL shown without its password, refused without it."""
    url: str = request.getfixturevalue(f"{server}_url")
    password = url.split("@")[0].rsplit(":", 1)[1]
    monkeypatch.setenv("APIGUARD_STORE", url)
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    ready = cli("keys", "init").output
    assert url.replace(password, "***") in ready
    assert password not in ready
    created = create("--name", "billing", "--scope", "items:read")
    cli("keys", "revoke", created["key_id"])
    [listed] = json.loads(cli("keys", "list", "--json").output)
    assert (listed["key_id"], listed["status"]) == (created["key_id"], "revoked")
    wrong = url.replace(password, "Wr0ng-Passw0rd")
    refused = cli("keys", "list", "--store", wrong, ok=False)
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: key store ")
    assert "unavailable" in refused.output
    assert "Wr0ng-Passw0rd" not in refused.output


# --- store URLs with passwords ------------------------------------------------

PASSWORD = "s3cret-Pa55"

# Every command that takes --store, with the arguments it needs besides.
STORE_COMMANDS = {
    "init": [],
    "create": ["--name", "x"],
    "list": [],
    "show": ["K" * 12],
    "revoke": ["K" * 12],
    "rotate": ["K" * 12],
    "update": ["K" * 12, "--quota", "10/day"],
    "usage": ["K" * 12],
    "check": ["apg_KKKKKKKKKKKK_key"],
}


def test_store_commands_are_all_listed() -> None:
    keys = main.commands["keys"]
    assert isinstance(keys, click.Group)
    taking_store = {
        name
        for name, command in keys.commands.items()
        if any(param.name == "store_url" for param in command.params)
    }
    assert taking_store == set(STORE_COMMANDS)


@pytest.fixture
def password_schemes() -> Iterator[None]:
    """`vault://` opens a memory store; `leaky://` fails with the URL and password in its message."""

    def leaky(url: str) -> KeyStore:
        raise ConfigurationError(f"cannot log in to {url} with password {PASSWORD!r}")

    register_scheme("vault", lambda url: MemoryKeyStore())
    register_scheme("leaky", leaky)
    yield
    del apiguard.keys._SCHEMES["vault"], apiguard.keys._SCHEMES["leaky"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"mysql://app:{PASSWORD}@db.example/keys", "mysql://app:***@db.example/keys"),
        (f"memcached://:{PASSWORD}@cache.example", "memcached://:***@cache.example"),
        (f"sqlite://app:{PASSWORD}@host/keys.db", "sqlite+aiosqlite://app:***@host/keys.db"),
        (f"leaky://app:{PASSWORD}@db.example", "leaky://app:***@db.example"),
    ],
    ids=["unknown-scheme", "password-only", "bad-sqlite-url", "store-quoting-it"],
)
@pytest.mark.parametrize("command", list(STORE_COMMANDS))
def test_store_passwords_never_appear_in_errors(
    store_url: str, password_schemes: None, command: str, url: str, shown: str
) -> None:
    for how in (["--store", url], []):  # on the command line, or in APIGUARD_STORE
        env = {"APIGUARD_STORE": url}
        result = CliRunner().invoke(
            main, ["keys", command, *how, *STORE_COMMANDS[command]], env=env
        )
        assert result.exit_code == 1
        assert shown in result.output
        assert PASSWORD not in result.output


@pytest.mark.parametrize("as_json", [False, True])
def test_init_shows_the_store_without_its_password(
    store_url: str, password_schemes: None, as_json: bool
) -> None:
    url = f"vault://app:{PASSWORD}@vault.example/keys"
    output = cli("keys", "init", "--store", url, *(["--json"] if as_json else [])).output
    assert "vault://app:***@vault.example/keys" in output
    assert PASSWORD not in output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "1.5h", "-1d", "10y"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["36501d", "5215w", "876001h", "99999999999d"])
def test_parse_duration_refuses_more_than_a_century(text: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration(text)
    assert parse_duration("36500d") == timedelta(days=36500)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0 seconds"),
        (timedelta(seconds=1), "1 second"),
        (timedelta(hours=24), "1 day"),
        (timedelta(days=10), "10 days"),
        (timedelta(weeks=2), "2 weeks"),
        (timedelta(days=1, hours=6, minutes=1), "1 day 6 hours 1 minute"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


def test_version_names_the_installed_distribution() -> None:
    """`apiguard --version` reads the version of the `apiguard-asgi` distribution."""
    assert cli("--version").output.strip() == f"apiguard, version {apiguard.__version__}"


@pytest.mark.redis
def test_rate_limit_and_quota_from_create_to_show(redis_url: str) -> None:
    """`create --rate-limit --quota`, `update`, and `show` with this period's quota use."""
    env = {"APIGUARD_STORE": redis_url, "APIGUARD_PEPPER": PEPPER}
    runner = CliRunner()
    created = runner.invoke(
        main,
        [
            "keys",
            "create",
            "--name",
            "plan",
            "--rate-limit",
            "5/second",
            "--quota",
            "100/day",
            "--json",
        ],
        env=env,
    )
    assert created.exit_code == 0, created.output
    record = json.loads(created.output)
    assert (record["rate_limit"], record["quota"]) == ("5/second", "100/day")
    updated = runner.invoke(
        main,
        ["keys", "update", record["key_id"], "--rate-limit", "none", "--quota", "1000/month"],
        env=env,
    )
    assert updated.exit_code == 0, updated.output
    assert "ratelimit: -" in updated.output
    assert "quota:     1000/month" in updated.output
    shown = runner.invoke(main, ["keys", "show", record["key_id"], "--json"], env=env)
    usage = json.loads(shown.output)["quota_usage"]
    assert (usage["used"], usage["remaining"]) == (0, 1000)
    text = runner.invoke(main, ["keys", "show", record["key_id"]], env=env).output
    assert "used:      0 this period, 1000 left; resets" in text
    bad = runner.invoke(main, ["keys", "update", record["key_id"], "--quota", "5/week"], env=env)
    assert bad.exit_code == 1
    assert "not a quota" in bad.output
    nothing = runner.invoke(main, ["keys", "update", record["key_id"]], env=env)
    assert nothing.exit_code == 2


def test_show_says_where_quota_use_is_counted(tmp_path: Path) -> None:
    """A SQLite key store has no counters of its own: `show` says to pass --limits."""
    env = {"APIGUARD_STORE": f"sqlite:///{tmp_path}/k.db", "APIGUARD_PEPPER": PEPPER}
    runner = CliRunner()
    created = runner.invoke(
        main, ["keys", "create", "--name", "p", "--quota", "10/day", "--json"], env=env
    )
    key_id = json.loads(created.output)["key_id"]
    text = runner.invoke(main, ["keys", "show", key_id], env=env).output
    assert "used:      unknown: pass --limits" in text
    counted = runner.invoke(main, ["keys", "show", key_id, "--limits", "memory://"], env=env).output
    assert "used:      0 this period, 10 left" in counted


@pytest.mark.redis
def test_usage_shows_the_quota_used_this_period(redis_url: str) -> None:
    """`keys usage` tells the quota used and left, from the counters the server's
    `Quotas` policy keeps in the key store's Redis, beside the request counts."""
    from apiguard.ratelimit import Quotas

    env = {"APIGUARD_STORE": redis_url, "APIGUARD_PEPPER": PEPPER}
    runner = CliRunner()
    created = runner.invoke(
        main, ["keys", "create", "--name", "plan", "--quota", "5/day", "--json"], env=env
    )
    record = json.loads(created.output)

    async def serve_three_requests() -> list[int]:
        store, quotas = open_store(redis_url), Quotas(storage=redis_url)
        app = APIKeyMiddleware(
            Starlette(routes=[Route("/", hello)]), store=store, pepper=PEPPER, policies=[quotas]
        )
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://testserver"
            ) as client:
                headers = {"X-API-Key": record["key"]}
                return [(await client.get("/", headers=headers)).status_code for _ in range(3)]
        finally:
            await quotas.aclose()
            await store.aclose()

    assert asyncio.run(serve_three_requests()) == [200, 200, 200]
    shown = runner.invoke(main, ["keys", "usage", record["key_id"], "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    usage = json.loads(shown.output)
    assert usage["quota"] == "5/day"
    assert (usage["quota_usage"]["used"], usage["quota_usage"]["remaining"]) == (3, 2)
    text = runner.invoke(main, ["keys", "usage", record["key_id"]], env=env).output
    assert "quota:     5/day" in text
    assert "used:      3 this period, 2 left; resets" in text
