"""examples/fastmcp_server.py over a real uvicorn: bearer tokens from the real
authorization server, the MCP Python SDK's own client, and the MCP authorization
specification's rules for a resource server (RFC 9728 metadata, challenges naming it
and the scopes, tokens only for this server)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from ..server_support import serve
from .conftest import API, AuthorizationServer, mcp_example

pytestmark = pytest.mark.anyio


@pytest.fixture
def example(
    authorization_server: AuthorizationServer, port: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    with mcp_example("examples.fastmcp_server", authorization_server, port, monkeypatch) as module:
        yield module


async def test_fastmcp_example(
    example: ModuleType, authorization_server: AuthorizationServer, port: int
) -> None:
    resource = f"http://127.0.0.1:{port}/mcp"
    reader = authorization_server.token(resource, scope="items:read")
    writer = authorization_server.token(resource, scope="items:write")
    other_api = authorization_server.token(f"{API}/rs256", scope="items:read")
    with serve(example.app, port=port, lifespan="on") as served:
        base = f"http://127.0.0.1:{served}"
        async with httpx.AsyncClient(base_url=base) as plain:
            metadata = await plain.get("/.well-known/oauth-protected-resource/mcp")
            anonymous = await plain.post("/mcp", json={})
            short = await plain.post("/mcp", json={}, headers={"Authorization": f"Bearer {writer}"})
            elsewhere = await plain.post(
                "/mcp", json={}, headers={"Authorization": f"Bearer {other_api}"}
            )
        headers = {"Authorization": f"Bearer {reader}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(resource, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("count_items", {"kind": "hammer"})
    link = f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"'
    # RFC 9728 §2, §3.1: the metadata, at the path-suffixed well-known URL.
    assert metadata.json()["resource"] == resource
    assert metadata.json()["authorization_servers"] == [authorization_server.issuer]
    assert metadata.json()["scopes_supported"] == ["items:read"]
    # RFC 9728 §5.1: every 401 points to it.
    assert anonymous.status_code == 401
    assert link in anonymous.headers["www-authenticate"]
    # RFC 6750 §3.1: 403 insufficient_scope names the scope the call needs.
    assert short.status_code == 403
    assert 'error="insufficient_scope"' in short.headers["www-authenticate"]
    assert 'scope="items:read"' in short.headers["www-authenticate"]
    assert link in short.headers["www-authenticate"]
    # A token issued for another API is not accepted here (RFC 8707, RFC 9068 §4: aud).
    assert elsewhere.status_code == 401
    assert 'error="invalid_token"' in elsewhere.headers["www-authenticate"]
    assert result.structured_content == {"result": 3}


def test_fastmcp_example_names_its_missing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OAUTH_ISSUER", raising=False)
    monkeypatch.delenv("MCP_RESOURCE", raising=False)
    sys.modules.pop("examples.fastmcp_server", None)
    with pytest.raises(SystemExit, match="OAUTH_ISSUER and MCP_RESOURCE"):
        importlib.import_module("examples.fastmcp_server")
