"""`apiguard keys copy`: key records from one store to another, on real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

import apiguard.keys
from apiguard import InvalidCredentials, KeyRecord
from apiguard.cli import main
from apiguard.exceptions import ConfigurationError, KeyStateError
from apiguard.keys import KeyHasher, KeyVerifier, MemoryKeyStore, open_store, register_scheme
from apiguard.keys._copy import CopyOutcome, compare_records, copy_keys
from apiguard.testing import make_record
from apiguard.types import KeyStore

from .conftest import PEPPER

T = TypeVar("T")


def cli(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(
        main, list(args), catch_exceptions=False, env={"APIGUARD_PEPPER": PEPPER}
    )
    assert result.exit_code == code, result.output
    return result


def create(url: str, *args: str) -> dict[str, Any]:
    return dict(json.loads(cli("keys", "create", "--store", url, "--json", *args).output))


def listing(url: str) -> list[dict[str, Any]]:
    return list(json.loads(cli("keys", "list", "--store", url, "--json").output))


def copy(source: str, target: str, *args: str, code: int = 0) -> dict[str, Any]:
    result = cli("keys", "copy", "--from", source, "--to", target, "--json", *args, code=code)
    return dict(json.loads(result.stdout))


def in_store(url: str, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `action` on a store of its own, as another process would."""

    async def go() -> T:
        store = open_store(url)
        try:
            return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(go())


def verifies(url: str, key: str) -> bool:
    """Whether `key` authenticates against the store at `url`, with the same pepper."""

    async def check(store: KeyStore) -> bool:
        try:
            await KeyVerifier(store, KeyHasher(PEPPER)).verify(key.encode())
        except InvalidCredentials:
            return False
        return True

    return in_store(url, check)


def password_of(url: str) -> str:
    return url.split("@")[0].rsplit(":", 1)[1]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/keys.db"


ROUTES = [
    pytest.param("sqlite_url", "postgres_url", marks=pytest.mark.postgres, id="sqlite-postgres"),
    pytest.param("sqlite_url", "redis_url", marks=pytest.mark.redis, id="sqlite-redis"),
    pytest.param("redis_url", "sqlite_url", marks=pytest.mark.redis, id="redis-sqlite"),
    pytest.param(
        "postgres_url",
        "redis_url",
        marks=[pytest.mark.postgres, pytest.mark.redis],
        id="postgres-redis",
    ),
]


@pytest.mark.parametrize(("source_fixture", "target_fixture"), ROUTES)
def test_copy_between_real_stores(
    source_fixture: str, target_fixture: str, request: pytest.FixtureRequest
) -> None:
    """Every record arrives as it was, keys verify there, and copying again changes nothing."""
    source: str = request.getfixturevalue(source_fixture)
    target: str = request.getfixturevalue(target_fixture)
    active = create(source, "--name", "billing", "--scope", "items:read", "--meta", "team=pay")
    expiring = create(source, "--name", "billing", "--scope", "a", "--scope", "b", "--expires-in", "90d")  # fmt: skip
    revoked = create(source, "--name", "ops")
    cli("keys", "revoke", "--store", source, revoked["key_id"])
    used_at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    in_store(source, lambda store: store.record_usage(active["key_id"], at=used_at))

    result = cli("keys", "copy", "--from", source, "--to", target)
    for password in {password_of(url) for url in (source, target) if "@" in url}:
        assert password not in result.output
    assert "copied:    3" in result.output
    assert "conflicts: 0" in result.output
    assert listing(target) == listing(source)
    assert listing(target)[0]["last_used_at"] == used_at.isoformat()
    hashes = in_store(target, lambda store: store.list())
    assert {r.key_id: r.secret_hash for r in hashes} == {
        r.key_id: r.secret_hash for r in in_store(source, lambda store: store.list())
    }

    assert verifies(target, active["key"])
    assert verifies(target, expiring["key"])
    assert not verifies(target, revoked["key"])

    again = copy(source, target)
    assert (again["copied"], again["updated"], again["skipped"], again["conflicts"]) == (0, 0, 3, 0)
    assert again["records"] == []
    assert listing(target) == listing(source)


@pytest.mark.postgres
def test_rerun_brings_revocations_and_last_use_forward(sqlite_url: str, postgres_url: str) -> None:
    """Revoking or using a key in the source after a copy is carried over by the next one."""
    first = create(sqlite_url, "--name", "a")
    second = create(sqlite_url, "--name", "b")
    copy(sqlite_url, postgres_url)
    cli("keys", "revoke", "--store", sqlite_url, first["key_id"])
    used_at = datetime.now(timezone.utc)
    in_store(sqlite_url, lambda store: store.record_usage(second["key_id"], at=used_at))
    third = create(sqlite_url, "--name", "c")

    planned = cli("keys", "copy", "--from", sqlite_url, "--to", postgres_url, "--dry-run")
    assert f"update     {first['key_id']}  brings forward: revoked_at" in planned.output
    assert f"update     {second['key_id']}  brings forward: last_used_at" in planned.output
    assert verifies(postgres_url, first["key"])

    report = copy(sqlite_url, postgres_url)
    assert (report["copied"], report["updated"], report["skipped"]) == (1, 2, 0)
    assert report["records"] == [
        {"key_id": first["key_id"], "action": "update", "fields": ["revoked_at"]},
        {"key_id": second["key_id"], "action": "update", "fields": ["last_used_at"]},
        {"key_id": third["key_id"], "action": "copy", "fields": []},
    ]
    assert listing(postgres_url) == listing(sqlite_url)
    assert not verifies(postgres_url, first["key"])
    assert verifies(postgres_url, third["key"])


