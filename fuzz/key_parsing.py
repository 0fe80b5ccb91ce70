"""API keys as presented: header bytes -> `read_headers` -> `parse_key`.

Any input is a key, or `InvalidCredentials` / `InvalidRequest`; nothing else.
A well-formed key must round-trip through `format_key`.
"""

from __future__ import annotations

from apiguard import InvalidCredentials, InvalidRequest
from apiguard._credentials import header_names, read_headers
from apiguard.keys.format import MAX_KEY_LENGTH, format_key, parse_key

NAMES = header_names(["X-API-Key", "X-Other-Key"])


def test_one_input(data: bytes) -> None:
    # The first byte splits the input into one or two header values.
    split = data[0] % 3 if data else 0
    body = data[1:]
    if split == 2:
        middle = len(body) // 2
        headers = [(b"x-api-key", body[:middle]), (b"x-other-key", body[middle:])]
    else:
        headers = [(b"x-api-key" if split == 0 else b"x-other-key", body)]
    try:
        raw = read_headers({"headers": headers}, NAMES)
    except InvalidRequest:
        assert split == 2
        return
    assert raw is not None
    value = raw.decode("latin-1")
    try:
        parsed = parse_key(value, prefixes=("apg", "test"))
    except InvalidCredentials as exc:
        assert exc.reason in ("malformed", "unknown prefix", "bad checksum")
        if len(value) >= 8:  # the refusal holds no part of the value
            assert value not in str(exc) and value not in repr(exc)
        return
    assert len(value) <= MAX_KEY_LENGTH
    assert format_key(parsed.prefix, parsed.key_id, parsed.secret) == value


if __name__ == "__main__":
    from fuzz._run import fuzz

    fuzz(test_one_input)
