from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from apiguard.keys import IssuedKey, KeyManager, open_store

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
        refused = client.post("/items?name=drill", headers={"X-API-Key": reader.key})
        assert refused.status_code == 403
        assert refused.json()["error"] == "insufficient_scope"
        assert 'scope="items:write"' in refused.headers["www-authenticate"]
        added = client.post("/items?name=drill", headers={"X-API-Key": writer.key})
        assert added.status_code == 201
        assert added.json() == {"added": "drill", "by": writer.record.key_id}


def import_example(name: str) -> ModuleType:
    sys.modules.pop(f"examples.{name}", None)
    return importlib.import_module(f"examples.{name}")


def test_starlette_example_prints_a_key_that_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a store URL: keys in memory, one made at startup and printed."""
    monkeypatch.delenv("APIGUARD_STORE", raising=False)
    monkeypatch.delenv("APIGUARD_PEPPER", raising=False)
    module = import_example("starlette_app")
    with TestClient(module.app) as client:
        curl = capsys.readouterr().out.strip().splitlines()[-1]
        key = curl.split("'X-API-Key: ")[1].split("'")[0]
        assert client.get("/").status_code == 401
        assert client.get("/", headers={"X-API-Key": key}).json() == {
            "hello": "example",
            "scopes": ["items:read", "items:write"],
        }
        added = client.post("/items?name=drill", headers={"X-API-Key": key})
        assert added.status_code == 201
        unnamed = client.post("/items", headers={"X-API-Key": key})
        assert unnamed.status_code == 422


def test_bearer_example_names_its_missing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OAUTH_ISSUER", raising=False)
    monkeypatch.setenv("OAUTH_AUDIENCE", "https://api.example")
    with pytest.raises(SystemExit, match="needs OAUTH_ISSUER"):
        import_example("bearer_app")


def test_starlette_example_with_a_store_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With APIGUARD_STORE: keys made with the CLI; none is printed; scopes are checked."""
    url = f"sqlite:///{tmp_path}/keys.db"
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    monkeypatch.setenv("APIGUARD_STORE", url)
    module = import_example("starlette_app")

    async def make_reader() -> IssuedKey:
        async with open_store(url) as store:  # type: ignore[attr-defined]
            issued: IssuedKey = await KeyManager(store).create("r", scopes=["items:read"])
            return issued

    reader = anyio.run(make_reader)
    with TestClient(module.app) as client:
        assert "apg_" not in capsys.readouterr().out
        assert client.get("/", headers={"X-API-Key": reader.key}).json()["hello"] == "r"
        refused = client.post("/items?name=drill", headers={"X-API-Key": reader.key})
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    assert refused.headers["cache-control"] == "no-store"


def test_scripts_are_valid_bash() -> None:
    for script in [
        "scripts/install",
        "scripts/check",
        "scripts/test",
        "scripts/test-wheel",
        "scripts/install-interop",
        "scripts/install-browser",
        "scripts/demo",
        "scripts/demo-bearer",
        ".ci/run",
    ]:
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)  # noqa: S603, S607


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo" in readme
    assert "bash scripts/test" in readme
    assert "bash scripts/test" in (ROOT / ".ci/run").read_text()


