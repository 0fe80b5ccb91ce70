from __future__ import annotations

import zlib

import pytest

from apiguard import ConfigurationError, InvalidCredentials
from apiguard.keys import format_key, generate_key, parse_key
from apiguard.keys.format import BASE62, MAX_KEY_LENGTH, _base62


def test_generated_key_shape() -> None:
    """A key is prefix, 12-character id, 43-character secret and 6-character checksum."""
    key = generate_key()
    prefix, key_id, rest = key.value.split("_")
    assert prefix == "apg"
    assert key_id == key.key_id
    assert len(key_id) == 12
    assert len(rest) == 43 + 6
    assert rest[:43] == key.secret
    assert set(key_id + rest) <= set(BASE62)
    assert len(key.value) <= MAX_KEY_LENGTH


def test_generated_secret_has_256_bits() -> None:
    """43 base62 characters hold at least 256 bits, and secrets do not repeat."""
    assert 62**43 > 2**256
    secrets = {generate_key().secret for _ in range(200)}
    assert len(secrets) == 200


def test_checksum_is_crc32_of_the_body_in_base62() -> None:
    """The checksum is zlib's CRC32 (ISO-HDLC) of everything before it, big-endian base62."""
    body = "apg_0123456789ab_" + "z" * 43
    expected = _base62(zlib.crc32(body.encode()), 6)
    assert format_key("apg", "0123456789ab", "z" * 43) == body + expected


def test_base62_matches_githubs_checksum_encoding() -> None:
    """GitHub's published vector: the CRC32 of this entropy encodes as 0mLq17."""
    assert _base62(zlib.crc32(b"zQWBuTSOoRi4A9spHcVY5ncnsDkxkJ"), 6) == "0mLq17"


def test_parse_round_trip() -> None:
    key = generate_key("acme")
    parsed = parse_key(key.value, prefixes=("acme",))
    assert (parsed.prefix, parsed.key_id, parsed.secret) == ("acme", key.key_id, key.secret)


def _flip(text: str, index: int) -> str:
    char = text[index]
    return text[:index] + ("A" if char != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        pytest.param(lambda k: "", "malformed", id="empty"),
        pytest.param(lambda k: k + "x", "malformed", id="too-long-secret"),
        pytest.param(lambda k: k[:-1], "malformed", id="truncated"),
        pytest.param(lambda k: k.replace("_", "-"), "malformed", id="wrong-separator"),
        pytest.param(lambda k: " " + k, "malformed", id="whitespace"),
        pytest.param(lambda k: k + "a" * 200, "malformed", id="huge"),
        pytest.param(lambda k: _flip(k, 20), "bad checksum", id="typo-in-secret"),
        pytest.param(lambda k: _flip(k, 5), "bad checksum", id="typo-in-key-id"),
        pytest.param(lambda k: _flip(k, len(k) - 1), "bad checksum", id="typo-in-checksum"),
        pytest.param(lambda k: "xyz" + k[3:], "unknown prefix", id="other-prefix"),
        pytest.param(lambda k: k.upper(), "malformed", id="upper-case-prefix"),
        pytest.param(lambda k: k[:10] + "é" + k[11:], "malformed", id="non-ascii"),
    ],
)
def test_parse_refuses(mutate: object, reason: str) -> None:
    """Malformed or mistyped keys are refused without I/O, and the reason says why."""
    key = generate_key().value
    with pytest.raises(InvalidCredentials) as info:
        parse_key(mutate(key))  # type: ignore[operator]
    assert info.value.reason == reason
    assert key not in str(info.value)


@pytest.mark.parametrize("prefix", ["", "a", "A1", "1abc", "a_b", "a" * 17, "ap-g"])
def test_bad_prefix_is_a_configuration_error(prefix: str) -> None:
    with pytest.raises(ConfigurationError):
        generate_key(prefix)


def test_secret_not_in_repr() -> None:
    """Neither the secret nor the full key appears in a repr."""
    key = generate_key()
    parsed = parse_key(key.value)
    for text in (repr(key), repr(parsed), str(key)):
        assert key.secret not in text
        assert key.key_id in text
