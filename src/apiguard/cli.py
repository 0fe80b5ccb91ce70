"""`apiguard keys ...` manages API keys from a shell, and shows their request counts
(`keys usage`); `apiguard token inspect` and `apiguard keys check` explain why a
credential is accepted or refused.

The store comes from `--store`, else `APIGUARD_STORE`, else `sqlite:///apiguard-keys.db`.
Commands that hash a secret (create, rotate) need `APIGUARD_PEPPER`, the pepper the
server uses; it is never taken on the command line, where other users could see it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from apiguard._cache import CacheOptions
from apiguard._usage_report import SUMMARY_DAYS, DailyUsage, daily_usage, render_chart
from apiguard.diagnostics import Report, explain_key, explain_token
from apiguard.exceptions import ApiGuardError, BackendUnavailableError
from apiguard.keys import KeyManager, MemoryKeyStore, open_store
from apiguard.keys._copy import copy_keys
from apiguard.keys._url import hide_password, redact_url
from apiguard.keys.format import DEFAULT_PREFIX
from apiguard.keys.hashing import MIN_PEPPER_LENGTH, PEPPER_ENV, KeyHasher
from apiguard.keys.manager import IssuedKey
from apiguard.keys.record import KeyRecord
from apiguard.tokens import (
    DEFAULT_SCOPE_CLAIMS,
    CompositeIntrospector,
    JWTIntrospector,
    RemoteIntrospector,
)
from apiguard.types import KeyStore, TokenIntrospector

__all__ = ["main"]

DEFAULT_STORE = "sqlite:///apiguard-keys.db"
STORE_ENV = "APIGUARD_STORE"
LIMITS_ENV = "APIGUARD_LIMITS"
CLIENT_SECRET_ENV = "APIGUARD_CLIENT_SECRET"  # noqa: S105 - the variable's name
# How long a server in another process may still accept a revoked key: its cache TTL.
CACHE_TTL = CacheOptions().ttl
T = TypeVar("T")

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Beyond a century a key might as well not expire (leave out --expires-in); the bound
# also keeps every expiry inside the years a datetime can hold.
MAX_DURATION = timedelta(days=36500)
_SPELLED = (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def parse_duration(text: str) -> timedelta:
    """`90d`, `24h`, `30m`, `45s`, `2w` (or `0` for none) as a `timedelta`."""
    if text == "0":
        return timedelta(0)
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90d, 24h, 30m, 45s or 2w")
    number, unit = int(match[1]), _UNITS[match[2]]
    if number > MAX_DURATION / timedelta(**{unit: 1}):
        raise ValueError(f"{text!r} is too large: at most {MAX_DURATION.days}d (100 years)")
    return timedelta(**{unit: number})


def format_duration(value: timedelta) -> str:
    """A duration as people write it: `1 day`, `2 hours 30 minutes`, `2 weeks`, `0 seconds`."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0 seconds"
    parts = []
    for name, size in _SPELLED:
        if name == "week" and seconds % size:  # "10 days", not "1 week 3 days"
            continue
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return " ".join(parts)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def _run(
    store_url: str, action: Callable[[KeyStore], Awaitable[T]], *, writes_keys: bool = False
) -> T:
    async def go() -> T:
        store = open_store(store_url)
        try:
            if writes_keys and isinstance(store, MemoryKeyStore):
                raise click.ClickException(
                    f"{redact_url(store_url)} keeps keys only while this command runs: the"
                    " key would be gone as soon as it is printed. Use a store that persists,"
                    f" such as {DEFAULT_STORE}"
                )
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(go())
    except BackendUnavailableError as exc:
        message = _unavailable(store_url, exc)
    except ApiGuardError as exc:
        message = str(exc)
    # Any store's message, a third party's too, is shown without the URL's password.
    raise click.ClickException(hide_password(message, store_url))


