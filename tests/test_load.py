"""Load over a real server: every answer right, every cache bounded, one backend call
per credential at a time, and the event loop's lag recorded.

uvicorn (one worker process) serves tests/load_app.py: API keys from a SQLite store,
JWTs against a JWKS and opaque tokens against an introspection endpoint, both on a
loopback authorization server (`tests.fault_server`, in this process). The client
(`tests.load_client`) opens `CONNECTIONS` connections and writes `DEPTH` pipelined
requests on each before reading any answer: `CONNECTIONS * DEPTH` = 10,000 requests
are in flight together at the start, and as many as the client keeps writing after
that. HTTP/1.1 answers requests on one connection in order, so the server works on
at most one request per connection at a time; the rest wait in its socket buffers.

Credentials are revoked while the run goes on: API keys through the server's own
`KeyManager` (its cache forgets them before the revoke is answered), opaque tokens at
the authorization server (the server's cache trusts a grant for `TOKEN_TTL`). Each
answer is checked against what its credential deserved when the request was sent;
see `deserved()`. Nothing here is timed: the lag and throughput are printed (run
with `-s`) and written in docs/faults-and-load.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from apiguard.keys import KeyHasher, KeyManager, open_store
from apiguard.keys.format import format_key, generate_key, parse_key

from .fault_server import FaultyServer, faulty_server
from .load_client import Answer, get, pipelined, start_load_app
from .token_support import AUDIENCE, RSA_KEY_2, mint

pytestmark = pytest.mark.anyio

CONNECTIONS = 500
DEPTH = 20  # CONNECTIONS * DEPTH = 10,000 requests in flight at once
MAX_SIZE = 1000  # of each verification cache, in the server
TOKEN_TTL = 1.0  # seconds a token grant is trusted without asking again
SLACK = 1.0  # seconds for an introspection answer given before a revoke to arrive
PEPPER = "load-test-pepper-" + "0" * 32
REVOKE_AT = 0.1  # the share of answers in when the revocations are made


@dataclass(frozen=True)
class Sent:
    """One request: its kind, its credential header and the identity it should get."""

    kind: str
    header: tuple[str, str]
    identity: str | None  # None: 401


@dataclass
class Revocations:
    """When the revocations began (sent) and when they were in effect (acknowledged)."""

    keys_sent: float = math.inf
    keys_done: float = math.inf
    tokens_sent: float = math.inf
    tokens_done: float = math.inf


@pytest.fixture
def issuer() -> Iterator[FaultyServer]:
    with faulty_server() as state:
        yield state


def api_key(key: str) -> tuple[str, str]:
    return ("X-API-Key", key)


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def deserved(sent: Sent, answer: Answer, revoked: Revocations) -> set[int]:
    """The statuses `answer` may have. A revoked credential's window:

    - answered before the revocation began: it was valid, 200;
    - API key, sent after the server acknowledged the revoke: 401 (the revoke
      cleared the server's cache before it answered);
    - opaque token, sent more than `TOKEN_TTL` + `SLACK` after it was revoked at the
      authorization server: 401 (a grant is trusted `TOKEN_TTL` from when its
      answer arrived; `SLACK` bounds how long an answer given just before the
      revoke can take to arrive);
    - in between: either.
    """
    if sent.kind == "revoked_key":
        if answer.received_at < revoked.keys_sent:
            return {200}
        return {401} if answer.written_at > revoked.keys_done else {200, 401}
    if sent.kind == "revoked_opaque":
        if answer.received_at < revoked.tokens_sent:
            return {200}
        visible = revoked.tokens_done + TOKEN_TTL + SLACK
        return {401} if answer.written_at > visible else {200, 401}
    return {401} if sent.identity is None else {200}


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the SQLite store lives: in memory (tmpfs) where there is one, since a
    commit to disk costs ~15 ms and the test creates over a thousand keys."""
    shm = Path("/dev/shm")  # noqa: S108 - a private directory is made inside it
    if not shm.is_dir():  # pragma: no cover - Linux has one
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="apiguard-load-") as path:
        yield Path(path)


