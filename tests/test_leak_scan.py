"""The secret-leak scan (tests/leak_scan.py) catches leaks: each test here makes one."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse

from apiguard import APIKeyAuth, APIKeyMiddleware, InvalidRequest
from apiguard.cli import main
from apiguard.keys import KeyHasher, MemoryKeyStore, generate_key
from apiguard.types import Message, Scope

from .conftest import PEPPER
from .leak_scan import LeakFound, LeakScanner

SECRET = "s3cr3t-Zq9XwV7u-not-in-any-output"


def test_a_secret_in_a_log_record_fails_the_test(leak_scanner: LeakScanner) -> None:
    """A key logged at DEBUG, below every configured level, is still seen."""
    scanner = leak_scanner
    key = generate_key()
    logging.getLogger("apiguard.somewhere").debug("checking %s", key.value)
    with pytest.raises(LeakFound, match="a generated API key seen in log record apiguard"):
        scanner.check()


def test_a_fragment_is_enough(leak_scanner: LeakScanner) -> None:
    """Eight characters of a secret, anywhere in the text, are a leak."""
    scanner = leak_scanner
    logging.getLogger("sqlalchemy.engine").info("params=(%r,)", PEPPER[5:13])
    with pytest.raises(LeakFound, match="the tests' pepper seen in log record sqlalchemy"):
        scanner.check()
    logging.getLogger("sqlalchemy.engine").info("params=(%r,)", PEPPER[5:12])
    scanner.check()  # seven characters: too short to tell from chance
    scanner.record("p" * 32, "a repetitive pepper")
    scanner.scan("p" * 40, "a place")
    scanner.check()  # fragments of fewer than 4 different characters are not recorded
    scanner.record("apiguard-testing-pepper-not-for-production", "a public test pepper")
    scanner.scan("apiguard.testing logged", "a place")
    scanner.check()  # nor words: lower-case letters and separators only


def test_a_secret_in_an_exception_message_fails_the_test(leak_scanner: LeakScanner) -> None:
    scanner = leak_scanner
    key = generate_key()
    InvalidRequest(f"bad key {key.secret}")
    scanner.check()  # seen when the test ends, as the autouse fixture scans objects:
    for obj in scanner.objects:
        scanner.scan(repr(obj), f"repr/str of a {type(obj).__name__}")
    scanner.objects.clear()
    with pytest.raises(LeakFound, match="repr/str of a InvalidRequest"):
        scanner.check()


@pytest.mark.anyio
async def test_a_secret_in_a_refusal_body_fails_the_test(
    leak_scanner: LeakScanner,
) -> None:
    scanner = leak_scanner
    key = generate_key()
    app = APIKeyMiddleware(
        Starlette(),
        store=MemoryKeyStore(),
        hasher=KeyHasher(PEPPER),
        error_response=lambda connection, error: PlainTextResponse(f"no {key.value}", 401),
    )
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "query_string": b"",
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 401
    with pytest.raises(LeakFound, match="a generated API key seen in a 401 refusal body"):
        scanner.check()


def test_a_secret_in_cli_output_fails_the_test(leak_scanner: LeakScanner) -> None:
    """Only the key `keys create` makes may be shown, once; any other secret is a leak."""
    scanner = leak_scanner
    shown_before = generate_key()
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    scanner.check()
    scanner.scan(result.output + shown_before.value, "the apiguard command's output")
    with pytest.raises(LeakFound, match="the apiguard command's output"):
        scanner.check()


def test_the_scanner_records_and_finds() -> None:
    scanner = LeakScanner()
    scanner.record(SECRET, "a test secret")
    scanner.record("short", "too short to record")
    scanner.scan(f"prefix {SECRET[10:20]} suffix", "a place")
    scanner.scan("short and harmless", "another place")
    with scanner.exempt(SECRET):
        scanner.scan(SECRET, "an exempt place")
    with pytest.raises(LeakFound) as raised:
        scanner.check()
    assert str(raised.value) == "secret leaked: a test secret seen in a place"
    assert SECRET[10:20] not in str(raised.value)  # the report does not leak it again
    scanner.check()  # findings are forgotten once reported


def test_apiguard_own_objects_pass_the_scan(leak_scanner: LeakScanner) -> None:
    """The objects apiguard makes with secrets show none of them."""
    scanner = leak_scanner
    key = generate_key()
    auth = APIKeyAuth(MemoryKeyStore(), pepper=PEPPER)
    for text in (repr(key), str(key), repr(auth.verifier), repr(KeyHasher(PEPPER))):
        scanner.scan(text, "repr")
    scanner.check()
