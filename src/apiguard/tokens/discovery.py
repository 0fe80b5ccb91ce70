"""Authorization server metadata: RFC 8414, falling back to OpenID Connect Discovery."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apiguard._observe import backend_call
from apiguard.exceptions import BackendUnavailableError
from apiguard.tokens._http import DEFAULT_TIMEOUT, AsyncHTTPClient, check_url, get_json

__all__ = ["discover", "metadata_urls"]

logger = logging.getLogger("apiguard.tokens")


def metadata_urls(issuer: str) -> tuple[str, str]:
    """Where an issuer's metadata lives, in the order they are tried.

    RFC 8414 §3.1 inserts `/.well-known/oauth-authorization-server` between the host
    and the issuer's path; OpenID Connect Discovery §4 appends
    `/.well-known/openid-configuration` to the issuer (RFC 8414 §5).
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    oidc = issuer.rstrip("/") + "/.well-known/openid-configuration"
    return rfc8414, oidc


async def discover(
    client: AsyncHTTPClient, issuer: str, *, timeout: float = DEFAULT_TIMEOUT
) -> Mapping[str, Any]:
    """Fetch the issuer's metadata and check that it names the same issuer.

    `client` is an `httpx.AsyncClient` or an `httpx2.AsyncClient`; `timeout` bounds
    each step of each request (connect, each read), whatever the client's own.

    Raises:
        BackendUnavailableError: Neither document could be had, or the metadata names
            another issuer (RFC 8414 §3.3: then it MUST NOT be used).
    """
    check_url(issuer, "issuer")
    errors: list[str] = []
    for url in metadata_urls(issuer):
        try:
            with backend_call("discovery"):
                metadata, _ = await get_json(
                    client, url, "authorization server metadata", timeout=timeout
                )
        except BackendUnavailableError as exc:
            errors.append(str(exc))
            continue
        if metadata.get("issuer") != issuer:
            # RFC 8414 §3.3 / OIDC Discovery §4.3: the issuer must be identical.
            logger.error(
                "metadata at %s names issuer %r, not %r: refusing it",
                url,
                metadata.get("issuer"),
                issuer,
            )
            raise BackendUnavailableError("authorization server metadata names another issuer")
        return metadata
    raise BackendUnavailableError("; ".join(errors))
