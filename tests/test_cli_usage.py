"""`apiguard keys usage`, and the request counts in `keys list` and `keys show`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from click.testing import CliRunner

import apiguard.keys
from apiguard._usage_report import MAX_BAR, DailyUsage, render_chart
from apiguard.cli import main
from apiguard.keys import MemoryKeyStore, UsageBatch, open_store, register_scheme
from apiguard.keys.usage import bucket_start
from apiguard.testing import make_record

from .test_cli import cli, create, store_url  # noqa: F401 - the fixture

TODAY = bucket_start(datetime.now(timezone.utc), "day")


def add_usage(url: str, key_id: str, per_day: dict[int, int]) -> None:
    """Add `per_day[n]` requests `n` days ago (an hour after midnight UTC)."""

    async def write() -> None:
        store = open_store(url)
        hours = {TODAY - timedelta(days=n) + timedelta(hours=1): c for n, c in per_day.items()}
        await store.add_usage(UsageBatch(hours={key_id: hours}, last_used={}))  # type: ignore[attr-defined]
        await store.aclose()

    asyncio.run(write())


def test_list_and_show_print_requests_today_and_in_30_days(store_url: str) -> None:  # noqa: F811
    used, idle = create("--name", "used"), create("--name", "idle")
    add_usage(store_url, used["key_id"], {0: 7, 1: 5, 29: 3, 30: 1000})  # day 30 is out
    listing = cli("keys", "list").output.splitlines()
    assert listing[0].split()[-4:] == ["TODAY", "30", "DAYS", "STATUS"]
    row = next(line for line in listing if used["key_id"] in line).split()
    assert row[-3:] == ["7", "15", "active"]
    assert next(line for line in listing if idle["key_id"] in line).split()[-3:] == [
        "0", "0", "active",
    ]  # fmt: skip
    records = {r["name"]: r for r in json.loads(cli("keys", "list", "--json").output)}
    assert (records["used"]["requests_today"], records["used"]["requests_30_days"]) == (7, 15)
    shown = cli("keys", "show", used["key_id"]).output
    assert "requests:  7 today (UTC), 15 in the last 30 days" in shown
    as_json = json.loads(cli("keys", "show", used["key_id"], "--json").output)
    assert as_json["requests_today"] == 7
    assert as_json["requests_30_days"] == 15


def test_usage_draws_a_bar_per_day(store_url: str) -> None:  # noqa: F811
    """One line per day, oldest first: date, a `#` bar scaled to the busiest day, count."""
    key = create("--name", "alice")
    add_usage(store_url, key["key_id"], {0: 3, 2: 12_000, 3: 1})
    output = cli("keys", "usage", key["key_id"], "--days", "5").output.splitlines()
    assert output[0] == f"{key['key_id']} (alice): 12,004 requests in the last 5 days (UTC)"
    chart = output[2:]
    days = [(TODAY - timedelta(days=n)).date().isoformat() for n in range(4, -1, -1)]
    assert [line.split()[0] for line in chart] == days
    assert [line.split()[-1] for line in chart] == ["0", "1", "12,000", "0", "3"]
    bars = [line[len("2026-01-01  ") :].split("  ")[0].strip() for line in chart]
    assert bars == ["", "#", "#" * MAX_BAR, "", "#"]  # any request shows; none is wider
    assert all(set(line) <= set("0123456789-#, ") for line in chart)  # plain text
    assert len({len(line) for line in chart}) == 1  # counts right-aligned


def test_usage_says_one_request_in_one_day(store_url: str) -> None:  # noqa: F811
    key = create("--name", "alice")
    add_usage(store_url, key["key_id"], {0: 1})
    output = cli("keys", "usage", key["key_id"], "--days", "1").output.splitlines()
    assert output[0] == f"{key['key_id']} (alice): 1 request in the last 1 day (UTC)"


def test_usage_json_lists_every_day(store_url: str) -> None:  # noqa: F811
    key = create("--name", "alice")
    add_usage(store_url, key["key_id"], {1: 4})
    got = json.loads(cli("keys", "usage", key["key_id"], "--days", "3", "--json").output)
    days = [(TODAY - timedelta(days=n)).date().isoformat() for n in (2, 1, 0)]
    assert got == {
        "key_id": key["key_id"],
        "name": "alice",
        "granularity": "day",
        "first_day": days[0],
        "last_day": days[2],
        "total": 4,
        "counts": [
            {"date": days[0], "requests": 0},
            {"date": days[1], "requests": 4},
            {"date": days[2], "requests": 0},
        ],
    }


@pytest.mark.parametrize("days", ["0", "401", "x"])
def test_usage_days_are_bounded(store_url: str, days: str) -> None:  # noqa: F811
    result = CliRunner().invoke(main, ["keys", "usage", "K" * 12, "--days", days])
    assert result.exit_code == 2
    assert "--days" in result.output


def test_usage_of_an_unknown_key(store_url: str) -> None:  # noqa: F811
    result = cli("keys", "usage", "unknown00000", ok=False)
    assert result.exit_code == 1
    assert "no key with id 'unknown00000'" in result.output


class NoCounts:
    """A store from before request counts: no `add_usage` or `usage`."""

    def __init__(self) -> None:
        self.inner = MemoryKeyStore()
        asyncio.run(self.inner.add(make_record()))

    def __getattr__(self, name: str) -> Any:
        if name in ("add_usage", "usage"):
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.fixture
def old_store() -> Iterator[str]:
    store = NoCounts()
    register_scheme("nocounts", lambda url: store)
    yield "nocounts://"
    del apiguard.keys._SCHEMES["nocounts"]


def test_a_store_without_counts(old_store: str) -> None:
    """`usage` says the store keeps no counts; `list` and `show` print `-` / null."""
    result = cli("keys", "usage", "K" * 12, "--store", old_store, ok=False)
    assert result.exit_code == 1
    assert "the store nocounts:// keeps no request counts" in result.output
    listing = cli("keys", "list", "--store", old_store).output.splitlines()
    assert listing[1].split()[-3:] == ["-", "-", "active"]
    shown = json.loads(cli("keys", "show", "K" * 12, "--store", old_store, "--json").output)
    assert (shown["requests_today"], shown["requests_30_days"]) == (None, None)
    assert "requests:" not in cli("keys", "show", "K" * 12, "--store", old_store).output


def test_chart_of_an_idle_key() -> None:
    """No requests at all: no bars, zeros, no division by zero."""
    usage = DailyUsage([(date(2026, 1, 1), 0), (date(2026, 1, 2), 0)])
    assert [line.split() for line in render_chart(usage)] == [
        ["2026-01-01", "0"],
        ["2026-01-02", "0"],
    ]