async def test_ten_thousand_concurrent_requests(
    issuer: FaultyServer, store_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(7)  # noqa: S311 - a reproducible mix, not a secret
    hasher = KeyHasher(PEPPER)
    store_url = f"sqlite:///{store_dir}/keys.db"
    store = open_store(store_url)
    manager = KeyManager(store, hasher)
    try:
        hot = [await manager.create(f"hot-{n}") for n in range(50)]
        cold = await asyncio.gather(*(manager.create(f"cold-{n}") for n in range(MAX_SIZE + 200)))
        expiring = [
            await manager.create(f"exp-{n}", expires_in=timedelta(seconds=1)) for n in range(5)
        ]
        to_revoke = [await manager.create(f"rev-{n}") for n in range(5)]
    finally:
        await store.aclose()

    def wrong_secret(key: str) -> str:  # the key's id, another well-formed secret
        parsed = parse_key(key)
        return format_key(parsed.prefix, parsed.key_id, generate_key().secret)

    def unknown_key() -> str:  # well formed, with an id no key has
        return generate_key().value

    opaque = {secrets.token_urlsafe(24): f"opaque-{n}" for n in range(100)}
    revocable = {secrets.token_urlsafe(24): f"revocable-{n}" for n in range(10)}
    for token, sub in (opaque | revocable).items():
        issuer.active[token] = {"active": True, "sub": sub, "aud": AUDIENCE}
    jwts = {mint(iss=issuer.issuer, sub=f"jwt-{n}", jti=str(n)): f"jwt-{n}" for n in range(200)}

    # The first phase: every kind of credential, revocations made as it runs.
    plan: list[Sent] = []
    plan += [Sent("api_key", api_key(k.key), k.record.key_id) for k in rng.choices(hot, k=3000)]
    plan += [
        Sent("wrong_secret", api_key(wrong_secret(k.key)), None) for k in rng.choices(hot, k=800)
    ]
    plan += [Sent("unknown_key", api_key(unknown_key()), None) for _ in range(MAX_SIZE + 500)]
    plan += [Sent("expired_key", api_key(k.key), None) for k in rng.choices(expiring, k=300)]
    plan += [
        Sent("revoked_key", api_key(k.key), k.record.key_id) for k in rng.choices(to_revoke, k=800)
    ]
    plan += [Sent("jwt", bearer(t), sub) for t, sub in rng.choices(list(jwts.items()), k=2500)]
    plan += [
        Sent(
            "expired_jwt",
            bearer(mint(iss=issuer.issuer, jti=str(n), exp=int(time.time()) - 600)),
            None,
        )
        for n in range(300)
    ]
    plan += [
        Sent("forged_jwt", bearer(mint(RSA_KEY_2, iss=issuer.issuer, jti=str(n))), None)
        for n in range(MAX_SIZE + 500)
    ]
    plan += [Sent("opaque", bearer(t), sub) for t, sub in rng.choices(list(opaque.items()), k=2500)]
    plan += [Sent("inactive_opaque", bearer(secrets.token_urlsafe(24)), None) for _ in range(300)]
    plan += [
        Sent("revoked_opaque", bearer(t), sub)
        for t, sub in rng.choices(list(revocable.items()), k=800)
    ]
    rng.shuffle(plan)
    # The second phase, once every revocation is visible: more distinct valid keys
    # than the cache holds, and the revoked credentials again.
    tail: list[Sent] = [Sent("cold_api_key", api_key(k.key), k.record.key_id) for k in cold]
    tail += [Sent("revoked_key", api_key(k.key), None) for k in rng.choices(to_revoke, k=300)]
    tail += [Sent("revoked_opaque", bearer(t), None) for t in rng.choices(list(revocable), k=300)]
    tail += [Sent("opaque", bearer(t), sub) for t, sub in rng.choices(list(opaque.items()), k=300)]
    rng.shuffle(tail)
    requests = [get("/", [sent.header]) for sent in plan]
    assert len(requests) >= CONNECTIONS * DEPTH

    server = start_load_app(
        {
            "APIGUARD_LOAD_STORE": store_url,
            "APIGUARD_LOAD_ISSUER": issuer.issuer,
            "APIGUARD_LOAD_AUDIENCE": AUDIENCE,
            "APIGUARD_LOAD_PEPPER": PEPPER,
            "APIGUARD_LOAD_MAX_SIZE": str(MAX_SIZE),
            "APIGUARD_LOAD_TOKEN_TTL": str(TOKEN_TTL),
        },
        tmp_path / "server.log",
    )
    revoked = Revocations()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", timeout=120
        ) as admin:
            await server.wait_until(admin, "/stats")
            expired_at = max(k.record.expires_at.timestamp() for k in expiring)  # type: ignore[union-attr]
            await anyio.sleep(max(0.0, expired_at - time.time()))  # the expiring keys: expired
            await admin.get("/stats/reset")
            answered = [0]
            midway = anyio.Event()

            def count_answer() -> None:
                answered[0] += 1
                if answered[0] >= REVOKE_AT * len(requests):
                    midway.set()

            async def revoke_midway() -> None:
                await midway.wait()
                revoked.tokens_sent = time.monotonic()
                for token in revocable:
                    issuer.active[token] = {"active": False}
                revoked.tokens_done = time.monotonic()
                ids = ",".join(key.record.key_id for key in to_revoke)
                revoked.keys_sent = time.monotonic()
                response = await admin.post(f"/admin/revoke/{ids}")
                assert response.status_code == 200
                revoked.keys_done = time.monotonic()

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(revoke_midway)
                answers = await pipelined(
                    server.port,
                    requests,
                    connections=CONNECTIONS,
                    depth=DEPTH,
                    on_answer=count_answer,
                )
            first_phase = time.monotonic() - started
            # Every revocation visible (`deserved()`): the tail is all after the windows.
            await anyio.sleep(max(0.0, revoked.tokens_done + TOKEN_TTL + SLACK - time.monotonic()))
            answers += await pipelined(
                server.port, [get("/", [sent.header]) for sent in tail], connections=100, depth=20
            )
            plan += tail
            duration = time.monotonic() - started
            stats = (await admin.get("/stats")).json()
    finally:
        server.stop(timeout=30)
    assert "Traceback" not in server.output(), server.output()

    windows = math.ceil(duration / TOKEN_TTL) + 1
    carried = Counter(s.header[1].removeprefix("Bearer ") for s in plan if s.kind == "opaque")
    asked = {token: issuer.asked[token] for token in opaque}
    largest = stats["largest"]
    # Zero wrong answers.
    wrong = []
    after_window = Counter[str]()
    for sent, answer in zip(plan, answers, strict=True):
        allowed = deserved(sent, answer, revoked)
        body = answer.body.decode()
        if answer.status not in allowed or (answer.status == 200 and body != sent.identity):
            wrong.append((sent.kind, answer.status, body[:80], sorted(allowed)))
        if sent.kind.startswith("revoked") and allowed == {401}:
            after_window[sent.kind] += 1
    report = {
        "requests": len(answers),
        "in_flight_at_start": CONNECTIONS * DEPTH,
        "connections": CONNECTIONS,
        "first_phase_requests": len(requests),
        "first_phase_seconds": round(first_phase, 2),
        "first_phase_requests_per_second": round(len(requests) / first_phase),
        "statuses": dict(Counter(a.status for a in answers)),
        "lag_ms": {k: round(v, 3) for k, v in stats.items() if k.startswith("lag_")},
        "ticks": stats["ticks"],
        "largest_caches": largest,
        "introspections_per_opaque_token_max": max(asked.values()),
        "requests_per_opaque_token_max": max(carried.values()),
        "store_lookups": stats["store_lookups"],
        "after_window": dict(after_window),
        "revoke_keys_took": round(revoked.keys_done - revoked.keys_sent, 3),
    }
    print("\nload:", json.dumps(report))  # noqa: T201 - the figures for the docs

    assert wrong == [], wrong[:20]
    # The revocation windows closed while requests still came: both were checked.
    assert after_window["revoked_key"] > 0, after_window
    assert after_window["revoked_opaque"] > 0, after_window

    # Memory bounded: every cache held at most MAX_SIZE, and was fed more than that.
    assert max(largest.values()) <= MAX_SIZE, largest
    assert largest["api_key_grants"] == largest["api_key_refusals"] == MAX_SIZE, largest
    assert largest["token_refusals"] == MAX_SIZE, largest  # token grants: see the docs

    # Single-flight: one introspection per opaque token per TOKEN_TTL at most, however
    # many requests carried it at once; the key set fetched once.
    assert all(1 <= n <= windows for n in asked.values()), (windows, asked)
    assert issuer.calls["jwks"] == 1
    assert issuer.calls["discovery"] == 0
