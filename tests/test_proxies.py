"""TrustedProxies: the client address behind trusted proxies (uvicorn's rules, RFC 7239)."""

from __future__ import annotations

import pytest

from apiguard import ConfigurationError
from apiguard.proxies import ForwardedHop, TrustedProxies
from apiguard.types import Scope


def scope(peer: str | None, *headers: tuple[str, str]) -> Scope:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 1234),
        "headers": [(n.lower().encode(), v.encode("latin-1")) for n, v in headers],
    }


TRUSTED = ["127.0.0.1", "10.0.0.0/8", "::1", "/run/proxy.sock"]


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        pytest.param("203.0.113.5", [], "203.0.113.5", id="no-header"),
        pytest.param(
            "203.0.113.5",
            [("X-Forwarded-For", "1.2.3.4")],
            "203.0.113.5",
            id="untrusted-peer-spoof",
        ),
        pytest.param(
            "203.0.113.5",
            [("Forwarded", "for=1.2.3.4")],
            "203.0.113.5",
            id="untrusted-peer-forwarded-spoof",
        ),
        pytest.param("127.0.0.1", [("X-Forwarded-For", "1.2.3.4")], "1.2.3.4", id="one-proxy"),
        pytest.param(
            "10.0.0.1",
            [("X-Forwarded-For", "6.6.6.6, 1.2.3.4, 10.0.0.2")],
            "1.2.3.4",
            id="rightmost-untrusted",
        ),
        pytest.param(
            "10.0.0.1",
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "1.2.3.4")],
            "1.2.3.4",
            id="several-fields-one-list",
        ),
        pytest.param(
            "10.0.0.1", [("X-Forwarded-For", "10.0.0.3, 10.0.0.2")], "10.0.0.3", id="all-trusted"
        ),
        pytest.param(
            "10.0.0.1", [("X-Forwarded-For", "1.2.3.4:5678")], "1.2.3.4", id="ipv4-with-port"
        ),
        pytest.param(
            "::1", [("X-Forwarded-For", "[2001:db8::1]:443")], "2001:db8::1", id="ipv6-with-port"
        ),
        pytest.param(
            "::ffff:10.0.0.9", [("X-Forwarded-For", "1.2.3.4")], "1.2.3.4", id="ipv4-mapped-peer"
        ),
        pytest.param(
            "/run/proxy.sock", [("X-Forwarded-For", "1.2.3.4")], "1.2.3.4", id="unix-socket"
        ),
        # RFC 7239 §4 / §6
        pytest.param(
            "10.0.0.1",
            [("Forwarded", 'for=6.6.6.6, for="[2001:db8::7]:80";proto=https')],
            "2001:db8::7",
            id="forwarded-quoted-ipv6",
        ),
        pytest.param(
            "10.0.0.1",
            [("Forwarded", "for=1.2.3.4"), ("X-Forwarded-For", "6.6.6.6")],
            "1.2.3.4",
            id="forwarded-wins",
        ),
        pytest.param(
            "10.0.0.1", [("Forwarded", "for=_hidden")], "10.0.0.1", id="obfuscated-is-the-peer"
        ),
        pytest.param(
            "10.0.0.1", [("Forwarded", "for=unknown")], "10.0.0.1", id="unknown-is-the-peer"
        ),
        pytest.param("10.0.0.1", [("Forwarded", "for")], "10.0.0.1", id="malformed-forwarded"),
        pytest.param(None, [("X-Forwarded-For", "1.2.3.4")], "", id="no-peer"),
    ],
)
def test_client_address(peer: str | None, headers: list[tuple[str, str]], client: str) -> None:
    assert TrustedProxies(TRUSTED).client_address(scope(peer, *headers)) == client


def test_star_trusts_every_peer() -> None:
    proxies = TrustedProxies(["*"])
    assert proxies.client_address(scope("203.0.113.5", ("X-Forwarded-For", "1.2.3.4"))) == "1.2.3.4"