def test_conflicts_are_reported_and_left_alone(sqlite_url: str, tmp_path: Path) -> None:
    """A record that differs in the destination stays as it is; the command exits with 1."""
    target = f"sqlite:///{tmp_path}/target.db"
    same = create(sqlite_url, "--name", "same")
    changed = create(sqlite_url, "--name", "changed", "--scope", "a")
    copy(sqlite_url, target)
    records = {r.key_id: r for r in in_store(sqlite_url, lambda store: store.list())}
    # The destination's version of the key is changed behind the copy's back.
    other_hash = KeyHasher(PEPPER).hash("another-secret")
    in_store(target, lambda store: store.update_hash(changed["key_id"], other_hash))
    before = listing(target)

    result = cli("keys", "copy", "--from", sqlite_url, "--to", target, code=1)
    assert f"conflict   {changed['key_id']}  differs in: secret_hash" in result.stdout
    assert "skipped:   1" in result.stdout
    assert "1 key(s) differ in the destination" in result.stderr
    assert other_hash not in result.output
    assert records[changed["key_id"]].secret_hash not in result.output

    report = copy(sqlite_url, target, code=1)
    assert report["conflicts"] == 1
    assert report["records"] == [
        {"key_id": changed["key_id"], "action": "conflict", "fields": ["secret_hash"]}
    ]
    assert listing(target) == before
    assert verifies(target, same["key"])
    assert not verifies(target, changed["key"])


@pytest.mark.redis
def test_dry_run_writes_nothing(sqlite_url: str, redis_url: str) -> None:
    """`--dry-run` says what a copy would do and leaves the destination as it was."""
    create(sqlite_url, "--name", "a")
    create(sqlite_url, "--name", "b")
    report = copy(sqlite_url, redis_url, "--dry-run")
    assert report["dry_run"] is True
    assert (report["copied"], report["skipped"]) == (2, 0)
    assert listing(redis_url) == []
    text = cli("keys", "copy", "--from", sqlite_url, "--to", redis_url, "--dry-run").output
    assert "nothing was written" in text
    assert "copied:    2" in text
    assert listing(redis_url) == []


@pytest.mark.postgres
def test_store_passwords_never_shown(sqlite_url: str, postgres_url: str) -> None:
    """Both URLs are shown without their passwords, in reports and in errors."""
    create(sqlite_url, "--name", "a")
    password = password_of(postgres_url)
    report = copy(sqlite_url, postgres_url)
    assert report["to"] == postgres_url.replace(password, "***")
    assert password not in json.dumps(report)
    wrong = postgres_url.replace(password, "Wr0ng-Passw0rd")
    for source, target in ((sqlite_url, wrong), (wrong, sqlite_url)):
        refused = cli("keys", "copy", "--from", source, "--to", target, code=1)
        assert "key store unavailable" in refused.output
        assert "Wr0ng-Passw0rd" not in refused.output


@pytest.fixture
def leaky_scheme() -> Iterator[None]:
    """`leaky://` fails with its URL and password in the message."""

    def leaky(url: str) -> KeyStore:
        raise ConfigurationError(f"cannot log in to {url} with password 's3cret-Pa55'")

    register_scheme("leaky", leaky)
    yield
    del apiguard.keys._SCHEMES["leaky"]


@pytest.mark.parametrize("side", ["--from", "--to"])
def test_a_store_quoting_its_password_is_shown_without_it(
    sqlite_url: str, leaky_scheme: None, side: str
) -> None:
    leaky = "leaky://app:s3cret-Pa55@db.example/keys"
    urls = {"--from": sqlite_url, "--to": sqlite_url, side: leaky}
    result = cli("keys", "copy", "--from", urls["--from"], "--to", urls["--to"], code=1)
    assert "leaky://app:***@db.example/keys" in result.output
    assert "s3cret-Pa55" not in result.output


def test_an_empty_source_is_an_error_not_a_silent_success(tmp_path: Path) -> None:
    """A mistyped SQLite path opens a new, empty database: the copy says so and fails."""
    result = cli(
        "keys",
        "copy",
        "--from",
        f"sqlite:///{tmp_path}/nothere.db",
        "--to",
        f"sqlite:///{tmp_path}/copy.db",
        code=1,
    )
    assert "holds no keys" in result.output


def test_same_store_is_refused(sqlite_url: str) -> None:
    result = cli("keys", "copy", "--from", sqlite_url, "--to", sqlite_url, code=2)
    assert "same store" in result.output


