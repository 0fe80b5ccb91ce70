"""examples/mcp_server.py over a real uvicorn, with DPoP-bound tokens from the real
authorization server and the MCP Python SDK's own client."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Generator, Iterator
from types import ModuleType

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from ..dpop_support import CLIENT_KEY, OTHER_KEY, proof
from ..server_support import serve
from .conftest import AuthorizationServer, mcp_example
from .test_sender_constrained import DPOP_CLIENT

pytestmark = pytest.mark.anyio


class DPoPAuth(httpx2.Auth):
    """What a DPoP client does: a new proof for every request (RFC 9449 §7.1)."""

    def __init__(self, token: str, key: object) -> None:
        self.token, self.key = token, key

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        htu = str(request.url.copy_with(query=None, fragment=None))
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = proof(self.token, htm=request.method, htu=htu, key=self.key)
        yield request


@pytest.fixture
def example(
    authorization_server: AuthorizationServer, port: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    with mcp_example("examples.mcp_server", authorization_server, port, monkeypatch) as module:
        yield module


def token_for(server: AuthorizationServer, resource: str) -> str:
    token_proof = proof(None, htm="POST", htu=f"{server.issuer}/token")
    token, token_type = server.bound_token(resource, DPOP_CLIENT, {"DPoP": token_proof})
    assert token_type == "DPoP"
    return token


async def test_mcp_example(
    example: ModuleType, authorization_server: AuthorizationServer, port: int
) -> None:
    resource = f"http://127.0.0.1:{port}/mcp"
    token = token_for(authorization_server, resource)
    with serve(example.app, port=port, lifespan="on") as served:
        base = f"http://127.0.0.1:{served}"
        async with httpx.AsyncClient(base_url=base) as plain:
            metadata = await plain.get("/.well-known/oauth-protected-resource/mcp")
            anonymous = await plain.post("/mcp", json={})
        async with (
            httpx2.AsyncClient(auth=DPoPAuth(token, CLIENT_KEY), timeout=30) as http,
            streamable_http_client(resource, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("count_items", {"kind": "hammer"})
        thief = httpx2.AsyncClient(auth=DPoPAuth(token, OTHER_KEY), timeout=30)
        async with thief:
            stolen = await thief.post(resource, json={})
    # RFC 9728 §3: the metadata names the authorization server; §5.1: the 401 points to it.
    assert metadata.json()["resource"] == resource
    assert metadata.json()["authorization_servers"] == [authorization_server.issuer]
    assert metadata.json()["dpop_bound_access_tokens_required"] is True
    assert anonymous.status_code == 401
    assert (
        f'resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"'
        in anonymous.headers["www-authenticate"]
    )
    assert result.structured_content == {"result": 3}
    # The same token with a proof from another key: refused (RFC 9449 §7.1).
    assert stolen.status_code == 401


def test_mcp_example_names_its_missing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OAUTH_ISSUER", raising=False)
    monkeypatch.delenv("MCP_RESOURCE", raising=False)
    sys.modules.pop("examples.mcp_server", None)
    with pytest.raises(SystemExit, match="OAUTH_ISSUER and MCP_RESOURCE"):
        importlib.import_module("examples.mcp_server")
