"""Responses from authorization servers: content codings and the size cap."""

from __future__ import annotations

import functools
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from apiguard import BackendUnavailableError
from apiguard.tokens import JWTIntrospector, RemoteIntrospector, TokenInfo, discover
from apiguard.tokens._http import MAX_RESPONSE_BYTES

from .token_support import AUDIENCE, ISSUER, FakeIssuer, mint

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response]
Fetch = Callable[[Handler], Awaitable[object]]


def deflate(data: bytes, wbits: int = zlib.MAX_WBITS) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


# coding name in the test -> (Content-Encoding sent, encoder)
CODINGS: dict[str, tuple[str | None, Callable[[bytes], bytes]]] = {
    "none": (None, bytes),
    "identity": ("identity", bytes),
    "gzip": ("gzip", functools.partial(gzip.compress, compresslevel=9, mtime=0)),
    # RFC 9110 §8.4.1.2: deflate is the zlib format; some servers send it raw.
    "deflate": ("deflate", deflate),
    "raw-deflate": ("deflate", functools.partial(deflate, wbits=-zlib.MAX_WBITS)),
    "GZIP-uppercase": ("GZIP", functools.partial(gzip.compress, mtime=0)),
}


def sent(content: bytes, content_encoding: str | None) -> httpx.Response:
    """A response whose content goes out as is: nothing in the test decodes it."""
    headers = {"Content-Type": "application/json"}
    if content_encoding is not None:
        headers["Content-Encoding"] = content_encoding
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(content))


def encoded(body: bytes, coding: str) -> httpx.Response:
    """A response carrying `body` compressed with `coding`."""
    name, encode = CODINGS[coding]
    return sent(encode(body), name)


@functools.cache
def bomb(coding: str) -> bytes:
    """50 MB of zeros, compressed to about 50 kB."""
    return CODINGS[coding][1](bytes(50 * 1024 * 1024))


def compressing(handler: Handler, coding: str) -> Handler:
    """`handler`, with each of its answers' bodies compressed with `coding`."""

    def compressed(request: httpx.Request) -> httpx.Response:
        response = handler(request)
        return encoded(response.content, coding) if response.status_code == 200 else response

    return compressed


def active_answer() -> bytes:
    now = int(time.time())
    answer = {"active": True, "sub": "svc", "aud": AUDIENCE, "exp": now + 300, "scope": "a"}
    return json.dumps(answer).encode()


def answer_active(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=json.loads(active_answer()))


