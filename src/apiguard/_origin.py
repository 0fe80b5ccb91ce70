"""The external URL of a request, as the client wrote it, and URL normalisation.

DPoP proofs name the URL they were made for (`htu`, RFC 9449 §4.2), so the resource
server must know its own external URL. `external_origin(scope)` is the one place that
decides it: from a configured public base URL when there is one, else from the ASGI
scope (`scheme`, the `Host` header, or `server`). It never reads `X-Forwarded-*` or
`Forwarded`: behind a proxy, configure the public URL, or pass an origin function
that applies a trusted-proxy policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from apiguard.exceptions import ConfigurationError
from apiguard.types import Scope

__all__ = ["OriginFunction", "external_origin", "normalize_url", "request_url"]

OriginFunction = Callable[[Scope], str]
"""`origin(scope) -> "https://host[:port]"`: the external origin of a request."""

MAX_URL = 4096  # longer URLs (ours or a proof's `htu`) are refused, not parsed
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_WS_SCHEMES = {"ws": "http", "wss": "https"}
# RFC 3986 §2.3 unreserved characters: their percent-encodings are decoded (§6.2.2.2).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
# RFC 3986 §3.2.2 reg-name / IPv6 literal, with an optional port (§3.2.3).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(:[0-9]{0,5})?")
# Characters kept as they are when a decoded ASGI path is percent-encoded again.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def _host_header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"host":
            host: str = value.decode("latin-1")
            return host
    return None


def external_origin(scope: Scope) -> str:
    """The origin a request was sent to, from the ASGI scope alone.

    Scheme from `scope["scheme"]` (`ws`/`wss` as `http`/`https`, since a websocket
    handshake is an HTTP request); host from the `Host` header, else from
    `scope["server"]`. The result is not normalised.

    Raises:
        ValueError: The `Host` header is not a host (with an optional port).
    """
    scheme = str(scope.get("scheme", "http")).lower()
    scheme = _WS_SCHEMES.get(scheme, scheme)
    host = _host_header(scope)
    if host is None:
        server = scope.get("server")
        if not server:
            raise ValueError("no Host header and no server address")
        name, port = server[0], server[1]
        host = f"[{name}]" if ":" in str(name) else str(name)
        if port is not None:
            host = f"{host}:{port}"
    if len(host) > 255 or not _HOST.fullmatch(host):
        raise ValueError("Host header is not a host")
    return f"{scheme}://{host}"


def request_url(scope: Scope, origin: str) -> str:
    """`origin` followed by the request path (root path included), without the query.

    ASGI servers put the root path at the start of `path`; one that does not (older
    servers did not) gets it added.
    """
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and not path.startswith(root):
        path = root + path
    return origin.rstrip("/") + quote(path, safe=_PATH_SAFE)


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 §5.2.4.
    output: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if output:
                output.pop()
        elif segment != ".":
            output.append(segment)
    if path.endswith(("/.", "/..")):
        output.append("")
    return "/" + "/".join(output)


def normalize_url(url: str) -> str:
    """An absolute http(s) URL in normal form, without its query and fragment.

    RFC 3986 §6.2.2 syntax-based normalisation (scheme and host in lower case,
    percent-encodings in upper case and decoded where they encode an unreserved
    character, dot segments removed) and §6.2.3 scheme-based normalisation (the
    default port dropped, an empty path written `/`). RFC 9449 §4.3 compares `htu`
    this way, ignoring the query and the fragment.

    Raises:
        ValueError: Not an absolute http or https URL, or longer than 4096 characters.
    """
    if len(url) > MAX_URL:
        raise ValueError("URL too long")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc or "@" in parts.netloc:
        raise ValueError("not an absolute http(s) URL without user information")
    if not _HOST.fullmatch(parts.netloc):
        raise ValueError("not a host")
    host, _, port = (
        parts.netloc.rpartition(":")
        if not parts.netloc.endswith("]")
        else (
            parts.netloc,
            "",
            "",
        )
    )
    if not host:  # no port
        host, port = parts.netloc, ""
    host = _PCT.sub(_decode_unreserved, host).lower()
    port = port.lstrip("0") or ("0" if port else "")
    netloc = host if port in ("", _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _PCT.sub(_decode_unreserved, parts.path) or "/"
    return f"{scheme}://{netloc}{_remove_dot_segments(path)}"


def check_base_url(url: str, name: str) -> str:
    """A configured public base URL (`https://api.example/prefix`), without a trailing `/`."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"{name} must be an http(s) URL without query or fragment")
    return url.rstrip("/")
