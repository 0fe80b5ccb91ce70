"""OAuth 2.0 Protected Resource Metadata (RFC 9728), served by the middleware.

`AuthMiddleware(..., protected_resource=ProtectedResourceMetadata(...))` answers
`GET /.well-known/oauth-protected-resource` (with the resource's path appended,
RFC 9728 §3.1) without credentials, and names that URL in every challenge it sends
(`resource_metadata`, §5.1). What the document says about tokens comes from the
authenticators: `dpop_signing_alg_values_supported` from `DPoPAuth`,
`dpop_bound_access_tokens_required` when DPoP is accepted and Bearer is not,
`tls_client_certificate_bound_access_tokens` when client certificates are read.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.responses import Response

from apiguard.exceptions import ConfigurationError
from apiguard.tokens._http import check_url
from apiguard.types import Receive, Scope, Send

__all__ = ["WELL_KNOWN", "ProtectedResourceMetadata"]

WELL_KNOWN = "/.well-known/oauth-protected-resource"
"""The well-known URI suffix of RFC 9728 §3."""

# RFC 9728 §2: members computed by apiguard; `extra` may not set them.
_COMPUTED = frozenset(
    {
        "resource",
        "bearer_methods_supported",
        "dpop_signing_alg_values_supported",
        "dpop_bound_access_tokens_required",
        "tls_client_certificate_bound_access_tokens",
    }
)


class ProtectedResourceMetadata:
    """This API's RFC 9728 metadata document and where it is served.

    Args:
        resource: The resource identifier: the https URL clients call, exactly
            (RFC 9728 §3.3: clients compare it with the URL they used). No query,
            no fragment.
        authorization_servers: Issuer identifiers of the authorization servers
            whose tokens the API accepts.
        scopes_supported: Scopes the API understands (RECOMMENDED).
        resource_name: A human-readable name.
        resource_documentation: URL of documentation for developers.
        extra: Any other RFC 9728 §2 members (`jwks_uri`, `resource_policy_uri`, ...).
        max_age: Seconds clients and caches may keep the document
            (`Cache-Control: public, max-age=...`).

    Attributes:
        url: The metadata URL, sent as `resource_metadata` in challenges.
        path: The path the document is served at.
    """

    def __init__(
        self,
        resource: str,
        *,
        authorization_servers: Sequence[str] = (),
        scopes_supported: Collection[str] = (),
        resource_name: str | None = None,
        resource_documentation: str | None = None,
        extra: Mapping[str, Any] | None = None,
        max_age: int = 3600,
    ) -> None:
        check_url(resource, "resource")
        parts = urlsplit(resource)
        if parts.query:
            raise ConfigurationError("resource must not have a query")
        for server in authorization_servers:
            check_url(server, "authorization server")
        if max_age < 0:
            raise ConfigurationError("max_age cannot be negative")
        clash = sorted(_COMPUTED.intersection(extra or {}))
        if clash:
            raise ConfigurationError(f"extra cannot set {', '.join(clash)}: apiguard computes them")
        self.resource = resource
        # RFC 9728 §3.1: the well-known suffix goes between the host and the path;
        # a path of "/" alone adds nothing.
        suffix = parts.path.rstrip("/")
        self.path = WELL_KNOWN + suffix
        self.url = f"{parts.scheme}://{parts.netloc}{self.path}"
        self._fields: dict[str, Any] = {"resource": resource}
        if authorization_servers:
            self._fields["authorization_servers"] = list(authorization_servers)
        if scopes_supported:
            self._fields["scopes_supported"] = sorted(scopes_supported)
        if resource_name is not None:
            self._fields["resource_name"] = resource_name
        if resource_documentation is not None:
            check_url(resource_documentation, "resource_documentation")
            self._fields["resource_documentation"] = resource_documentation
        self._fields.update(extra or {})
        self._cache_control = f"public, max-age={max_age}"

    def __repr__(self) -> str:
        return f"ProtectedResourceMetadata(resource={self.resource!r})"

    def document(self, authenticators: Sequence[object]) -> dict[str, Any]:
        """The metadata document for a middleware accepting `authenticators`."""
        schemes = {getattr(each, "scheme", None) for each in authenticators}
        content = dict(self._fields)
        if schemes & {"Bearer", "DPoP"}:
            content["bearer_methods_supported"] = ["header"]  # RFC 6750 §2.1 only
        for each in authenticators:
            checker = getattr(each, "checker", None)
            if getattr(each, "scheme", None) == "DPoP" and checker is not None:
                content["dpop_signing_alg_values_supported"] = list(checker.algorithms)
        if "DPoP" in schemes:
            content["dpop_bound_access_tokens_required"] = "Bearer" not in schemes
        if any(getattr(each, "certificates", None) is not None for each in authenticators):
            content["tls_client_certificate_bound_access_tokens"] = True
        return content

    def responder(self, authenticators: Sequence[object]) -> _MetadataResponder:
        """The ASGI responder serving the document (built once)."""
        body = json.dumps(self.document(authenticators), separators=(",", ":")).encode()
        return _MetadataResponder(self.path, body, self._cache_control)


class _MetadataResponder:
    __slots__ = ("_body", "_cache_control", "path")

    def __init__(self, path: str, body: bytes, cache_control: str) -> None:
        self.path = path
        self._body = body
        self._cache_control = cache_control

    def matches(self, scope: Scope) -> bool:
        """A GET or HEAD of the metadata path (with or without the root path)."""
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            return False
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        return path == self.path or (bool(root) and path == root + self.path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = Response(self._body, media_type="application/json")
        response.headers["cache-control"] = self._cache_control
        await response(scope, receive, send)