def mock(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def fetch_metadata(handler: Handler) -> object:
    async with mock(handler) as client:
        return await discover(client, ISSUER)


async def fetch_jwks(handler: Handler) -> object:
    idp = FakeIssuer()

    def route(request: httpx.Request) -> httpx.Response:
        return handler(request) if request.url.path == "/jwks" else idp.handler(request)

    async with mock(route) as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        return await introspector.introspect(mint())


def remote_introspector(client: httpx.AsyncClient) -> RemoteIntrospector:
    return RemoteIntrospector(
        f"{ISSUER}/introspect",
        client_id="api",
        client_secret="not-a-real-secret",
        audience=AUDIENCE,
        http_client=client,
    )


async def introspect(handler: Handler) -> TokenInfo:
    async with mock(handler) as client:
        return await remote_introspector(client).introspect("t")


FETCHES = [
    pytest.param(fetch_metadata, id="metadata"),
    pytest.param(fetch_jwks, id="jwks"),
    pytest.param(introspect, id="introspection"),
]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
@pytest.mark.parametrize("fetch", FETCHES)
async def test_a_compression_bomb_is_refused_before_it_expands(fetch: Fetch, coding: str) -> None:
    """50 MB sent as 50 kB is a 503, and is never decoded much past the 512 KiB cap."""
    content, name = bomb(coding), CODINGS[coding][0]
    tracemalloc.start()
    try:
        with pytest.raises(BackendUnavailableError, match=f"larger than {MAX_RESPONSE_BYTES}"):
            await fetch(lambda request: sent(content, name))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize("coding", list(CODINGS))
async def test_compressed_metadata_and_jwks_are_read(coding: str) -> None:
    """gzip (RFC 9110 §8.4.1.3) and deflate (§8.4.1.2; raw deflate too) are decoded."""
    idp = FakeIssuer()
    async with mock(compressing(idp.handler, coding)) as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        assert (await introspector.introspect(mint())).active
    assert idp.requests == ["/.well-known/oauth-authorization-server", "/jwks"]


@pytest.mark.parametrize("coding", list(CODINGS))
async def test_compressed_introspection_answers_are_read(coding: str) -> None:
    """gzip (RFC 9110 §8.4.1.3) and deflate (§8.4.1.2; raw deflate too) are decoded."""
    assert (await introspect(compressing(answer_active, coding))).active


class Trickle(httpx.AsyncByteStream):
    """A body arriving one byte at a time."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index in range(len(self.content)):
            yield self.content[index : index + 1]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_answers_arriving_a_byte_at_a_time_are_read(coding: str) -> None:
    """Chunk boundaries do not matter, not even inside the zlib header."""
    name, encode = CODINGS[coding]
    content = encode(active_answer())

    def trickling(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": str(name)}, stream=Trickle(content))

    assert (await introspect(trickling)).active


@pytest.mark.parametrize("coding", ["gzip", "deflate", "none"])
@pytest.mark.parametrize(
    ("size", "accepted"), [(MAX_RESPONSE_BYTES, True), (MAX_RESPONSE_BYTES + 1, False)]
)
async def test_the_cap_is_on_the_decoded_size(coding: str, size: int, accepted: bool) -> None:
    """An answer of exactly 512 KiB once decoded is read; one byte more is a 503."""
    body = active_answer()

    def padded(request: httpx.Request) -> httpx.Response:
        return encoded(body + b" " * (size - len(body)), coding)

    if accepted:
        assert (await introspect(padded)).active
    else:
        with pytest.raises(BackendUnavailableError, match="larger than"):
            await introspect(padded)


@pytest.mark.parametrize(
    "content_encoding",
    ["br", "zstd", "compress", "x-gzip", "gzip, gzip", "deflate, gzip", "gzip, br"],
)
@pytest.mark.parametrize("fetch", FETCHES)
async def test_other_or_stacked_codings_are_503(fetch: Fetch, content_encoding: str) -> None:
    """Only gzip and deflate are asked for (Accept-Encoding); anything else is refused."""
    content = gzip.compress(b'{"active": true}')
    with pytest.raises(BackendUnavailableError, match="unsupported content encoding"):
        await fetch(lambda request: sent(content, content_encoding))


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
@pytest.mark.parametrize("fetch", FETCHES)
async def test_corrupt_compressed_bodies_are_503(fetch: Fetch, coding: str) -> None:
    """A body that does not decode as its Content-Encoding says is the server's fault."""
    content = b"\x1f\x8b\x08\x00 not really compressed"
    with pytest.raises(BackendUnavailableError, match=f"not valid {coding}"):
        await fetch(lambda request: sent(content, coding))


async def test_requests_ask_for_gzip_and_deflate_only() -> None:
    """Accept-Encoding (RFC 9110 §12.5.3) offers only what is decoded, whatever the client's."""
    idp = FakeIssuer()
    seen: list[str | None] = []

    def recording(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        if request.url.path == "/introspect":
            return answer_active(request)
        return idp.handler(request)

    # As httpx offers when brotli and zstandard are installed.
    offers = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    transport = httpx.MockTransport(recording)
    async with httpx.AsyncClient(transport=transport, headers=offers) as client:
        introspector = JWTIntrospector.from_issuer(ISSUER, audience=AUDIENCE, http_client=client)
        assert (await introspector.introspect(mint())).active
        assert (await remote_introspector(client).introspect("t")).active
    assert len(seen) == 3  # metadata, JWKS, introspection
    assert set(seen) == {"gzip, deflate"}
