"""`TrustedProxies`: who the client is when requests come through proxies you run.

The peer of a connection (`scope["client"]`) is the last proxy, not the client, when
the app runs behind a load balancer. Proxies say who they forwarded for in
`X-Forwarded-For` (de facto) or `Forwarded` (RFC 7239). Anyone can send those headers,
so they are believed only from peers listed as trusted, and only as far back as the
chain stays trusted: the client is the rightmost address that is not a trusted proxy
(each proxy appends the address it received the request from). The rules are those
of uvicorn's `ProxyHeadersMiddleware` (trusted hosts and networks, rightmost
untrusted address); `Forwarded` is read too, and wins when both are sent.

A proxy that appends the address it saw but passes on what the client sent before
it is the common case, and why the leftmost address of the header proves nothing: a
client can write any address there itself.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from apiguard._origin import _HOST, _WS_SCHEMES, external_origin
from apiguard.exceptions import ConfigurationError
from apiguard.types import Scope

__all__ = ["ForwardedHop", "TrustedProxies"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Bounded work for attacker input: hops beyond these are not read.
MAX_HOPS = 32
MAX_HEADER_LENGTH = 4096
_X_FORWARDED_FOR = b"x-forwarded-for"
_X_FORWARDED_PROTO = b"x-forwarded-proto"
_X_FORWARDED_HOST = b"x-forwarded-host"
_FORWARDED = b"forwarded"
# RFC 7239 §4: forwarded-pair = token "=" value, value = token / quoted-string.
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


@dataclass(frozen=True, slots=True)
class ForwardedHop:
    """What one proxy said about the request it forwarded.

    Attributes:
        address: The address it received the request from (`for`), without a port;
            `""` when it gave none or an obfuscated one (RFC 7239 §6.3, `_hidden`).
        proto: The scheme of that request (`proto`, `X-Forwarded-Proto`), if given.
        host: The `Host` of that request (`host`, `X-Forwarded-Host`), if given.
    """

    address: str
    proto: str | None = None
    host: str | None = None


def _strip_port(value: str) -> str:
    """`1.2.3.4:80` -> `1.2.3.4`, `[::1]:80` -> `::1`; anything else unchanged."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several
        return value.split(":", 1)[0]
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_forwarded(value: str) -> list[ForwardedHop]:
    """The hops of a `Forwarded` field value (RFC 7239 §4), oldest first.

    A malformed element ends the list there: what follows it cannot be attributed.
    """
    hops: list[ForwardedHop] = []
    for element in value.split(",")[:MAX_HOPS]:
        pairs: dict[str, str] = {}
        for part in element.split(";"):
            if not part.strip():
                continue
            match = _PAIR.fullmatch(part)
            if match is None:
                return hops
            pairs[match[1].lower()] = _unquote(match[2])
        hops.append(
            ForwardedHop(
                address=_address(pairs.get("for", "")),
                proto=pairs.get("proto"),
                host=pairs.get("host"),
            )
        )
    return hops


def _address(value: str) -> str:
    host = _strip_port(value)
    # RFC 7239 §6: "unknown" and obfuscated identifiers ("_hidden") are no address.
    return "" if host.lower() == "unknown" or host.startswith("_") else host


