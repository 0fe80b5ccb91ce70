"""Bounded JSON over HTTP for discovery, JWKS and introspection.

Every outbound call has a timeout, a size cap on the response and one error type:
`BackendUnavailableError` (503 for the caller) when the server cannot be reached or
answers with something that is not the expected JSON object. The cap holds for the
decompressed body: gzip and deflate are decoded here, a bounded step at a time, so a
small compressed body cannot expand into memory before it is refused.

The client may be the application's own, an `httpx.AsyncClient` or an
`httpx2.AsyncClient` (httpx's maintained continuation, which Starlette's test
client uses): these bounds are set on each request, whatever the client's own
settings, and redirects are never followed.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import urlsplit

import httpx

from apiguard.exceptions import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "ACCEPT_ENCODING",
    "DEFAULT_TIMEOUT",
    "MAX_RESPONSE_BYTES",
    "AsyncHTTPClient",
    "check_client",
    "check_url",
    "client_errors",
    "get_json",
    "read_json",
]

AsyncHTTPClient = Union[httpx.AsyncClient, "httpx2.AsyncClient"]
"""An `httpx.AsyncClient` or an `httpx2.AsyncClient`: either may be passed as `http_client`."""

DEFAULT_TIMEOUT = 5.0
"""Seconds for each step of one HTTP request (connect, write, each read, pool wait)."""
MAX_RESPONSE_BYTES = 512 * 1024
# The codings read_json decodes; asked for explicitly, so that a server never picks
# br or zstd, which httpx would otherwise offer when their packages are installed.
ACCEPT_ENCODING = "gzip, deflate"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def check_url(url: str, what: str) -> str:
    """Refuse URLs other than https (plain http is allowed on loopback only, for tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        if parts.fragment:
            raise ConfigurationError(f"{what} must not have a fragment: {url!r}")
        return url
    raise ConfigurationError(f"{what} must be an https URL: {url!r}")


def _httpx2() -> Any:
    # httpx2 is not a dependency: when a client of it is passed in, the application
    # has imported it already.
    return sys.modules.get("httpx2")


def check_client(client: object, what: str = "http_client") -> None:
    """Refuse anything but an `httpx.AsyncClient` or an `httpx2.AsyncClient`."""
    httpx2 = _httpx2()
    kinds = (httpx.AsyncClient,) if httpx2 is None else (httpx.AsyncClient, httpx2.AsyncClient)
    if not isinstance(client, kinds):
        raise ConfigurationError(
            f"{what} must be an httpx.AsyncClient or an httpx2.AsyncClient,"
            f" not {type(client).__name__}"
        )


def client_errors(client: object) -> tuple[type[Exception], ...]:
    """What a failed request raises with `client`: its library's `HTTPError`."""
    httpx2 = _httpx2()
    if httpx2 is not None and isinstance(client, httpx2.AsyncClient):
        return (httpx2.HTTPError,)
    return (httpx.HTTPError,)


def _is_zlib_header(head: bytes) -> bool:
    # RFC 1950 §2.2: CM 8 (deflate), CINFO at most 7, CMF * 256 + FLG a multiple of 31.
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


def _coding(response: httpx.Response, what: str) -> str:
    codings = [
        coding.strip().lower()
        for coding in response.headers.get_list("content-encoding", split_commas=True)
    ]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if not codings:
        return "identity"
    if len(codings) > 1 or codings[0] not in ("gzip", "deflate"):
        raise BackendUnavailableError(
            f"{what}: unsupported content encoding {', '.join(codings)!r}"
        )
    return codings[0]


class _BoundedBody:
    """The decoded body, grown a bounded step at a time; never more than the cap plus one byte."""

    def __init__(self, coding: str, what: str) -> None:
        self.data = bytearray()
        self._coding = coding
        self._what = what
        self._head = b""  # deflate: the first bytes, until they tell zlib from raw deflate
        self._decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16) if coding == "gzip" else None

    def feed(self, chunk: bytes) -> None:
        if self._coding == "identity":
            self._append(chunk)
            return
        if self._decompressor is None:
            self._head += chunk
            if len(self._head) < 2:
                return
            chunk, self._head = self._head, b""
            # RFC 9110 §8.4.1.2: deflate is the zlib format, but some servers send raw
            # deflate (RFC 1951); read both, as httpx and browsers do.
            wbits = zlib.MAX_WBITS if _is_zlib_header(chunk) else -zlib.MAX_WBITS
            self._decompressor = zlib.decompressobj(wbits)
        while chunk:
            # max_length is at least 1 here: 0 would mean "no limit" to zlib.
            room = MAX_RESPONSE_BYTES + 1 - len(self.data)
            try:
                self._append(self._decompressor.decompress(chunk, room))
            except zlib.error as exc:
                raise BackendUnavailableError(
                    f"{self._what}: response is not valid {self._coding}"
                ) from exc
            chunk = self._decompressor.unconsumed_tail

    def _append(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_RESPONSE_BYTES:
            raise BackendUnavailableError(
                f"{self._what}: response larger than {MAX_RESPONSE_BYTES} bytes"
            )


async def read_json(response: httpx.Response, what: str) -> Mapping[str, Any]:
    """The response body as a JSON object, at most `MAX_RESPONSE_BYTES` once decoded."""
    if response.is_stream_consumed:
        # Read whole, and decoded by httpx, before it got here: a response built in
        # memory, such as a MockTransport handler's `httpx.Response(json=...)`.
        body = _BoundedBody("identity", what)
        body.feed(response.content)
    else:
        # Raw bytes, decoded here: httpx would expand each chunk without a limit.
        body = _BoundedBody(_coding(response, what), what)
        async for chunk in response.aiter_raw():
            body.feed(chunk)
    try:
        data = json.loads(body.data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deeply nested
        raise BackendUnavailableError(f"{what}: response is not JSON") from None
    if not isinstance(data, dict):
        raise BackendUnavailableError(f"{what}: response is not a JSON object")
    return data


async def get_json(
    client: AsyncHTTPClient, url: str, what: str, *, timeout: float = DEFAULT_TIMEOUT
) -> tuple[Mapping[str, Any], httpx.Headers]:
    """GET `url` and return its JSON object and headers; any failure is a 503.

    A redirect is a failure too (the client's `follow_redirects` is overridden): the
    metadata and keys of an issuer are where its configuration says they are.
    """
    try:
        async with client.stream(
            "GET",
            url,
            headers={"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING},
            timeout=timeout,
            follow_redirects=False,
        ) as response:
            if response.status_code != 200:
                raise BackendUnavailableError(f"{what}: HTTP {response.status_code}")
            # httpx2's Response and Headers are httpx's, under another module name.
            return await read_json(response, what), response.headers  # type: ignore[arg-type,return-value]
    except client_errors(client) as exc:
        raise BackendUnavailableError(f"{what}: {type(exc).__name__}") from exc
