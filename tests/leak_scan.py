"""A secret-leak scan over the whole test suite, wired in by tests/conftest.py.

Every secret the suite creates is recorded where it is made: generated API keys
(their secret part: the key id is public by design), peppers, minted JWTs (their
signature), client secrets, the tests' private keys, store URL passwords. Every
test then runs with the root and `apiguard` loggers at DEBUG, and each of these is
scanned for any recorded secret, whole or as a fragment of `FRAGMENT` characters:

- every log record, from apiguard and from its drivers (message and traceback);
- the message and repr of every apiguard exception;
- `repr()` and `str()` of every instance of a public apiguard class;
- the body of every refusal apiguard sends (the tests' apps echo requests on purpose);
- the output of every `CliRunner` run of the `apiguard` command (less the key that
  `keys create` shows once, by design).

A finding fails the test that produced it, naming where the secret was seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

FRAGMENT = 8


_WORDY = frozenset("abcdefghijklmnopqrstuvwxyz-_. ")


def _random_looking(window: str) -> bool:
    """Whether a fragment could not be told from ordinary text by chance.

    Fragments of fewer than 4 different characters (`pppppppp`) or of lower-case
    letters and separators only (`apiguard`, `-testing` from a public test pepper)
    are words and padding, not secrets. A random base62 key or a signature loses
    about one window in a thousand to this rule.
    """
    return len(set(window)) >= 4 and not set(window) <= _WORDY


class LeakFound(AssertionError):
    """A recorded secret was seen where it must not be."""


@dataclass
class Finding:
    where: str
    origin: str
    fragment: str

    def __str__(self) -> str:
        # The fragment itself is not repeated: the report would leak it again.
        return f"{self.origin} seen in {self.where}"


@dataclass
class LeakScanner:
    """Records secrets and scans text for any fragment of them."""

    fragment: int = FRAGMENT
    findings: list[Finding] = field(default_factory=list)
    _windows: dict[str, str] = field(default_factory=dict)
    _exempt: set[str] = field(default_factory=set)
    generated: list[str] = field(default_factory=list)
    """The API keys generated so far, in order."""
    objects: list[object] = field(default_factory=list)
    """Instances of public classes made during the current test, scanned at its end."""
    real_is_enabled_for: Any = None
    """`logging.Logger.isEnabledFor` as logging has it: the scan makes every level
    enabled, so a test of what is built only for enabled levels puts this one back."""

    def record(self, secret: str | bytes | None, origin: str) -> None:
        """Remember `secret` (shorter ones than the fragment length cannot be told apart)."""
        if isinstance(secret, bytes):
            secret = secret.decode("latin-1")
        if not secret or len(secret) < self.fragment:
            return
        for i in range(len(secret) - self.fragment + 1):
            window = secret[i : i + self.fragment]
            if _random_looking(window):
                self._windows.setdefault(window, origin)

    def find(self, text: str) -> tuple[str, str] | None:
        """The first fragment of a recorded secret in `text`, with its origin."""
        windows = self._windows
        size = self.fragment
        for i in range(len(text) - size + 1):
            window = text[i : i + size]
            origin = windows.get(window)
            if origin is not None and window not in self._exempt:
                return window, origin
        return None

    def scan(self, text: object, where: str) -> None:
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        found = self.find(str(text))
        if found is not None:
            self.findings.append(Finding(where, found[1], found[0]))

    @contextmanager
    def exempt(self, secret: str) -> Iterator[None]:
        """While the context lasts, `secret`'s fragments are not findings."""
        windows = {secret[i : i + self.fragment] for i in range(len(secret) - self.fragment + 1)}
        added = windows - self._exempt
        self._exempt |= added
        try:
            yield
        finally:
            self._exempt -= added

    def check(self) -> None:
        """Raise `LeakFound` naming every finding, and forget them."""
        findings, self.findings = self.findings, []
        if findings:
            raise LeakFound("secret leaked: " + "; ".join(str(f) for f in findings[:5]))


class ScanHandler(logging.Handler):
    """Scans each log record, formatted with its traceback."""

    def __init__(self, scanner: LeakScanner) -> None:
        super().__init__(logging.DEBUG)
        self.scanner = scanner
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "httpx" and "//testserver" in str(record.args):
            # The tests' own client logging the request it sends (a key in a query
            # string, by the test's choice), not apiguard or its drivers.
            return
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a broken record is the logging call's problem
            return
        self.scanner.scan(text, f"log record {record.name} {record.levelname}")


def url_password(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def wrap_everywhere(
    patch: Callable[[object, str, object], None],
    modules: Iterable[Any],
    original: Callable[..., Any],
    wrapper: Callable[..., Any],
) -> None:
    """Replace `original` by `wrapper` in every module that holds it by name."""
    for module in modules:
        for name, value in list(vars(module).items()):
            if value is original:
                patch(module, name, wrapper)
