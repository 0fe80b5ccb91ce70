from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import apiguard.keys
from apiguard import APIKeyMiddleware, CacheOptions, ConfigurationError
from apiguard.cli import main, parse_duration
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
        "revoked_at", "last_used_at", "metadata",
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


def test_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("keys", "list", "--store", f"sqlite:///{tmp_path}/no/such/dir.db", ok=False)
    assert result.exit_code == 1
    assert "key store unavailable" in result.output


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
        (f"postgresql://app:{PASSWORD}@db.example/keys", "postgresql://app:***@db.example/keys"),
        (f"redis://:{PASSWORD}@cache.example", "redis://:***@cache.example"),
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


@pytest.mark.parametrize("text", ["", "d", "1.5h", "-1d", "10y", "1000000d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_version_names_the_installed_distribution() -> None:
    """`apiguard --version` reads the version of the `apiguard-asgi` distribution."""
    assert cli("--version").output.strip() == f"apiguard, version {apiguard.__version__}"