# --- what a copy does with one record ---------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
BASE = make_record(
    "KEYID0000001", name="billing", scopes=frozenset({"a"}), metadata=MappingProxyType({"t": 1})
)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (None, CopyOutcome(BASE.key_id, "copy")),
        (BASE, CopyOutcome(BASE.key_id, "skip")),
        (replace(BASE, metadata={"t": 1}), CopyOutcome(BASE.key_id, "skip")),
        (replace(BASE, name="other"), CopyOutcome(BASE.key_id, "conflict", ("name",))),
        (
            replace(BASE, secret_hash="x", scopes=frozenset()),
            CopyOutcome(BASE.key_id, "conflict", ("scopes", "secret_hash")),
        ),
        (
            replace(BASE, metadata={}, created_at=T0),
            CopyOutcome(BASE.key_id, "conflict", ("created_at", "metadata")),
        ),
        (replace(BASE, expires_at=T0), CopyOutcome(BASE.key_id, "conflict", ("expires_at",))),
        (replace(BASE, revoked_at=T0), CopyOutcome(BASE.key_id, "conflict", ("revoked_at",))),
        (replace(BASE, last_used_at=T0), CopyOutcome(BASE.key_id, "skip")),
        (
            replace(BASE, rate_limit="5/second", quota="10/day"),
            CopyOutcome(BASE.key_id, "conflict", ("quota", "rate_limit")),
        ),
    ],
    ids=[
        "missing",
        "same",
        "metadata-as-dict",
        "name",
        "hash-and-scopes",
        "created-and-metadata",
        "expiry",
        "revoked-only-there",
        "used-only-there",
        "limits",
    ],
)
def test_compare_records(target: KeyRecord | None, expected: CopyOutcome) -> None:
    assert compare_records(BASE, target) == expected


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        (replace(BASE, revoked_at=T0), BASE, ("revoked_at",)),
        (replace(BASE, last_used_at=T0), BASE, ("last_used_at",)),
        (
            replace(BASE, last_used_at=T0 + timedelta(1)),
            replace(BASE, last_used_at=T0),
            ("last_used_at",),
        ),
        (replace(BASE, revoked_at=T0, last_used_at=T0), BASE, ("revoked_at", "last_used_at")),
    ],
    ids=["revoked", "used", "used-later", "both"],
)
def test_compare_records_brings_one_way_changes_forward(
    source: KeyRecord, target: KeyRecord, expected: tuple[str, ...]
) -> None:
    assert compare_records(source, target) == CopyOutcome(BASE.key_id, "update", expected)


def test_revoked_at_other_times_is_a_conflict() -> None:
    source = replace(BASE, revoked_at=T0)
    target = replace(BASE, revoked_at=T0 + timedelta(seconds=1))
    assert compare_records(source, target) == CopyOutcome(BASE.key_id, "conflict", ("revoked_at",))


class _Hiding(MemoryKeyStore):
    """A store whose `list()` misses records added since by another process."""

    async def list(self, *, name: str | None = None) -> list[KeyRecord]:
        return []


class _Vanishing(_Hiding):
    """A store that refuses a key id and then has no record of it: it was removed meanwhile."""

    async def add(self, record: KeyRecord) -> None:
        raise KeyStateError(f"a key with id {record.key_id!r} already exists")


@pytest.mark.anyio
async def test_records_added_meanwhile_are_compared_not_overwritten() -> None:
    """A key id taken after the destination was listed is compared with what is there."""
    source, target = MemoryKeyStore(), _Hiding()
    same = make_record("KEYID0000001", name="same")
    revoked = make_record("KEYID0000002", name="revoked")
    differing = make_record("KEYID0000003", name="differing")
    for record in (same, revoked, differing):
        await target.add(record)
    for record in (same, replace(revoked, revoked_at=T0), replace(differing, name="x")):
        await source.add(record)
    outcomes = await copy_keys(source, target)
    assert [o.action for o in outcomes] == ["skip", "update", "conflict"]
    assert (await target.get(revoked.key_id)) == replace(revoked, revoked_at=T0)
    assert (await target.get(differing.key_id)) == differing

    with pytest.raises(KeyStateError):
        await copy_keys(source, _Vanishing())


# --- the deployment guide ---------------------------------------------------------

GUIDE = Path(__file__).parent.parent / "docs" / "deployment.md"


def test_the_deployment_guide_shows_the_command_as_it_is(sqlite_url: str, tmp_path: Path) -> None:
    """The guide's `keys copy` lines use real options, and its sample output real labels."""
    command = main.commands["keys"].commands["copy"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in param.opts}
    lines = GUIDE.read_text().splitlines()
    shown = [line for line in lines if line.startswith("$ apiguard keys copy")]
    assert shown
    for line in shown:
        assert {word for word in line.split() if word.startswith("--")} <= options
    create(sqlite_url, "--name", "a")
    output = cli("keys", "copy", "--from", sqlite_url, "--to", f"sqlite:///{tmp_path}/b.db")
    labels = [line.split(":")[0] for line in output.stdout.splitlines()]
    start = lines.index(shown[-1]) + 1
    assert [line.split(":")[0] for line in lines[start : start + len(labels)]] == labels