def _unavailable(store_url: str, exc: BackendUnavailableError) -> str:
    """Which store could not be used, and the driver's reason (not only its error's name)."""
    cause = exc.__cause__
    driver = getattr(cause, "orig", None) or cause  # SQLAlchemy wraps the driver's error
    why = f"{type(driver).__name__}: {driver}" if driver is not None else str(exc)
    return f"key store {redact_url(store_url)} unavailable: {why}{_sqlite_hint(store_url)}"


def _sqlite_hint(store_url: str) -> str:
    """What is wrong with a SQLite file's place on disk, as far as the file system tells."""
    scheme, _, rest = store_url.partition(":///")
    if scheme not in ("sqlite", "sqlite+aiosqlite") or not rest or rest.startswith("file:"):
        return ""
    file = Path(rest.partition("?")[0])
    directory = file.parent
    if not directory.is_dir():
        return f" (the directory {directory} does not exist)"
    if file.exists() and not os.access(file, os.W_OK):
        return f" (the file {file} is read-only)"
    if not os.access(directory, os.W_OK):
        what = "the file" if not file.exists() else "its journal beside the file"
        return f" (the directory {directory} is not writable; SQLite creates {what} there)"
    return ""


def _hasher() -> KeyHasher:
    """The hasher for new keys, from the pepper the server uses; checked before any write."""
    pepper = os.environ.get(PEPPER_ENV)
    if not pepper:
        raise click.ClickException(
            f"{PEPPER_ENV} is not set. New keys are hashed with the pepper your app uses:"
            f" set {PEPPER_ENV} to the app's value (at least {MIN_PEPPER_LENGTH} bytes);"
            " `apiguard keys init` suggests one for a new store"
        )
    if len(pepper.encode()) < MIN_PEPPER_LENGTH:
        raise click.ClickException(
            f"{PEPPER_ENV} is too short: a pepper has at least {MIN_PEPPER_LENGTH} bytes"
        )
    return KeyHasher(pepper)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _record_json(record: KeyRecord) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "key_id": record.key_id,
        "name": record.name,
        "scopes": sorted(record.scopes),
        "status": record.status(),
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "last_used_at": iso(record.last_used_at),
        "metadata": dict(record.metadata),
        "rate_limit": record.rate_limit,
        "quota": record.quota,
    }


def _usage_json(usage: DailyUsage | None) -> dict[str, Any]:
    if usage is None:  # a store that keeps no request counts
        return {"requests_today": None, f"requests_{SUMMARY_DAYS}_days": None}
    return {"requests_today": usage.today, f"requests_{SUMMARY_DAYS}_days": usage.total}


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


async def _with_usage(
    store: KeyStore, records: list[KeyRecord]
) -> list[tuple[KeyRecord, DailyUsage | None]]:
    """Each record with its requests of the last `SUMMARY_DAYS` days: one query a key."""
    return [(r, await daily_usage(store, r.key_id, SUMMARY_DAYS)) for r in records]


def _echo_record(record: KeyRecord, usage: DailyUsage | None = None) -> None:
    for label, value in (
        ("id", record.key_id),
        ("name", record.name),
        ("scopes", " ".join(sorted(record.scopes)) or "-"),
        ("status", record.status()),
        ("created", _when(record.created_at)),
        ("expires", _when(record.expires_at)),
        ("revoked", _when(record.revoked_at)),
        ("last used", _when(record.last_used_at)),
        ("metadata", json.dumps(dict(record.metadata)) if record.metadata else "-"),
        ("ratelimit", record.rate_limit or "-"),
        ("quota", record.quota or "-"),
    ):
        click.echo(f"{label + ':':<11}{value}")
    if usage is not None:
        click.echo(f"{'requests:':<11}{usage.today:,} today (UTC),"
                   f" {usage.total:,} in the last {SUMMARY_DAYS} days")  # fmt: skip


def _echo_issued(issued: IssuedKey, as_json: bool, note: str = "") -> None:
    if as_json:
        click.echo(json.dumps({"key": issued.key, **_record_json(issued.record)}))
        return
    _echo_record(issued.record)
    click.echo("")
    click.echo(f"key:       {issued.key}")
    click.echo("")
    click.echo("This is the only time the key is shown; store it somewhere safe now." + note)


