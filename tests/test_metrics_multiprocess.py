"""Prometheus multiprocess mode: two uvicorn worker processes, one sum of their counts.

Each worker is a separate uvicorn process on a port of its own (as in
tests/test_push.py), so that the test decides which worker answers each request;
both write their metrics to one `PROMETHEUS_MULTIPROC_DIR`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from apiguard.keys import KeyHasher, KeyManager, open_store

from .conftest import PEPPER
from .processes import UvicornProcess


@pytest.fixture
def key_and_store(tmp_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path}/keys.db"

    async def create() -> str:
        store = open_store(url)
        try:
            return (await KeyManager(store, KeyHasher(PEPPER)).create("ci")).key
        finally:
            await store.aclose()

    return anyio.run(create), url


@pytest.fixture
def workers(key_and_store: tuple[str, str], tmp_path: Path) -> Iterator[list[UvicornProcess]]:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        "APIGUARD_TEST_STORE": key_and_store[1],
        "APIGUARD_PEPPER": PEPPER,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    started = [
        UvicornProcess("tests.metrics_app:app", env, tmp_path / f"worker-{n}.log") for n in range(2)
    ]
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


async def wait_ready(workers: list[UvicornProcess]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for worker in workers:
            await worker.wait_until(client, "/metrics", lambda answer: True)


def values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for each in family.samples:
            if each.name == name:
                found[tuple(sorted(each.labels.items()))] = each.value
    return found


def test_two_workers_counts_add_up(
    workers: list[UvicornProcess], key_and_store: tuple[str, str], tmp_path: Path
) -> None:
    """Each worker counts its own decisions; /metrics on either shows the sum."""
    key, _ = key_and_store
    one, two = workers
    anyio.run(wait_ready, workers)
    with httpx.Client(timeout=10) as client:
        pids = set()
        for worker, allowed, refused in ((one, 3, 2), (two, 4, 1)):
            for _ in range(allowed):
                answer = client.get(worker.url, headers={"X-API-Key": key})
                assert answer.status_code == 200
                pids.add(answer.text)
            for _ in range(refused):
                assert client.get(worker.url).status_code == 401
        assert len(pids) == 2  # two processes answered
        scraped = client.get(f"{one.url}/metrics").text

    decisions = values(scraped, "apiguard_decisions_total")
    assert decisions[(("outcome", "allowed"), ("reason", ""))] == 7
    assert decisions[(("outcome", "refused"), ("reason", "missing"))] == 3
    # One cache miss and one store read per worker; the other allowed requests hit.
    assert values(scraped, "apiguard_backend_calls_total")[(("backend", "store"),)] == 2
    assert values(scraped, "apiguard_cache_total")[(("result", "hit"),)] == 5

    # The same sums, read from the directory by this process's own collector.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
        registry, path=str(tmp_path / "metrics")
    )
    labels = {"outcome": "allowed", "reason": ""}
    assert registry.get_sample_value("apiguard_decisions_total", labels) == 7
