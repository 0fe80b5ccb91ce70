"""A FastMCP server whose tools need a bearer token with a scope.

apiguard does what the MCP authorization specification (2025-11-25) asks of a
protected MCP server, in front of FastMCP's Streamable HTTP app:

- the protected resource metadata (RFC 9728) at
  `/.well-known/oauth-protected-resource/mcp`, naming the authorization server and
  the scopes;
- 401 with a challenge that points to that metadata (`resource_metadata`), and 403
  `insufficient_scope` naming every scope the call needs (RFC 6750 §3.1);
- only tokens issued for this server: `aud` must be its canonical URL (RFC 8707), so
  a token obtained for another API is refused, and the token is never passed on.

    export OAUTH_ISSUER=https://idp.example      # the authorization server
    export MCP_RESOURCE=https://mcp.example/mcp  # this server's URL, as clients call it
    uvicorn examples.fastmcp_server:app

Needs FastMCP: `pip install fastmcp`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from fastmcp import FastMCP

from apiguard import AuthMiddleware, BearerAuth, ProtectedResourceMetadata, ScopeRule, ScopeRules
from apiguard.tokens import JWTIntrospector

missing = [name for name in ("OAUTH_ISSUER", "MCP_RESOURCE") if not os.environ.get(name)]
if missing:  # the example's own settings: say which, without a traceback
    raise SystemExit(
        f"examples.fastmcp_server needs {' and '.join(missing)}:"
        " see the top of examples/fastmcp_server.py"
    )
ISSUER, RESOURCE = os.environ["OAUTH_ISSUER"], os.environ["MCP_RESOURCE"]
PATH = urlsplit(RESOURCE).path or "/mcp"
SCOPE = "items:read"


@asynccontextmanager
async def lifespan(server: FastMCP) -> AsyncIterator[None]:
    yield
    await introspector.aclose()


# Tokens are JWTs for this resource: RFC 8707 resource indicators make `aud` its URL.
introspector = JWTIntrospector.from_issuer(ISSUER, audience=RESOURCE)
mcp = FastMCP("Inventory", lifespan=lifespan)


@mcp.tool()
def count_items(kind: str) -> int:
    """How many items of a kind are in stock."""
    return {"hammer": 3, "saw": 1}.get(kind, 0)


# The middleware passes the lifespan through to FastMCP's app (its session manager).
app = AuthMiddleware(
    mcp.http_app(path=PATH),
    authenticators=[BearerAuth(introspector)],
    policies=[ScopeRules([ScopeRule(PATH, SCOPE)])],
    protected_resource=ProtectedResourceMetadata(
        RESOURCE,
        authorization_servers=[ISSUER],
        scopes_supported=[SCOPE],
        resource_name="Inventory MCP server (FastMCP)",
    ),
)
