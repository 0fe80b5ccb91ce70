"""The first sight of a JWT: the fast checks decide exactly as the reference ones, and
a burst of new tokens takes turns with the rest of the event loop."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import jwt
import pytest
from jwt.api_jws import PyJWS

from apiguard import InvalidToken
from apiguard.testing import FakeClock
from apiguard.tokens import JWTIntrospector, TokenInfo, TokenVerifier, _turns
from apiguard.tokens.jwks import _COMPACT_JWS, MAX_JSON_DEPTH, _is_compact_jws, _segment, _Segments
from apiguard.tokens.verifier import _B64TOKEN, _is_b64token
from tests.token_support import AUDIENCE, ISSUER, RSA_KEY, RSA_KEY_2, FakeIssuer, mint, public_jwk

# Every string of up to four characters over an alphabet of each kind of character
# the shapes care about: base64url, the dot, padding, base64-only, space, non-ASCII.
_SHAPES = ["".join(c) for n in range(5) for c in itertools.product("a-._=+/ é~", repeat=n)]


def test_compact_jws_shape_is_the_rfc_7515_pattern() -> None:
    # RFC 7515 §7.1: BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature).
    for text in [*_SHAPES, mint(), mint() + ".", "." + mint(), mint() + "\n", mint() + "é"]:
        assert _is_compact_jws(text) == (_COMPACT_JWS.fullmatch(text) is not None), text


def test_b64token_shape_is_the_rfc_6750_pattern() -> None:
    # RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    for text in [*_SHAPES, "abc==", "=abc", "a=b", "==", "a\n", mint()]:
        raw = text.encode()
        assert _is_b64token(raw) == (_B64TOKEN.fullmatch(raw) is not None), text


def _outcome(decode: Any, segment: bytes) -> bytes | str:
    try:
        return bytes(decode(segment, "payload"))
    except jwt.DecodeError as exc:
        return str(exc)


def _segments() -> list[bytes]:
    """Canonical encodings, each with every last character, padded and not, and junk."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    found: list[bytes] = [b"", b"=", b"==", b"===", b"!!!!", b"ab+/", b"ab cd", b"a=b="]
    for size in range(7):
        encoded = base64.urlsafe_b64encode(bytes(range(40, 40 + size))).rstrip(b"=")
        for last in alphabet:
            changed = encoded[:-1] + bytes([last]) if encoded else bytes([last])
            for pad in (b"", b"=", b"==", b"==="):
                found.append(changed + pad)
    return found


def test_segment_decoding_is_pyjwts() -> None:
    """Same bytes or the same refusal as PyJWT's own checks (GHSA-hxm8-2xgr-2p9m):
    padding, alphabet, decodable length and canonical trailing bits."""
    segments = _segments()
    refused = 0
    for segment in segments:
        expected = _outcome(PyJWS._decode_base64url_segment, segment)
        assert _outcome(_Segments._decode_base64url_segment, segment) == expected, segment
        refused += isinstance(expected, str)
    assert 0 < refused < len(segments)  # the table holds both kinds


def _header(value: dict[str, Any]) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{encoded}.e30.c2ln"


def test_header_with_many_brackets_but_shallow_is_read() -> None:
    # More brackets than the depth bound, nested one deep, some inside strings.
    header = {"alg": "RS256", "x": [[] for _ in range(MAX_JSON_DEPTH + 4)], "y": "[[[{{{"}
    assert _segment(_header(header), 0, "malformed header") == header


def _nested(levels: int) -> Any:
    value: Any = "[[[[{{{{"  # brackets in a string nest nothing
    for _ in range(levels):
        value = {"a": value}
    return value


def test_header_nesting_bound_holds_with_brackets_in_strings() -> None:
    assert _segment(_header(_nested(MAX_JSON_DEPTH)), 0, "malformed header")
    with pytest.raises(InvalidToken) as refused:
        _segment(_header(_nested(MAX_JSON_DEPTH + 1)), 0, "malformed header")
    assert refused.value.reason == "malformed header"


async def _burst(verifier: TokenVerifier, count: int) -> tuple[int, list[int]]:
    """Check `count` new tokens at once; return how many passed and, each time another
    task of the loop ran meanwhile, how many had been checked by then."""
    tokens = [mint(RSA_KEY, "RS256", "rsa-1", jti=f"burst-{n}").encode() for n in range(count)]
    done = 0
    seen_by_other_task: list[int] = []

    async def check(token: bytes) -> None:
        nonlocal done
        await verifier.verify(token)
        done += 1

    async def other_task() -> None:
        while done < count:
            seen_by_other_task.append(done)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        for token in tokens:
            group.start_soon(check, token)
        group.start_soon(other_task)
    return done, seen_by_other_task


@pytest.mark.anyio
async def test_a_burst_of_new_tokens_takes_turns_with_other_tasks() -> None:
    """100 tokens never seen before, checked at once: another task of the loop runs
    between the checks instead of waiting for all of them (asyncio runs ready tasks
    in order, so without turns it would see 0, then 100)."""
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        verifier = TokenVerifier(introspector)
        await verifier.verify(mint(RSA_KEY, "RS256", "rsa-1", jti="warm").encode())
        done, seen_by_other_task = await _burst(verifier, 100)
        assert done == 100
        assert any(0 < n < 100 for n in seen_by_other_task), seen_by_other_task
        assert introspector.key_fetches(ISSUER) == 1


