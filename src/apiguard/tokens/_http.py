"""Bounded JSON over HTTP for discovery, JWKS and introspection.

Every outbound call has a timeout, a size cap on the response and one error type:
`BackendUnavailableError` (503 for the caller) when the server cannot be reached or
answers with something that is not the expected JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from apiguard.exceptions import BackendUnavailableError, ConfigurationError

__all__ = ["MAX_RESPONSE_BYTES", "check_url", "get_json", "read_json"]

MAX_RESPONSE_BYTES = 512 * 1024
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def check_url(url: str, what: str) -> str:
    """Refuse URLs other than https (plain http is allowed on loopback only, for tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        if parts.fragment:
            raise ConfigurationError(f"{what} must not have a fragment: {url!r}")
        return url
    raise ConfigurationError(f"{what} must be an https URL: {url!r}")


async def read_json(response: httpx.Response, what: str) -> Mapping[str, Any]:
    """The response body as a JSON object, read up to `MAX_RESPONSE_BYTES`."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_RESPONSE_BYTES:
            raise BackendUnavailableError(
                f"{what}: response larger than {MAX_RESPONSE_BYTES} bytes"
            )
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackendUnavailableError(f"{what}: response is not JSON") from exc
    if not isinstance(data, dict):
        raise BackendUnavailableError(f"{what}: response is not a JSON object")
    return data


async def get_json(
    client: httpx.AsyncClient, url: str, what: str
) -> tuple[Mapping[str, Any], httpx.Headers]:
    """GET `url` and return its JSON object and headers; any failure is a 503."""
    try:
        async with client.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise BackendUnavailableError(f"{what}: HTTP {response.status_code}")
            return await read_json(response, what), response.headers
    except httpx.HTTPError as exc:
        raise BackendUnavailableError(f"{what}: {type(exc).__name__}") from exc