# --- scripts/demo ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIGUARD_", "DEMO_"))}
    return env | {"PYTHONUNBUFFERED": "1"} | changes


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], ready: str) -> Iterator[str]:
    """Run `command` from the checkout; yield what it printed up to the line `ready`."""
    process = subprocess.Popen(  # noqa: S603
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    printed = []
    try:
        for line in process.stdout:
            printed.append(line)
            if line.strip() == ready:
                break
        else:
            pytest.fail(f"{command} ended early:\n{''.join(printed)}")
        yield "".join(printed)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        process.stdout.close()


def wait_until_serving(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def shell(line: str) -> str:
    """Run a line the demo printed, as its user would paste it."""
    done = subprocess.run(  # noqa: S603
        ["bash", "-c", line],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    return done.stdout


def printed_lines(text: str, start: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(start)]


def run_demo(state: Path) -> tuple[str, int]:
    port = free_port()
    env = clean_env(PORT=str(port), DEMO_DIR=str(state))
    with running(["bash", "scripts/demo"], env, "Press Ctrl+C to stop.") as printed:
        wait_until_serving(f"http://127.0.0.1:{port}/health")
        curls = printed_lines(printed, "curl ")
        assert len(curls) == 3
        assert json.loads(shell(curls[0]))["items"] == ["hammer", "saw", "wrench"]
        assert json.loads(shell(curls[1]))["added"] == "drill"
        assert shell(curls[2]).startswith("HTTP/1.1 401")
    return printed, port


def test_demo_reuses_its_key_and_prints_how_to_manage_it(tmp_path: Path) -> None:
    """The key works; a second run shows the same key; after a revoke, a new one."""
    first, port = run_demo(tmp_path)
    assert f"http://127.0.0.1:{port}/items" in first
    assert "A key was created for you" in first
    assert "within 30 seconds" in first
    key = (tmp_path / ".demo-key").read_text().strip()
    assert key in first

    second, _ = run_demo(tmp_path)
    assert "The demo's key, from an earlier run" in second
    assert key in second
    export = printed_lines(second, "export APIGUARD_STORE=")[0]
    listed = json.loads(shell(f"{export}; .venv/bin/apiguard keys list --json"))
    assert [record["name"] for record in listed] == ["demo"]
    assert printed_lines(second, ".venv/bin/apiguard keys rotate ")
    revoke = printed_lines(second, ".venv/bin/apiguard keys revoke ")[0].split("#")[0]
    assert "Revoked" in shell(f"{export}; {revoke}")

    third, _ = run_demo(tmp_path)
    assert "A key was created for you" in third
    assert key not in third


def test_demo_checks_the_port_before_making_a_key(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = clean_env(PORT=str(port), DEMO_DIR=str(tmp_path / "demo"))
        done = subprocess.run(
            ["bash", "scripts/demo"],  # noqa: S607
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot serve on 127.0.0.1 port {port}" in done.stderr
    assert "PORT=" in done.stderr
    assert not (tmp_path / "demo").exists()
    assert "apg_" not in done.stdout


def test_bearer_demo_prints_curl_lines_that_work(tmp_path: Path) -> None:
    """One command: the authorization server, the bearer example, and how to call it."""
    port, idp_port = free_port(), free_port()
    env = clean_env(PORT=str(port), IDP_PORT=str(idp_port), DEMO_DIR=str(tmp_path))
    with running(["bash", "scripts/demo-bearer"], env, "Press Ctrl+C to stop.") as printed:
        wait_until_serving(f"http://127.0.0.1:{port}/health")
        get_token = printed_lines(printed, "token=$(curl ")[0]
        assert f"http://127.0.0.1:{idp_port}/token" in get_token
        listing, adding, anonymous = printed_lines(printed, "curl ")
        assert json.loads(shell(f"{get_token}\n{listing}")) == ["hammer", "saw"]
        assert json.loads(shell(f"{get_token}\n{adding}")) == {
            "added": "drill",
            "by": "service",
            "with": "bearer",
        }
        refused = shell(anonymous)
        assert refused.startswith("HTTP/1.1 401")
        assert 'www-authenticate: Bearer realm="api"' in refused


def test_bearer_demo_checks_both_ports_first(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = clean_env(PORT=str(free_port()), IDP_PORT=str(busy.getsockname()[1]))
        done = subprocess.run(
            ["bash", "scripts/demo-bearer"],  # noqa: S607
            cwd=ROOT,
            env=env | {"DEMO_DIR": str(tmp_path / "demo")},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "choose others with PORT=... IDP_PORT=..." in done.stderr
    assert not (tmp_path / "demo").exists()


def test_fastapi_swagger_example(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Public /docs; the document declares the key; the printed key works."""
    for name in ("APIGUARD_STORE", "APIGUARD_PEPPER", "OAUTH_ISSUER", "OAUTH_TOKEN_URL"):
        monkeypatch.delenv(name, raising=False)
    module = import_example("fastapi_swagger")
    with TestClient(module.app) as client:
        key = capsys.readouterr().out.strip().splitlines()[-1].strip()
        assert client.get("/docs").status_code == 200
        document = client.get("/openapi.json").json()
        assert document["components"]["securitySchemes"]["APIKey"]["name"] == "X-API-Key"
        assert document["paths"]["/items"]["post"]["security"] == [{"APIKey": ["items:write"]}]
        assert "security" not in document["paths"]["/health"]["get"]
        assert client.get("/items").status_code == 401
        assert client.get("/items", headers={"X-API-Key": key}).json() == ["hammer", "saw"]
        added = client.post("/items?name=drill", headers={"X-API-Key": key})
        assert added.json() == {"added": "drill", "by": "swagger"}


def test_fastapi_swagger_example_offers_the_client_credentials_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APIGUARD_STORE", raising=False)
    monkeypatch.setenv("OAUTH_ISSUER", "https://idp.example")
    monkeypatch.setenv("OAUTH_AUDIENCE", "https://api.example")
    monkeypatch.setenv("OAUTH_TOKEN_URL", "https://idp.example/token")
    module = import_example("fastapi_swagger")
    with TestClient(module.app) as client:
        document = client.get("/openapi.json").json()
    flow = document["components"]["securitySchemes"]["OAuth2"]["flows"]["clientCredentials"]
    assert flow == {
        "tokenUrl": "https://idp.example/token",
        "scopes": {"items:read": "List the items", "items:write": "Add items"},
    }
    assert document["paths"]["/items"]["get"]["security"] == [
        {"APIKey": ["items:read"]},
        {"OAuth2": ["items:read"]},
    ]


@pytest.mark.usefixtures("frozen_limits_clock")
def test_ratelimit_example(capsys: pytest.CaptureFixture[str]) -> None:
    """The printed key gets 5 requests a minute, with RateLimit fields, then 429s;
    /search has its own 2/minute; bad keys from one address end in 429."""
    module = import_example("ratelimit_app")
    with TestClient(module.app) as client:
        curl = capsys.readouterr().out.strip().splitlines()[-1]
        key = {"X-API-Key": curl.split("'X-API-Key: ")[1].split("'")[0]}
        first = client.get("/", headers=key)
        minute, quota = first.headers["ratelimit"].split(", ")
        assert minute == '"5/minute";r=4;t=30'  # 30 s left in this minute's window
        assert quota.startswith('"quota";r=99;t=')
        searches = [client.get("/search", headers=key).status_code for _ in range(3)]
        assert searches == [200, 200, 429]
        rest = [client.get("/", headers=key).status_code for _ in range(3)]
        assert rest == [200, 200, 429]  # 1 + 2 searches + 2 = 5 allowed
        bad = [client.get("/", headers={"X-API-Key": "apg_x"}).status_code for _ in range(11)]
        assert bad == [401] * 10 + [429]