def test_only_the_chosen_headers_are_read() -> None:
    proxies = TrustedProxies(["10.0.0.1"], headers=["forwarded"])
    request = scope("10.0.0.1", ("X-Forwarded-For", "1.2.3.4"))
    assert proxies.client_address(request) == "10.0.0.1"


def test_forwarded_scheme_and_host_are_there_for_the_asking() -> None:
    """The client's hop also carries the scheme and host it used (for later features)."""
    proxies = TrustedProxies(["10.0.0.1"])
    forwarded = scope("10.0.0.1", ("Forwarded", 'for=1.2.3.4;proto=https;host="api.example"'))
    assert proxies.client_hop(forwarded) == ForwardedHop("1.2.3.4", "https", "api.example")
    x_forwarded = scope(
        "10.0.0.1",
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example"),
    )
    assert proxies.client_hop(x_forwarded) == ForwardedHop("1.2.3.4", "https", "api.example")
    assert proxies.client_hop(scope("203.0.113.5")) is None


def test_hops_are_bounded() -> None:
    """Attacker input is read only so far: a huge header costs bounded work."""
    proxies = TrustedProxies(["10.0.0.1"])
    long = ", ".join(f"1.2.3.{n % 250}" for n in range(10000))
    assert len(proxies.hops(scope("10.0.0.1", ("X-Forwarded-For", long)))) <= 32


@pytest.mark.parametrize(
    ("hosts", "kwargs"),
    [("127.0.0.1", {}), (["10.0.0.0/33"], {}), ([], {"headers": ["x-real-ip"]})],
)
def test_bad_configuration(hosts: object, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        TrustedProxies(hosts, **kwargs)  # type: ignore[arg-type]


def test_repr_lists_the_trusted() -> None:
    assert (
        repr(TrustedProxies(["10.0.0.0/8", "127.0.0.1"]))
        == "TrustedProxies(['127.0.0.1', '10.0.0.0/8'])"
    )
    assert repr(TrustedProxies(["*"])) == "TrustedProxies(['*'])"


def with_host(request: Scope, scheme: str = "http", host: str = "app:8000") -> Scope:
    request["scheme"] = scheme
    request["headers"].append((b"host", host.encode()))
    return request


@pytest.mark.parametrize(
    ("peer", "headers", "origin"),
    [
        pytest.param("203.0.113.5", [], "http://app:8000", id="no-proxy"),
        pytest.param(
            "203.0.113.5",
            [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"),
             ("X-Forwarded-For", "1.2.3.4")],
            "http://app:8000",
            id="untrusted-peer-ignored",
        ),
        pytest.param(
            "10.0.0.1",
            [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
             ("X-Forwarded-Host", "api.example")],
            "https://api.example",
            id="x-forwarded",
        ),
        pytest.param(
            "10.0.0.1",
            [("Forwarded", 'for=1.2.3.4;proto=https;host="api.example:8443"')],
            "https://api.example:8443",
            id="forwarded-rfc7239-s5.3-s5.4",
        ),
        pytest.param(
            "10.0.0.1",
            [("Forwarded", 'for=1.2.3.4;proto=https;host="api.example", for=10.0.0.2')],
            "https://api.example",
            id="two-trusted-proxies",
        ),
        pytest.param(
            "10.0.0.1",
            [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "gopher"),
             ("X-Forwarded-Host", "bad host/")],
            "http://app:8000",
            id="malformed-ignored",
        ),
        pytest.param(
            "10.0.0.1",
            [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "wss")],
            "https://app:8000",
            id="websocket-scheme",
        ),
    ],
)  # fmt: skip
def test_origin_is_the_one_the_client_used(
    peer: str, headers: list[tuple[str, str]], origin: str
) -> None:
    proxies = TrustedProxies(TRUSTED)
    assert proxies.origin(with_host(scope(peer, *headers))) == origin
