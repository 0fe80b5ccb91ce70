"""examples/bearer_app.py against the real authorization server."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from starlette.testclient import TestClient

from apiguard.keys import KeyManager

from ..conftest import PEPPER
from .conftest import API, AuthorizationServer

AUDIENCE = f"{API}/rs256"


@pytest.fixture
def example(
    authorization_server: AuthorizationServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    monkeypatch.setenv("OAUTH_ISSUER", authorization_server.issuer)
    monkeypatch.setenv("OAUTH_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    monkeypatch.setenv("APIGUARD_STORE", f"sqlite:///{tmp_path}/keys.db")
    sys.modules.pop("examples.bearer_app", None)
    yield importlib.import_module("examples.bearer_app")
    sys.modules.pop("examples.bearer_app", None)


def test_bearer_example(example: ModuleType, authorization_server: AuthorizationServer) -> None:
    reader = authorization_server.token(AUDIENCE, scope="items:read")
    writer = authorization_server.token(AUDIENCE)
    key = anyio.run(
        lambda: KeyManager(example.store).create("batch-job", scopes=["items:write"])
    ).key
    with TestClient(example.app) as client:
        assert client.get("/health").status_code == 200
        missing = client.get("/items")
        assert missing.status_code == 401
        assert missing.headers.get_list("www-authenticate") == [
            'ApiKey realm="api"',
            'Bearer realm="api"',
        ]
        assert client.get("/items", headers={"Authorization": f"Bearer {reader}"}).json() == [
            "hammer",
            "saw",
        ]
        refused = client.post("/items?name=drill", headers={"Authorization": f"Bearer {reader}"})
        assert refused.status_code == 403
        assert (
            'scope="items:write", error="insufficient_scope"' in refused.headers["www-authenticate"]
        )
        added = client.post("/items?name=drill", headers={"Authorization": f"Bearer {writer}"})
        assert added.json() == {"added": "drill", "by": "service", "with": "bearer"}
        by_key = client.post("/items?name=saw", headers={"X-API-Key": key})
        assert by_key.json() == {"added": "saw", "by": "batch-job", "with": "api_key"}
