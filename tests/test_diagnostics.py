"""`explain_token`, `explain_key` and their CLI commands: each check says why, and the
verdict is always the one the middleware reaches."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from apiguard import BackendUnavailableError, BearerAuth, InvalidCredentials, InvalidToken
from apiguard.cli import main
from apiguard.diagnostics import Report, explain_key, explain_token
from apiguard.keys import KeyManager, KeyVerifier, MemoryKeyStore
from apiguard.keys.format import format_key, generate_key, parse_key
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.record import KeyRecord, utcnow
from apiguard.tokens import JWTIntrospector, RemoteIntrospector, TokenVerifier, TrustedIssuer

from .conftest import PEPPER
from .docs_support import cli_lines, unknown_cli_words
from .token_support import AUDIENCE, ISSUER, RSA_KEY_2, FakeIssuer, mint

pytestmark = pytest.mark.anyio


def failed(report: Report) -> list[str]:
    return [check.name for check in report.checks if check.outcome == "fail"]


def shows_none_of(report: Report, secret: str) -> None:
    """Neither the credential nor its secret part appears in any rendering."""
    rendered = report.as_text() + json.dumps(report.as_dict())
    # The whole value, and each long part of it: a JWT's signature, a key's secret.
    for part in [secret, *(p for p in re.split(r"[._]", secret) if len(p) >= 16)]:
        assert part not in rendered


@pytest.fixture
async def issuer() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture
async def jwt_introspector(issuer: FakeIssuer) -> AsyncIterator[JWTIntrospector]:
    introspector = JWTIntrospector.from_issuer(
        ISSUER, audience=AUDIENCE, http_client=issuer.client()
    )
    yield introspector
    await introspector.aclose()


async def middleware_verdict(introspector: Any, token: str) -> str | None:
    """What `BearerAuth`, as the middleware runs it, says: None or the reason."""
    bearer = BearerAuth(TokenVerifier(introspector))
    try:
        grant = await bearer.authenticate(token.encode())
        assert bearer.confirm is not None
        await bearer.confirm(grant, token.encode(), {"type": "http", "headers": []})
    except InvalidToken as exc:
        return exc.reason
    return None


# (token, the check that fails, the middleware's reason) for tokens a caller may send.
JWT_CASES: list[tuple[str, Callable[[], str], str | None, str | None]] = [
    ("valid", lambda: mint(), None, None),
    ("expired (RFC 7519 §4.1.4)", lambda: mint(exp=1_000_000_000), "exp", "expired"),
    ("not yet valid (RFC 7519 §4.1.5)", lambda: mint(nbf=4_000_000_000), "nbf", "not yet valid"),
    ("issued in the future", lambda: mint(iat=4_000_000_000), "iat", "not yet valid"),
    ("wrong audience (RFC 9068 §4)", lambda: mint(aud="https://other"), "aud", "wrong audience"),
    ("another issuer", lambda: mint(iss="https://evil.example"), "iss", "wrong issuer"),
    ("HS256 (RFC 8725 §3.1)", lambda: mint(key="k" * 32, alg="HS256"), "algorithm", None),
    ("typ JWT (RFC 9068 §4)", lambda: mint(typ="JWT"), "typ", "wrong typ"),
    ("unknown kid", lambda: mint(kid="nope"), "key", "no key for kid and alg"),
    ("forged signature", lambda: mint(key=RSA_KEY_2), "signature", "bad signature"),
    ("no sub", lambda: mint(sub=None), "required claims", "missing claim"),
    (
        "DPoP-bound as Bearer (RFC 9449 §7.2)",
        lambda: mint(cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
        "cnf",
        "DPoP-bound token presented as Bearer",
    ),
]


@pytest.mark.parametrize(
    ("token_of", "failing", "reason"),
    [case[1:] for case in JWT_CASES],
    ids=[case[0] for case in JWT_CASES],
)
async def test_each_jwt_check_says_why_and_the_verdict_is_the_middlewares(
    jwt_introspector: JWTIntrospector,
    token_of: Callable[[], str],
    failing: str | None,
    reason: str | None,
) -> None:
    token = token_of()
    report = await explain_token(token, jwt_introspector)
    expected = await middleware_verdict(jwt_introspector, token)
    assert report.accepted is (expected is None)
    assert report.reason == expected
    if reason is not None:
        assert expected == reason
    if failing is None:
        assert report.status == 200
        assert failed(report) == []
        names = [check.name for check in report.checks]
        for name in ("algorithm", "typ", "key", "signature", "iss", "aud", "exp"):
            assert name in names
        assert "items:read items:write" in report.as_text()
    else:
        assert report.status == 401
        assert failed(report)[0] == failing
        assert report.as_text().endswith(f"401 (jwt): {expected}")
    shows_none_of(report, token)


async def test_the_key_says_where_it_was_found_and_when_the_key_set_was_fetched(
    jwt_introspector: JWTIntrospector,
) -> None:
    report = await explain_token(mint(), jwt_introspector)
    (key,) = [check for check in report.checks if check.name == "key"]
    assert key.detail.startswith("kid=rsa-1 found in https://idp.example/jwks (key set fetched ")
    assert re.search(
        r"\(key set fetched \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, \d+ s ago\)$", key.detail
    )


async def test_the_clock_difference_is_told(jwt_introspector: JWTIntrospector) -> None:
    report = await explain_token(mint(exp=1_000_000_000), jwt_introspector)
    (exp,) = [check for check in report.checks if check.name == "exp"]
    assert exp.detail.startswith("2001-09-09 01:46:40 UTC, expired ")
    assert "days ago (leeway 30 s)" in exp.detail


async def test_key_set_unreachable_is_503(
    issuer: FakeIssuer, jwt_introspector: JWTIntrospector
) -> None:
    issuer.down = True
    report = await explain_token(mint(), jwt_introspector)
    assert (report.accepted, report.status, report.reason) == (False, 503, "backend unavailable")
    assert failed(report)[0] == "key set"


async def test_values_from_the_token_cannot_write_to_the_terminal(
    jwt_introspector: JWTIntrospector,
) -> None:
    token = mint(kid="\x1b[2J\x1b[31mred\r\nforged line" + "x" * 500)
    text = (await explain_token(token, jwt_introspector)).as_text()
    assert "\x1b" not in text
    assert "\r" not in text
    assert all(len(line) < 250 for line in text.splitlines())


def endpoint(**answer: Any) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def remote(client: httpx.AsyncClient) -> RemoteIntrospector:
    return RemoteIntrospector(
        "https://idp.example/introspect",
        client_id="api",
        client_secret="api-secret",
        audience=AUDIENCE,
        issuer=ISSUER,
        http_client=client,
    )


def active(**overrides: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "active": True,
        "client_id": "service",
        "scope": "items:read",
        "aud": AUDIENCE,
        "iss": ISSUER,
        # Far ahead: the answers are made when the tests are collected, maybe minutes
        # before they run.
        "exp": 4_000_000_000,
        "token_type": "Bearer",
    }
    return {k: v for k, v in (answer | overrides).items() if v is not None}


@pytest.mark.parametrize(
    ("answer", "failing", "reason"),
    [
        (active(), None, None),
        ({"active": False}, "active", "inactive"),
        (active(aud="https://other"), "aud", "wrong audience"),
        (active(exp=1_000_000_000), "exp", "expired"),
        (active(iss="https://evil.example"), "iss", "wrong issuer"),
        (active(iss=None), None, None),  # RFC 7662 §2.2: iss is optional
        # RFC 9449 §6.2, §7.2: introspection accepts it, BearerAuth refuses it.
        (active(token_type="DPoP"), "token_type", "DPoP-bound token presented as Bearer"),
    ],
)
async def test_an_introspection_answer_is_explained_member_by_member(
    answer: dict[str, Any], failing: str | None, reason: str | None
) -> None:
    introspector = remote(endpoint(**answer))
    report = await explain_token("opaque-token-value-123", introspector)
    assert report.kind == "opaque token"
    assert report.reason == reason
    assert report.accepted is (reason is None)
    assert await middleware_verdict(remote(endpoint(**answer)), "opaque-token-value-123") == reason
    assert failed(report)[:1] == ([failing] if failing else [])
    shows_none_of(report, "opaque-token-value-123")


async def test_an_introspection_endpoint_refusing_us_is_503() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    report = await explain_token("opaque-token-value-123", remote(client))
    assert (report.accepted, report.status) == (False, 503)


async def test_other_introspectors_get_a_verdict() -> None:
    from .token_support import TableIntrospector

    table = TableIntrospector()
    report = await explain_token("whatever", table)
    assert (report.accepted, report.status, report.reason) == (False, 401, "unknown")
    assert failed(report) == ["verdict"]


@pytest.fixture
async def keys() -> tuple[MemoryKeyStore, KeyManager]:
    store = MemoryKeyStore()
    return store, KeyManager(store, KeyHasher(PEPPER))


async def test_each_key_check_says_why_and_the_verdict_is_the_middlewares(
    keys: tuple[MemoryKeyStore, KeyManager],
) -> None:
    store, manager = keys
    good = (await manager.create("svc", scopes={"items:read"})).key
    revoked = (await manager.create("old")).key
    await manager.revoke(parse_key(revoked).key_id)
    generated = generate_key()
    expired = generated.value
    await store.add(
        KeyRecord(
            generated.key_id,
            "short",
            KeyHasher(PEPPER).hash(generated.secret),
            expires_at=utcnow() - timedelta(seconds=1),
        )
    )
    parsed = parse_key(good)
    cases = {
        good: (None, None),
        good[:-1] + ("A" if good[-1] != "A" else "B"): ("checksum", "bad checksum"),
        "xyz" + good[3:]: ("prefix", "unknown prefix"),
        "not a key": ("format", "malformed"),
        "a" * 500: ("format", "malformed"),
        format_key("apg", "0" * 12, parsed.secret): ("found", "unknown key"),
        format_key("apg", parsed.key_id, "1" * 43): ("secret", "wrong secret"),
        revoked: ("status", "revoked"),
        expired: ("status", "expired"),
    }
    verifier = KeyVerifier(store, KeyHasher(PEPPER))
    for key, (failing, reason) in cases.items():
        report = await explain_key(key, store, hasher=KeyHasher(PEPPER))
        try:
            await verifier.verify(key.encode())
            middleware = None
        except InvalidCredentials as exc:
            middleware = exc.reason
        assert (report.reason, middleware) == (reason, reason), key
        assert report.accepted is (reason is None)
        assert failed(report)[:1] == ([failing] if failing else [])
        shows_none_of(report, key)
    report = await explain_key(good, store, hasher=KeyHasher(PEPPER))
    assert "items:read" in report.as_text()
    assert parsed.key_id in report.as_text()


async def test_without_the_pepper_the_secret_is_not_judged(
    keys: tuple[MemoryKeyStore, KeyManager],
) -> None:
    store, manager = keys
    key = (await manager.create("svc")).key
    report = await explain_key(key, store)
    assert (report.accepted, report.status) == (None, None)
    assert [c.outcome for c in report.checks if c.name == "secret"] == ["skip"]
    assert report.as_text().splitlines()[-1].startswith("verdict: UNDECIDED")


async def test_a_store_that_is_down_is_503(keys: tuple[MemoryKeyStore, KeyManager]) -> None:
    store, manager = keys
    key = (await manager.create("svc")).key

    async def down(key_id: str) -> None:
        raise BackendUnavailableError("store down")

    store.get = down  # type: ignore[method-assign]
    report = await explain_key(key, store, hasher=KeyHasher(PEPPER))
    assert (report.accepted, report.status, failed(report)) == (False, 503, ["store"])


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin, env=env, catch_exceptions=False)


def test_keys_check_reads_the_key_from_stdin_and_exits_by_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/keys.db"
    monkeypatch.setenv("APIGUARD_STORE", url)
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    key = json.loads(run("keys", "create", "--name", "svc", "--json").output)["key"]

    result = run("keys", "check", stdin=key + "\n")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "verdict: ACCEPTED (api key)"
    assert key not in result.output

    wrong = key[:-1] + ("1" if key.endswith("0") else "0")  # a bad checksum
    result = run("keys", "check", "--json", stdin=wrong + "\n")
    assert result.exit_code == 1
    assert json.loads(result.output)["reason"] == "bad checksum"

    monkeypatch.delenv("APIGUARD_PEPPER")
    result = run("keys", "check", key)
    assert result.exit_code == 3
    assert "APIGUARD_PEPPER" in result.output

    result = run("keys", "check", stdin="\n")
    assert result.exit_code == 2
    assert "no key" in result.output


def test_token_inspect_needs_the_client_secret_for_introspection() -> None:
    result = run(
        "token", "inspect", "--issuer", ISSUER, "--audience", AUDIENCE, "--client-id", "api",
        stdin="opaque\n",
        env={"APIGUARD_CLIENT_SECRET": ""},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "APIGUARD_CLIENT_SECRET" in result.output


async def test_with_several_issuers_an_unknown_one_is_named(issuer: FakeIssuer) -> None:
    introspector = JWTIntrospector(
        TrustedIssuer(ISSUER, AUDIENCE),
        TrustedIssuer("https://other.example", AUDIENCE),
        http_client=issuer.client(),
    )
    report = await explain_token(mint(iss="https://evil.example"), introspector)
    assert (report.reason, failed(report)) == ("untrusted issuer", ["issuer"])
    assert "https://evil.example" in report.as_text()
    await introspector.aclose()


DOC = (Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md").read_text()


def test_the_page_documents_every_option_of_token_inspect() -> None:
    inspect_command = main.commands["token"].commands["inspect"]  # type: ignore[attr-defined]
    options = {opt for param in inspect_command.params for opt in param.opts if "--" in opt}
    assert options
    for option in options:
        assert f"`{option}" in DOC, option


@pytest.mark.parametrize("words", cli_lines([DOC]), ids=" ".join)
def test_the_pages_command_lines_are_real(words: list[str]) -> None:
    assert not unknown_cli_words(words)
