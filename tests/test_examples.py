from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anyio
import pytest
from starlette.testclient import TestClient

from apiguard.keys import KeyManager

from .conftest import PEPPER

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fastapi_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    monkeypatch.setenv("APIGUARD_STORE", f"sqlite:///{tmp_path}/keys.db")
    sys.modules.pop("examples.fastapi_app", None)
    yield importlib.import_module("examples.fastapi_app")
    sys.modules.pop("examples.fastapi_app", None)


def test_fastapi_example(fastapi_example: ModuleType) -> None:
    """The demo app: health is open, items need a key, writing needs items:write."""
    manager = KeyManager(fastapi_example.store)
    reader = anyio.run(lambda: manager.create("reader", scopes=["items:read"]))
    writer = anyio.run(lambda: manager.create("writer", scopes=["items:read", "items:write"]))
    with TestClient(fastapi_example.app) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/openapi.json").status_code == 200
        denied = client.get("/items")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == 'ApiKey realm="api"'
        listed = client.get("/items", headers={"X-API-Key": reader.key})
        assert listed.status_code == 200
        assert listed.json()["caller"] == "reader"
        assert (
            client.post("/items?name=drill", headers={"X-API-Key": reader.key}).status_code == 403
        )
        added = client.post("/items?name=drill", headers={"X-API-Key": writer.key})
        assert added.status_code == 201
        assert added.json() == {"added": "drill", "by": writer.record.key_id}


def test_starlette_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    sys.modules.pop("examples.starlette_app", None)
    module = importlib.import_module("examples.starlette_app")
    issued = anyio.run(lambda: KeyManager(module.store).create("hello", scopes=["a"]))
    with TestClient(module.app) as client:
        assert client.get("/").status_code == 401
        response = client.get("/", headers={"X-API-Key": issued.key})
        assert response.json() == {"hello": "hello", "scopes": ["a"]}


def test_scripts_are_valid_bash() -> None:
    for script in [
        "scripts/install",
        "scripts/check",
        "scripts/test",
        "scripts/test-wheel",
        "scripts/demo",
        ".ci/run",
    ]:
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)  # noqa: S603, S607


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo" in readme
    assert "bash scripts/test" in readme
    assert "bash scripts/test" in (ROOT / ".ci/run").read_text()
