"""An MCP server (MCP Python SDK, streamable HTTP) that only DPoP-bound tokens may call.

apiguard does what the MCP authorization spec asks of a protected MCP server: it
serves the protected resource metadata (RFC 9728) naming the authorization server,
answers 401 with a challenge pointing at it, and checks the access tokens, here
DPoP-bound ones (RFC 9449), so a stolen token is useless without the client's key.

    export OAUTH_ISSUER=https://idp.example      # the authorization server
    export MCP_RESOURCE=https://mcp.example/mcp  # this server's URL, as clients call it
    uvicorn examples.mcp_server:app

Needs the MCP Python SDK: `pip install mcp`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from mcp.server.mcpserver import MCPServer

from apiguard import AuthMiddleware, DPoPAuth, ProtectedResourceMetadata
from apiguard.tokens import JWTIntrospector

missing = [name for name in ("OAUTH_ISSUER", "MCP_RESOURCE") if not os.environ.get(name)]
if missing:  # the example's own settings: say which, without a traceback
    raise SystemExit(
        f"examples.mcp_server needs {' and '.join(missing)}: see the top of examples/mcp_server.py"
    )
ISSUER, RESOURCE = os.environ["OAUTH_ISSUER"], os.environ["MCP_RESOURCE"]


@asynccontextmanager
async def lifespan(server: MCPServer) -> AsyncIterator[None]:
    yield
    await introspector.aclose()


# Tokens are JWTs for this resource; RFC 8707 resource indicators make `aud` the URL.
introspector = JWTIntrospector.from_issuer(ISSUER, audience=RESOURCE)
mcp = MCPServer("Inventory", lifespan=lifespan)


@mcp.tool()
def count_items(kind: str) -> int:
    """How many items of a kind are in stock."""
    return {"hammer": 3, "saw": 1}.get(kind, 0)


app = AuthMiddleware(
    mcp.streamable_http_app(streamable_http_path=urlsplit(RESOURCE).path or "/mcp"),
    authenticators=[DPoPAuth(introspector)],
    protected_resource=ProtectedResourceMetadata(
        RESOURCE, authorization_servers=[ISSUER], resource_name="Inventory MCP server"
    ),
)