def _manager(store: KeyStore, hasher: KeyHasher, prefix: str = DEFAULT_PREFIX) -> KeyManager:
    return KeyManager(store, hasher, prefix=prefix)


store_option = click.option(
    "--store",
    "store_url",
    envvar=STORE_ENV,
    default=DEFAULT_STORE,
    show_default=True,
    help=f"Key store URL (or set {STORE_ENV}).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group()
@click.version_option(package_name="apiguard-asgi", prog_name="apiguard")
def main() -> None:
    """apiguard: API keys and OAuth 2.0 bearer tokens for ASGI apps."""


@main.group()
def keys() -> None:
    """Create, list, show, update, revoke and rotate API keys."""


@keys.command()
@store_option
@json_option
def init(store_url: str, as_json: bool) -> None:
    """Create the key store's schema, and suggest a pepper if none is set."""
    _run(store_url, lambda store: store.list())
    if os.environ.get(PEPPER_ENV):
        _hasher()  # a pepper that is set must be usable: say so now, not at the first key
    pepper = None if os.environ.get(PEPPER_ENV) else secrets.token_urlsafe(32)
    if as_json:
        click.echo(json.dumps({"store": redact_url(store_url), "suggested_pepper": pepper}))
        return
    click.echo(f"Key store ready: {redact_url(store_url)}")
    if pepper is not None:
        click.echo(f"{PEPPER_ENV} is not set. Keep this pepper secret and give the same one")
        click.echo("to the CLI and to your app; keys hashed with it work only with it:")
        click.echo(f"  export {PEPPER_ENV}={pepper}")


@keys.command()
@store_option
@click.option("--name", required=True, help="The key's name or owner.")
@click.option("--scope", "scopes", multiple=True, help="A scope the key grants (repeatable).")
@click.option("--expires-in", callback=_duration, help="Lifetime, e.g. 90d (default: no expiry).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata (repeatable).")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Key prefix.")
@click.option("--rate-limit", help="The key's own rate limits, e.g. '100/minute; 5000/day'.")
@click.option("--quota", help="The key's request quota, e.g. '100000/month' or '1000/day'.")
@json_option
def create(
    store_url: str,
    name: str,
    scopes: tuple[str, ...],
    expires_in: timedelta | None,
    meta: tuple[str, ...],
    prefix: str,
    rate_limit: str | None,
    quota: str | None,
    as_json: bool,
) -> None:
    """Create a key and print it, this once."""
    metadata: dict[str, str] = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    hasher = _hasher()
    issued = _run(
        store_url,
        lambda store: _manager(store, hasher, prefix).create(
            name,
            scopes=scopes,
            expires_in=expires_in,
            metadata=metadata,
            rate_limit=rate_limit,
            quota=quota,
        ),
        writes_keys=True,
    )
    _echo_issued(issued, as_json)


@keys.command("list")
@store_option
@click.option("--name", help="Only the keys of this name or owner.")
@json_option
def list_(store_url: str, name: str | None, as_json: bool) -> None:
    """List keys (never their secrets), with their requests today and in 30 days (UTC)."""

    async def action(store: KeyStore) -> list[tuple[KeyRecord, DailyUsage | None]]:
        return await _with_usage(store, await store.list(name=name))

    records = _run(store_url, action)
    if as_json:
        click.echo(json.dumps([{**_record_json(r), **_usage_json(u)} for r, u in records]))
        return
    rows = [
        (
            r.key_id,
            r.name,
            " ".join(sorted(r.scopes)) or "-",
            _when(r.created_at),
            _when(r.expires_at),
            _when(r.last_used_at),
            _count(None if u is None else u.today),
            _count(None if u is None else u.total),
            r.status(),
        )
        for r, u in records
    ]
    header = (
        "ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "TODAY",
        f"{SUMMARY_DAYS} DAYS", "STATUS",
    )  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _limits_url(store_url: str, limits_url: str | None) -> str | None:
    """Where quota counters live: `--limits`, else a Redis key store's own server."""
    if limits_url:
        return limits_url
    if store_url.partition("://")[0] in ("redis", "rediss", "unix"):
        return store_url
    return None


async def _quota_usage(record: KeyRecord, limits_url: str | None) -> dict[str, Any] | None:
    if record.quota is None or limits_url is None:
        return None
    from apiguard.ratelimit import Quotas

    quotas = Quotas(storage=limits_url)
    try:
        usage = await quotas.usage(record.key_id, record.quota)
    finally:
        await quotas.aclose()
    assert usage is not None  # noqa: S101 - a quota was given
    return {
        "used": usage.used,
        "remaining": usage.remaining,
        "period_start": usage.period_start.isoformat(),
        "resets_at": usage.resets_at.isoformat(),
    }


limits_option = click.option(
    "--limits",
    "limits_url",
    envvar=LIMITS_ENV,
    help=f"Where the server counts quotas (or set {LIMITS_ENV}); a Redis key store's"
    " own server by default.",
)


def _key_with_usage(
    store_url: str, key_id: str, days: int, limits_url: str | None
) -> tuple[KeyRecord, DailyUsage | None, dict[str, Any] | None]:
    """A key's record, its daily request counts over `days`, and its quota use."""
    where = _limits_url(store_url, limits_url)

    async def action(
        store: KeyStore,
    ) -> tuple[KeyRecord, DailyUsage | None, dict[str, Any] | None]:
        record = await KeyManager(store).get(key_id)
        counts = await daily_usage(store, key_id, days)
        return record, counts, await _quota_usage(record, where)

    return _run(store_url, action)


@keys.command()
@store_option
@click.argument("key_id")
@limits_option
@json_option
def show(store_url: str, key_id: str, limits_url: str | None, as_json: bool) -> None:
    """Show one key's record, its requests today and in 30 days (UTC), and its quota
    used this period."""
    record, counts, quota = _key_with_usage(store_url, key_id, SUMMARY_DAYS, limits_url)
    if as_json:
        shown = {**_record_json(record), **_usage_json(counts)}
        if record.quota is not None:
            shown["quota_usage"] = quota
        click.echo(json.dumps(shown))
        return
    _echo_record(record, counts)
    _echo_quota(record, quota)


def _echo_quota(record: KeyRecord, quota: dict[str, Any] | None) -> None:
    if quota is not None:
        click.echo(
            f"{'used:':<11}{quota['used']} this period, {quota['remaining']} left;"
            f" resets {quota['resets_at']}"
        )
    elif record.quota is not None:
        click.echo(f"{'used:':<11}unknown: pass --limits with the server's limit storage URL")


_CLEAR = "none"


@keys.command()
@store_option
@click.argument("key_id")
@click.option(
    "--rate-limit",
    help=f"The key's own rate limits, e.g. '100/minute; 5000/day'; '{_CLEAR}' for the default.",
)
@click.option("--quota", help=f"The key's quota, e.g. '100000/month'; '{_CLEAR}' for the default.")
@json_option
def update(
    store_url: str, key_id: str, rate_limit: str | None, quota: str | None, as_json: bool
) -> None:
    """Change a key's rate limit or quota; servers apply it within their cache TTL."""
    if rate_limit is None and quota is None:
        raise click.UsageError("nothing to change: give --rate-limit or --quota")

    async def action(store: KeyStore) -> KeyRecord:
        manager = KeyManager(store)
        record = await manager.get(key_id)
        new_rate = record.rate_limit if rate_limit is None else rate_limit
        new_quota = record.quota if quota is None else quota
        return await manager.update_limits(
            key_id,
            rate_limit=None if new_rate == _CLEAR else new_rate,
            quota=None if new_quota == _CLEAR else new_quota,
        )

    record = _run(store_url, action)
    if as_json:
        click.echo(json.dumps(_record_json(record)))
    else:
        _echo_record(record)


MAX_USAGE_DAYS = 400  # the daily counts' default retention


@keys.command()
@store_option
@click.argument("key_id")
@click.option(
    "--days",
    type=click.IntRange(1, MAX_USAGE_DAYS),
    default=30,
    show_default=True,
    help="How many days, today (UTC) last.",
)
@limits_option
@json_option
def usage(store_url: str, key_id: str, days: int, limits_url: str | None, as_json: bool) -> None:
    """Show a key's requests per day (UTC) as a chart, and its quota used this period.

    Counted: requests the key authenticated that the middleware let through,
    written by each server every 10 s and when it stops.
    """
    record, counts, quota = _key_with_usage(store_url, key_id, days, limits_url)
    if counts is None:
        raise click.ClickException(
            f"the store {redact_url(store_url)} keeps no request counts: its class has no"
            " add_usage/usage methods (apiguard.types.UsageStore)"
        )
    if as_json:
        shown = {"key_id": record.key_id, "name": record.name, **counts.to_json()}
        if record.quota is not None:
            shown["quota"] = record.quota
            shown["quota_usage"] = quota
        click.echo(json.dumps(shown))
        return
    requests = "request" if counts.total == 1 else "requests"
    click.echo(f"{record.key_id} ({record.name}): {counts.total:,} {requests} in the last"
               f" {days} day{'' if days == 1 else 's'} (UTC)")  # fmt: skip
    if record.quota is not None:
        click.echo(f"{'quota:':<11}{record.quota}")
        _echo_quota(record, quota)
    click.echo("")
    for line in render_chart(counts):
        click.echo(line.rstrip())


@keys.command(
    help=f"""Revoke a key: the store refuses it from now on.

    A server in another process keeps accepting the key until its cached check
    expires: up to {CACHE_TTL:g} seconds with the default cache (`CacheOptions.ttl`).
    Revoking a key that is already revoked changes nothing and says so."""
)
@store_option
@click.argument("key_id")
@json_option
def revoke(store_url: str, key_id: str, as_json: bool) -> None:
    async def action(store: KeyStore) -> tuple[KeyRecord, bool]:
        manager = KeyManager(store)
        before = await manager.get(key_id)
        if before.revoked_at is not None:
            return before, True
        return await manager.revoke(key_id), False

    record, already = _run(store_url, action)
    if as_json:
        click.echo(json.dumps({**_record_json(record), "already_revoked": already}))
    elif already:
        click.echo(
            f"{record.key_id} ({record.name}) was already revoked at"
            f" {_when(record.revoked_at)}; nothing changed."
        )
    else:
        click.echo(
            f"Revoked {record.key_id} ({record.name}). Servers in other processes refuse it"
            f" within {CACHE_TTL:g} seconds (their cache TTL)."
        )


@keys.command()
@store_option
@click.argument("key_id")
@click.option(
    "--grace",
    callback=_duration,
    default="24h",
    show_default=True,
    help="How long the old key keeps working (0 retires it at once).",
)
@json_option
def rotate(store_url: str, key_id: str, grace: timedelta, as_json: bool) -> None:
    """Issue a new key for the same owner; the old one works until the grace period ends."""
    hasher = _hasher()

    async def action(store: KeyStore) -> tuple[IssuedKey, KeyRecord]:
        manager = _manager(store, hasher)
        issued = await manager.rotate(key_id, grace=grace)
        return issued, await manager.get(key_id)

    issued, old = _run(store_url, action, writes_keys=True)
    if as_json:
        click.echo(
            json.dumps(
                {"key": issued.key, **_record_json(issued.record), "replaces": _record_json(old)}
            )
        )
        return
    ends = old.expires_at or issued.record.created_at  # rotation always sets it
    left = ends - issued.record.created_at
    if left <= timedelta(0):
        note = f"\nThe old key {key_id} no longer works."
    else:
        note = (
            f"\nThe old key {key_id} keeps working for {format_duration(left)},"
            f" until {_when(ends)}."
        )
    _echo_issued(issued, as_json=False, note=note)


# --- keys copy -----------------------------------------------------------------

_DONE = {"copy": "copied", "update": "updated", "skip": "skipped", "conflict": "conflicts"}


def _run_copy(
    from_url: str, to_url: str, action: Callable[[KeyStore, KeyStore], Awaitable[T]]
) -> T:
    """`_run` with two stores: both closed after, neither URL's password in an error."""

    async def go() -> T:
        source = open_store(from_url)
        try:
            target = open_store(to_url)
            try:
                return await action(source, target)
            finally:
                await target.aclose()
        finally:
            await source.aclose()

    try:
        return asyncio.run(go())
    except ApiGuardError as exc:
        message = hide_password(hide_password(str(exc), from_url), to_url)
        raise click.ClickException(message) from None


@keys.command()
@click.option("--from", "from_url", required=True, metavar="URL", help="The store to copy from.")
@click.option("--to", "to_url", required=True, metavar="URL", help="The store to copy into.")
@click.option("--dry-run", is_flag=True, help="Say what would be copied; write nothing.")
@json_option
def copy(from_url: str, to_url: str, dry_run: bool, as_json: bool) -> None:
    """Copy every key record (hashes as stored) into another store; safe to re-run.

    Records already there are skipped; a revocation or a later last use missing
    there is applied; a record that differs otherwise is reported as a conflict,
    left as it is, and the command exits with status 1.
    """
    if from_url == to_url:
        raise click.UsageError("--from and --to name the same store")
    outcomes = _run_copy(
        from_url, to_url, lambda source, target: copy_keys(source, target, dry_run=dry_run)
    )
    if not outcomes:
        # A mistyped SQLite path opens a new, empty database: never a silent success.
        raise click.ClickException(
            f"the store {redact_url(from_url)} holds no keys: nothing to copy (is --from right?)"
        )
    counts = {done: 0 for done in _DONE.values()}
    for outcome in outcomes:
        counts[_DONE[outcome.action]] += 1
    noted = [outcome for outcome in outcomes if outcome.action in ("update", "conflict")]
    if as_json:
        summary: dict[str, Any] = {
            "from": redact_url(from_url),
            "to": redact_url(to_url),
            "dry_run": dry_run,
            **counts,
            "records": [
                {"key_id": o.key_id, "action": o.action, "fields": list(o.fields)}
                for o in outcomes
                if o.action != "skip"
            ],
        }
        click.echo(json.dumps(summary))
    else:
        click.echo(f"{'from:':<11}{redact_url(from_url)}")
        click.echo(f"{'to:':<11}{redact_url(to_url)}")
        if dry_run:
            click.echo(f"{'dry run:':<11}nothing was written; the counts say what a copy would do")
        for outcome in noted:
            how = "differs in" if outcome.action == "conflict" else "brings forward"
            click.echo(f"{outcome.action:<10} {outcome.key_id}  {how}: {' '.join(outcome.fields)}")
        for done, count in counts.items():
            click.echo(f"{done + ':':<11}{count}")
    if counts["conflicts"]:
        click.echo(
            f"{counts['conflicts']} key(s) differ in the destination and were left as they are.",
            err=True,
        )
        sys.exit(1)


def _secret_argument(value: str | None, what: str) -> str:
    """The credential to check: the argument, or the first line of stdin for `-` or none."""
    if value is None or value == "-":
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        raise click.UsageError(f"no {what}: pass it on stdin (safer than an argument) or as one")
    return value


def _echo_report(report: Report, as_json: bool) -> None:
    click.echo(json.dumps(report.as_dict()) if as_json else report.as_text())
    if not report.accepted:
        # 1: refused (401); 3: cannot tell, or the store/authorization server is down.
        sys.exit(1 if report.status == 401 else 3)


@keys.command()
@store_option
@click.argument("key", required=False)
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    default=(DEFAULT_PREFIX,),
    show_default=True,
    help="A key prefix the server accepts (repeatable).",
)
@json_option
def check(store_url: str, key: str | None, prefixes: tuple[str, ...], as_json: bool) -> None:
    """Explain whether KEY would be accepted, check by check; KEY from stdin by default.

    The secret is checked only with the server's pepper in APIGUARD_PEPPER. The key
    itself is never printed. Exit status: 0 accepted, 1 refused, 3 undecided or the
    store unavailable.
    """
    value = _secret_argument(key, "key")
    pepper = os.environ.get(PEPPER_ENV)
    hasher = KeyHasher(pepper) if pepper else None
    report = _run(
        store_url, lambda store: explain_key(value, store, hasher=hasher, prefixes=prefixes)
    )
    _echo_report(report, as_json)


