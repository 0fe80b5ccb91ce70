"""The API key format: generate and parse keys, without any I/O.

A key reads `<prefix>_<key id>_<secret><checksum>`, for example
`apg_3kTMd9Qx1bZr_<43 characters><6 characters>`:

- the prefix (default `apg`) makes keys recognizable to people and secret scanners;
- the key id (12 base62 characters) is not secret: it is how the store finds the
  record, and what logs and the CLI show;
- the secret is 256 random bits written as 43 base62 characters; only its hash is stored;
- the checksum is the CRC32 of everything before it, as 6 base62 characters (the
  scheme GitHub's tokens use), so a mistyped or random string is refused without
  touching the store.

`_` separates the parts so that a double-click selects the whole key.
"""

from __future__ import annotations

import re
import secrets
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field

from apiguard.exceptions import ConfigurationError, InvalidCredentials

__all__ = [
    "DEFAULT_PREFIX",
    "GeneratedKey",
    "ParsedKey",
    "format_key",
    "generate_key",
    "parse_key",
    "validate_prefix",
]

DEFAULT_PREFIX = "apg"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LENGTH = 12  # about 71 bits: ids are unique, not secret
SECRET_LENGTH = 43  # 62**43 > 2**256
CHECKSUM_LENGTH = 6  # 62**6 > 2**32
MAX_PREFIX_LENGTH = 16
MAX_KEY_LENGTH = MAX_PREFIX_LENGTH + 2 + KEY_ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{1,15}")
_KEY_RE = re.compile(
    rf"([a-z][a-z0-9]{{1,15}})_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_"
    rf"([0-9A-Za-z]{{{SECRET_LENGTH}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key split into its parts; the secret is left out of the repr."""

    prefix: str
    key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A newly generated key. `value` is the full key: show it once, store only its hash."""

    prefix: str
    key_id: str
    secret: str = field(repr=False)
    value: str = field(repr=False)


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is 2 to 16 lower-case letters and digits, starting with a letter."""
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigurationError(
            "a key prefix must be 2 to 16 lower-case letters or digits, starting with a letter"
        )
    return prefix


def _base62(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(BASE62[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def format_key(prefix: str, key_id: str, secret: str) -> str:
    """Join the parts of a key and append its checksum."""
    body = f"{prefix}_{key_id}_{secret}"
    return body + _checksum(body)


def generate_key(prefix: str = DEFAULT_PREFIX) -> GeneratedKey:
    """Generate a new key with a random key id and a 256-bit secret."""
    validate_prefix(prefix)
    key_id = _base62(secrets.randbelow(62**KEY_ID_LENGTH), KEY_ID_LENGTH)
    secret = _base62(secrets.randbelow(62**SECRET_LENGTH), SECRET_LENGTH)
    return GeneratedKey(prefix, key_id, secret, format_key(prefix, key_id, secret))


def parse_key(value: str, prefixes: Collection[str] = (DEFAULT_PREFIX,)) -> ParsedKey:
    """Split a presented key into its parts, checking its shape, prefix and checksum.

    Raises:
        InvalidCredentials: The value is not a well-formed key with one of `prefixes`.
            The exception's `reason` says why, for logs; it holds no part of the value.
    """
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidCredentials(reason="malformed")
    match = _KEY_RE.fullmatch(value)
    if match is None:
        raise InvalidCredentials(reason="malformed")
    prefix, key_id, secret, checksum = match.groups()
    if prefix not in prefixes:
        raise InvalidCredentials(reason="unknown prefix")
    if not secrets.compare_digest(_checksum(value[:-CHECKSUM_LENGTH]), checksum):
        raise InvalidCredentials(reason="bad checksum")
    return ParsedKey(prefix, key_id, secret)