@pytest.mark.anyio
async def test_a_token_sent_again_during_a_burst_is_checked_once() -> None:
    """Copies of a token queued behind the burst find its verdict when their turn comes,
    instead of checking it again: one check per token, however many requests carry it."""
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        checked: Counter[str] = Counter()

        class Counting:
            async def introspect(self, token: str) -> TokenInfo:
                checked[token] += 1
                return await introspector.introspect(token)

            async def aclose(self) -> None:
                await introspector.aclose()

        verifier = TokenVerifier(Counting())
        await verifier.verify(mint(RSA_KEY, "RS256", "rsa-1", jti="warm").encode())
        tokens = [mint(RSA_KEY, "RS256", "rsa-1", jti=f"again-{n}") for n in range(50)]
        async with anyio.create_task_group() as group:
            for token in tokens * 4:  # every token's copies arrive behind the others
                group.start_soon(verifier.verify, token.encode())
        assert [checked[token] for token in tokens] == [1] * 50


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_a_burst_under_trio() -> None:
    """Turns are taken with trio's scheduler too: every token of the burst is checked."""
    idp = FakeIssuer()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        done, _ = await _burst(TokenVerifier(introspector), 50)
        assert done == 50


def test_checks_driven_without_an_event_loop() -> None:
    """A check has no loop to take turns with when its coroutine is driven by hand."""
    idp = FakeIssuer()

    async def fetch_keys() -> JWTIntrospector:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=idp.client()
        )
        await introspector.introspect(mint())
        return introspector

    introspector = anyio.run(fetch_keys)
    coroutine = introspector.introspect(mint(jti="by-hand"))
    with pytest.raises(StopIteration) as stopped:
        coroutine.send(None)
    assert (
        stopped.value.value.subject
        == jwt.decode(mint(), options={"verify_signature": False})["sub"]
    )


@pytest.mark.anyio
async def test_a_key_replaced_under_its_kid_is_used_from_the_next_fetch() -> None:
    """The key found for a kid is remembered only until the key set is fetched again."""
    idp, clock = FakeIssuer(), FakeClock()
    async with idp.client() as http:
        introspector = JWTIntrospector.from_issuer(
            ISSUER, audience=AUDIENCE, http_client=http, clock=clock
        )
        assert (await introspector.introspect(mint(RSA_KEY, "RS256", "rsa-1"))).active
        idp.keys[:] = [public_jwk(RSA_KEY_2, "rsa-1")]
        clock.now += 301  # past the key set's ttl: fetched again on the next token
        assert (await introspector.introspect(mint(RSA_KEY_2, "RS256", "rsa-1"))).active
        with pytest.raises(InvalidToken) as refused:
            await introspector.introspect(mint(RSA_KEY, "RS256", "rsa-1", jti="old-key"))
        assert refused.value.reason == "bad signature"
        assert introspector.key_fetches(ISSUER) == 2


@pytest.mark.parametrize(("cancelled", "let_through"), [(0, [1, 2]), (1, [0, 2])])
@pytest.mark.anyio
async def test_a_check_cancelled_while_it_waits_for_its_turn_holds_up_no_other(
    monkeypatch: pytest.MonkeyPatch, cancelled: int, let_through: list[int]
) -> None:
    """The first in the queue (skipped when its turn comes) or one behind it (taken
    out of the queue)."""
    monkeypatch.setattr(_turns, "SLICE", 0.0)  # every check waits for its turn
    monkeypatch.setattr(_turns._pass, "average", 1.0)  # one check a pass
    through: list[int] = []

    async def check(n: int) -> None:
        await _turns.wait()
        through.append(n)
        _turns.charge(0.0)

    with anyio.fail_after(10):  # a stalled queue would never let the third through
        await _three_checks_cancel_one(check, cancelled)
    assert through == let_through
    assert not _turns._pass.waiting
    assert _turns._pass.admitted == 0


async def _three_checks_cancel_one(check: Callable[[int], Awaitable[None]], cancelled: int) -> None:
    async with anyio.create_task_group() as group:
        scopes = []
        for n in range(3):
            scope = anyio.CancelScope()
            scopes.append(scope)

            async def run(n: int = n, scope: anyio.CancelScope = scope) -> None:
                with scope:
                    await check(n)

            group.start_soon(run)
        await anyio.lowlevel.checkpoint()  # all three are queued by now
        assert len(_turns._pass.waiting) == 3
        scopes[cancelled].cancel()


@pytest.mark.anyio
async def test_a_check_cancelled_once_let_through_leaves_no_turn_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio's own cancellation, which reaches a task even once its turn has come."""
    monkeypatch.setattr(_turns, "SLICE", 0.0)  # every check waits for its turn
    monkeypatch.setattr(_turns._pass, "average", 1.0)  # one check a pass
    through: list[int] = []

    async def check(n: int) -> None:
        await _turns.wait()
        through.append(n)
        _turns.charge(0.0)

    async def scenario() -> None:
        tasks = [asyncio.create_task(check(n)) for n in range(3)]
        await asyncio.sleep(0)  # all three are queued
        await asyncio.sleep(0)  # the first is let through, not yet run
        assert _turns._pass.admitted == 1
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert tasks[0].cancelled()

    await asyncio.wait_for(scenario(), 10)
    assert through == [1, 2]
    assert _turns._pass.admitted == 0


@pytest.mark.anyio
async def test_turns_left_by_an_ended_event_loop_hold_up_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop of this thread that ended with its slice spent and a reset pending (which
    will never run) does not make the checks of the next loop wait."""
    monkeypatch.setattr(_turns._pass, "loop", object())
    monkeypatch.setattr(_turns._pass, "used", 1.0)
    idp = FakeIssuer()
    async with idp.client() as http:
        verifier = TokenVerifier(
            JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=http)
        )
        with anyio.fail_after(10):
            principal, _ = await verifier.verify(mint(jti="after-another-loop").encode())
    assert principal.kind == "bearer"
