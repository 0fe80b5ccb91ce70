"""The examples for tokens from any provider, websockets and a store of one's own, as run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from examples.custom_store import JSONFileKeyStore
from examples.provider_app import create_app
from starlette.testclient import TestClient, WebSocketDenialResponse

from apiguard.testing import FakeIssuer, KeyStoreContract

from .server_support import serve
from .test_examples import ROOT, clean_env, free_port, import_example, wait_until_serving
from .test_http_clients import IssuerServer
from .tls_support import make_pki


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- examples/provider_app.py --------------------------------------------------------


def test_provider_app_with_roles_and_typ_jwt_as_entra_sends_them() -> None:
    """Entra ID app tokens: `typ: JWT`, permissions in `roles`; ScopeRules by method."""
    issuer = FakeIssuer("https://login.example/tenant/v2.0", audience="api-client-id")
    settings = {
        "OAUTH_ISSUER": issuer.issuer,
        "OAUTH_AUDIENCE": "api-client-id",
        "OAUTH_SCOPE_CLAIMS": "roles",
        "OAUTH_ACCEPT_JWT_TYP": "true",
    }
    reader = issuer.mint(typ="JWT", scope=None, roles=["items:read"], azp="svc", client_id=None)
    with TestClient(create_app(settings, issuer.client())) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/items").status_code == 401
        listed = client.get("/items", headers=bearer(reader))
        assert listed.json() == {"items": ["hammer", "saw"], "client": "svc"}
        refused = client.post("/items?name=drill", headers=bearer(reader))
        assert refused.status_code == 403
        assert 'scope="items:write"' in refused.headers["www-authenticate"]
        writer = issuer.mint(typ="JWT", roles=["items:write"])
        assert client.post("/items?name=drill", headers=bearer(writer)).status_code == 201


def test_provider_app_refuses_typ_jwt_unless_told() -> None:
    issuer = FakeIssuer()
    settings = {"OAUTH_ISSUER": issuer.issuer, "OAUTH_AUDIENCE": issuer.audience}
    with TestClient(create_app(settings, issuer.client())) as client:
        assert client.get("/items", headers=bearer(issuer.mint(typ="JWT"))).status_code == 401
        assert client.get("/items", headers=bearer(issuer.mint())).status_code == 200


def test_provider_app_with_introspection() -> None:
    """With client credentials set, tokens go to the introspection endpoint (RFC 7662)."""
    issuer = FakeIssuer()
    settings = {
        "OAUTH_ISSUER": issuer.issuer,
        "OAUTH_AUDIENCE": issuer.audience,
        "OAUTH_CLIENT_ID": issuer.client_id,
        "OAUTH_CLIENT_SECRET": issuer.client_secret,
    }
    token = issuer.opaque_token(scope="items:read", client_id="svc")
    revoked = issuer.opaque_token(scope="items:read")
    issuer.revoke(revoked)
    with TestClient(create_app(settings, issuer.client())) as client:
        assert client.get("/items", headers=bearer(token)).json()["client"] == "svc"
        assert client.get("/items", headers=bearer(revoked)).status_code == 401
    assert "/introspect" in issuer.requests


def test_provider_app_names_its_missing_settings() -> None:
    with pytest.raises(SystemExit, match="needs OAUTH_ISSUER and OAUTH_AUDIENCE"):
        create_app({})


def test_provider_app_trusts_the_given_ca_bundle(tmp_path: Path) -> None:
    """OAUTH_CA_BUNDLE: the client verifies the provider with that bundle only."""
    files = make_pki(tmp_path)
    app = IssuerServer()
    with serve(app, ssl_certfile=files["server"]) as port:
        issuer = app.issuer = FakeIssuer(f"https://127.0.0.1:{port}")
        settings = {
            "OAUTH_ISSUER": issuer.issuer,
            "OAUTH_AUDIENCE": issuer.audience,
            "OAUTH_CA_BUNDLE": files["ca"],
        }
        with TestClient(create_app(settings)) as client:
            assert client.get("/items", headers=bearer(issuer.mint())).status_code == 200
        with TestClient(create_app(settings | {"OAUTH_CA_BUNDLE": ""})) as client:
            unverified = client.get("/items", headers=bearer(issuer.mint()))
            assert unverified.status_code == 503  # the system's CAs do not know this one


@pytest.fixture
def loopback_issuer() -> Iterator[IssuerServer]:
    app = IssuerServer()
    with serve(app) as port:
        app.issuer = FakeIssuer(f"http://127.0.0.1:{port}")
        yield app


def test_provider_app_runs_with_one_command(loopback_issuer: IssuerServer) -> None:
    """`uvicorn --factory examples.provider_app:create_app`, as its docstring says."""
    issuer, port = loopback_issuer.issuer, free_port()
    env = clean_env(OAUTH_ISSUER=issuer.issuer, OAUTH_AUDIENCE=issuer.audience)
    command = [sys.executable, "-m", "uvicorn", "--factory", "examples.provider_app:create_app"]
    process = subprocess.Popen(  # noqa: S603
        [*command, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/health")
        answer = httpx.get(f"http://127.0.0.1:{port}/items", headers=bearer(issuer.mint()))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert answer.json()["items"] == ["hammer", "saw"]


# --- examples/websocket_app.py -------------------------------------------------------


def test_websocket_example(capsys: pytest.CaptureFixture[str]) -> None:
    """The key printed at startup opens the socket, from the query or a header;
    without it, the handshake is refused with a 401 and the app never runs."""
    module = import_example("websocket_app")
    with TestClient(module.app) as client:
        line = capsys.readouterr().out.strip().splitlines()[-1]
        key = line.split("api_key=")[1].rstrip("'")
        with client.websocket_connect(f"/chat?api_key={key}") as ws:
            assert ws.receive_json() == {"hello": "alice"}
            ws.send_text("hi")
            assert ws.receive_json() == {"from": "alice", "said": "hi"}
        with client.websocket_connect("/chat", headers={"X-API-Key": key}) as ws:
            assert ws.receive_json() == {"hello": "alice"}
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect("/chat?api_key=apg_wrong"),
        ):
            pass  # pragma: no cover - refused
        assert denied.value.status_code == 401


# --- examples/custom_store.py --------------------------------------------------------


class TestJSONFileKeyStore(KeyStoreContract):
    """The store of one's own passes the contract every apiguard store passes."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> JSONFileKeyStore:
        return JSONFileKeyStore(tmp_path / "keys.json")


@pytest.mark.anyio
async def test_the_json_store_keeps_its_keys_across_restarts(tmp_path: Path) -> None:
    from apiguard.testing import make_record

    first = JSONFileKeyStore(tmp_path / "keys.json")
    await first.add(make_record("A" * 12, metadata={"team": "core"}))
    again = JSONFileKeyStore(tmp_path / "keys.json")
    assert await again.get("A" * 12) == make_record("A" * 12, metadata={"team": "core"})
    assert json.loads((tmp_path / "keys.json").read_text())[0]["key_id"] == "A" * 12


def test_custom_store_example_serves_its_printed_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYS_FILE", str(tmp_path / "keys.json"))
    module = import_example("custom_store")
    with TestClient(module.app) as client:
        key = capsys.readouterr().out.split("X-API-Key: ")[1].split("'")[0]
        assert client.get("/").status_code == 401
        assert client.get("/", headers={"X-API-Key": key}).json() == {"hello": "me"}