class TrustedProxies:
    """The proxies whose forwarding headers are believed.

    `TrustedProxies(["10.0.0.0/8", "127.0.0.1"])`

    Args:
        hosts: Addresses (`"127.0.0.1"`, `"::1"`) and networks in CIDR notation
            (`"10.0.0.0/8"`) of your own proxies, or other names the server puts
            in `scope["client"]` (a unix socket path). `"*"` trusts every peer:
            only for an app that no one can reach but through your proxy. Empty:
            no headers are believed and the client is the peer.
        headers: Which headers to read: `"forwarded"` (RFC 7239),
            `"x-forwarded-for"`, or both (the default; `Forwarded` wins when a
            request carries both).

    Raises:
        ConfigurationError: A host is neither an address, a network nor a name,
            or `headers` names an unknown header.
    """

    def __init__(
        self,
        hosts: Iterable[str] = (),
        *,
        headers: Iterable[str] = ("forwarded", "x-forwarded-for"),
    ) -> None:
        if isinstance(hosts, str):
            raise ConfigurationError("TrustedProxies takes a collection of hosts, not str")
        self._always = False
        self._addresses: set[_IPAddress] = set()
        self._networks: list[_IPNetwork] = []
        self._names: set[str] = set()
        for host in hosts:
            host = host.strip()
            if host == "*":
                self._always = True
            elif "/" in host and not host.startswith("/"):
                try:
                    self._networks.append(ipaddress.ip_network(host, strict=False))
                except ValueError:
                    raise ConfigurationError(f"not a network: {host!r}") from None
            elif host:
                try:
                    self._addresses.add(ipaddress.ip_address(host))
                except ValueError:
                    self._names.add(host)  # a unix socket path, say
        chosen = {name.lower() for name in headers}
        unknown = chosen - {"forwarded", "x-forwarded-for"}
        if unknown:
            raise ConfigurationError(f"unknown forwarding headers: {sorted(unknown)}")
        self._read_forwarded = "forwarded" in chosen
        self._read_x_forwarded = "x-forwarded-for" in chosen
        self._trusts = functools.lru_cache(maxsize=4096)(self._compute_trust)

    def __repr__(self) -> str:
        hosts = sorted(map(str, self._addresses)) + sorted(map(str, self._networks))
        return f"TrustedProxies({['*'] if self._always else hosts + sorted(self._names)})"

    def trusts(self, host: str | None) -> bool:
        """Whether `host` (an address or a name) is one of the trusted proxies."""
        if self._always:
            return True
        if not host or len(host) > 253:
            return False
        return self._trusts(host)

    def _compute_trust(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self._names
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        return address in self._addresses or any(address in net for net in self._networks)

    def hops(self, scope: Scope) -> list[ForwardedHop]:
        """The forwarding hops the request carries, oldest first, read from the
        headers chosen; empty unless the peer is trusted."""
        client = scope.get("client")
        if not client or not self.trusts(client[0]):
            return []
        forwarded: list[bytes] = []
        x_for: list[bytes] = []
        proto: bytes | None = None
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name == _FORWARDED:
                forwarded.append(value)
            elif name == _X_FORWARDED_FOR:
                x_for.append(value)
            elif name == _X_FORWARDED_PROTO:
                proto = value
            elif name == _X_FORWARDED_HOST:
                host = value
        if self._read_forwarded and forwarded:
            # RFC 7239 §4: several fields are one list, in order.
            text = b",".join(forwarded)[:MAX_HEADER_LENGTH].decode("latin-1")
            return parse_forwarded(text)
        if self._read_x_forwarded and x_for:
            text = b",".join(x_for)[:MAX_HEADER_LENGTH].decode("latin-1")
            hops = [ForwardedHop(_address(part)) for part in text.split(",")[-MAX_HOPS:]]
            # X-Forwarded-Proto/-Host describe the request the first trusted
            # proxy received, that is the newest hop.
            hops[-1] = ForwardedHop(
                hops[-1].address,
                proto=None if proto is None else proto.decode("latin-1").strip(),
                host=None if host is None else host.decode("latin-1").strip(),
            )
            return hops
        return []

    def client_hop(self, scope: Scope) -> ForwardedHop | None:
        """The hop that names the client: the rightmost one whose address is not a
        trusted proxy, or the oldest if all are; `None` when no header is believed."""
        hops = self.hops(scope)
        if not hops:
            return None
        for hop in reversed(hops):
            if not self.trusts(hop.address):
                return hop
        return hops[0]

    def origin(self, scope: Scope) -> str:
        """The origin the client sent the request to, `scheme://host[:port]`.

        From the forwarded `proto` and `host` (`Forwarded`, or `X-Forwarded-Proto`
        and `X-Forwarded-Host`) when the peer is a trusted proxy and they are well
        formed, else from the scope (`apiguard._origin.external_origin`). Pass it
        to `DPoPAuth(origin=proxies.origin)` so that a proof's `htu` is compared
        with the URL the client used (RFC 9449 §4.3).

        Raises:
            ValueError: No usable host, in the headers or the scope.
        """
        origin = external_origin(scope)
        hops = self.hops(scope)
        if not hops:
            return origin
        client = self.client_hop(scope)
        start = hops.index(client) if client is not None else 0
        proto = next((h.proto for h in hops[start:] if h.proto), None)
        host = next((h.host for h in hops[start:] if h.host), None)
        scheme, _, current = origin.partition("://")
        if proto is not None and proto.lower() in ("http", "https", "ws", "wss"):
            scheme = _WS_SCHEMES.get(proto.lower(), proto.lower())
        if host is not None and len(host) <= 255 and _HOST.fullmatch(host):
            current = host
        return f"{scheme}://{current}"

    def client_address(self, scope: Scope) -> str:
        """The client's address: from the forwarding headers when the peer is a
        trusted proxy, else the peer's address; `""` when the server gives none."""
        hop = self.client_hop(scope)
        if hop is not None and hop.address:
            return hop.address
        client = scope.get("client")
        return str(client[0]) if client else ""
