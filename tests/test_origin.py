"""The request's external URL, URL normalisation (RFC 3986 §6) and JWK thumbprints."""

from __future__ import annotations

from typing import Any

import pytest

from apiguard._origin import external_origin, normalize_url, request_url
from apiguard.tokens import jwk_thumbprint

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPeb"
    "WKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQ"
    "MicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2Nc"
    "Rwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


def test_rfc7638_example_thumbprint() -> None:
    """RFC 7638 §3.1; optional members (`alg`, `kid`) do not change it (§3.2)."""
    jwk = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(
    "jwk", [{"kty": "oct", "k": "x"}, {"kty": "RSA", "n": "x"}, {"kty": "EC", "crv": 1, "x": "a"}]
)
def test_thumbprint_needs_a_complete_public_key(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        jwk_thumbprint(jwk)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        # RFC 3986 §6.2.2.1 case, §6.2.2.2 percent-encoding, §6.2.2.3 dot segments.
        ("HTTPS://API.Example/a/%7euser/%2f", "https://api.example/a/~user/%2F"),
        ("https://api.example/a/./b/../c", "https://api.example/a/c"),
        ("https://api.example/a/..", "https://api.example/"),
        # RFC 3986 §6.2.3: default port and empty path.
        ("https://api.example:443", "https://api.example/"),
        ("http://api.example:80/x", "http://api.example/x"),
        ("http://api.example:8080/x", "http://api.example:8080/x"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://[::1]/x", "http://[::1]/x"),
        # RFC 9449 §4.3: query and fragment ignored.
        ("https://api.example/x?y=1#z", "https://api.example/x"),
    ],
)
def test_normalize_url(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "/relative",
        "ftp://api.example/",
        "https://user@api.example/",
        "https://a b/",
        "https://" + "a" * 5000,
    ],
)
def test_normalize_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        normalize_url(url)


def _scope(**fields: Any) -> dict[str, Any]:
    return {"type": "http", "scheme": "http", "path": "/", "headers": [], **fields}


def test_external_origin_from_scope() -> None:
    assert external_origin(_scope(headers=[(b"host", b"api.example:8000")])) == (
        "http://api.example:8000"
    )
    assert external_origin(_scope(scheme="wss", headers=[(b"host", b"h")])) == "https://h"
    assert external_origin(_scope(server=("10.0.0.1", 8000))) == "http://10.0.0.1:8000"
    assert external_origin(_scope(server=("::1", 80))) == "http://[::1]:80"
    with pytest.raises(ValueError):  # noqa: PT011
        external_origin(_scope())
    with pytest.raises(ValueError):  # noqa: PT011
        external_origin(_scope(headers=[(b"host", b"a/b")]))


def test_request_url_keeps_root_path_and_encodes_the_path() -> None:
    scope = _scope(path="/api/items/a b", root_path="/api")
    assert request_url(scope, "https://h/") == "https://h/api/items/a%20b"
    # A server that leaves the root path out of `path`.
    assert request_url(_scope(path="/items", root_path="/api"), "https://h") == (
        "https://h/api/items"
    )