@main.group()
def token() -> None:
    """Explain how bearer tokens are checked."""


@token.command()
@click.argument("token_value", metavar="[TOKEN]", required=False)
@click.option("--issuer", required=True, help="The trusted issuer (`iss`), as the app has it.")
@click.option(
    "--audience", "audiences", multiple=True, required=True, help="An accepted `aud` (repeatable)."
)
@click.option("--jwks-uri", help="The issuer's key set (default: from discovery).")
@click.option(
    "--algorithm", "algorithms", multiple=True, help="An allowed algorithm (default: asymmetric)."
)
@click.option("--accept-jwt-typ", is_flag=True, help="Also accept `typ: JWT` or none.")
@click.option("--scope-claim", "scope_claims", multiple=True, help="A claim scopes come from.")
@click.option("--leeway", type=float, default=30.0, show_default=True, help="Clock skew (s).")
@click.option(
    "--client-id",
    help="This API's client id, to introspect opaque tokens (RFC 7662); the secret"
    f" is read from {CLIENT_SECRET_ENV}.",
)
@click.option(
    "--introspection-endpoint", help="The introspection endpoint (default: from discovery)."
)
@json_option
def inspect(
    token_value: str | None,
    issuer: str,
    audiences: tuple[str, ...],
    jwks_uri: str | None,
    algorithms: tuple[str, ...],
    accept_jwt_typ: bool,
    scope_claims: tuple[str, ...],
    leeway: float,
    client_id: str | None,
    introspection_endpoint: str | None,
    as_json: bool,
) -> None:
    """Explain whether TOKEN would be accepted as Bearer, check by check.

    TOKEN is read from stdin by default (an argument is visible to other users of
    the machine). JWTs are validated against the issuer's keys; opaque tokens are
    introspected when --client-id is given. The token is never printed. Exit status:
    0 accepted, 1 refused, 3 the authorization server unavailable.
    """
    value = _secret_argument(token_value, "token")

    async def go() -> Report:
        claims = scope_claims or DEFAULT_SCOPE_CLAIMS
        options: dict[str, Any] = {"leeway": leeway, "accept_jwt_typ": accept_jwt_typ}
        if jwks_uri:
            options["jwks_uri"] = jwks_uri
        if algorithms:
            options["algorithms"] = algorithms
        introspector: TokenIntrospector = JWTIntrospector.from_issuer(
            issuer, audience=audiences, scope_claims=claims, **options
        )
        if client_id:
            if not os.environ.get(CLIENT_SECRET_ENV):
                raise click.UsageError(
                    f"--client-id needs the client's secret in {CLIENT_SECRET_ENV}"
                )
            remote = RemoteIntrospector(
                introspection_endpoint,
                issuer=issuer,
                client_id=client_id,
                client_secret=os.environ.get(CLIENT_SECRET_ENV),
                audience=audiences,
                leeway=leeway,
                scope_claims=claims,
            )
            introspector = CompositeIntrospector(jwt=introspector, remote=remote)
        try:
            return await explain_token(value, introspector)
        finally:
            await introspector.aclose()

    try:
        report = asyncio.run(go())
    except ApiGuardError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_report(report, as_json)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
