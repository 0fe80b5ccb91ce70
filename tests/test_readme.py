"""The README's code runs, and its tables name every option and refusal there is."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiguard import (
    APIKeyAuth,
    APIKeyMiddleware,
    AuthError,
    AuthMiddleware,
    BearerAuth,
    BearerTokenMiddleware,
    CacheOptions,
    ConfigurationError,
    UsageOptions,
)
from apiguard.keys import KeyHasher, KeyManager, open_store
from apiguard.keys.verifier import KeyVerifier
from apiguard.tokens import JWTIntrospector, RemoteIntrospector, TrustedIssuer

from .conftest import PEPPER, MakeClient
from .docs_support import cli_lines, refusal_classes, unknown_cli_words
from .test_examples import clean_env, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [match[2] for match in BLOCK.finditer(README) if match[1] == language]


def block_starting(first_line: str) -> str:
    (code,) = [code for code in blocks("python") if code.startswith(first_line)]
    return code


def section(heading: str) -> str:
    start = README.index(f"\n{heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


@pytest.mark.parametrize("code", blocks("python"), ids=lambda code: code.splitlines()[0][:40])
def test_every_python_block_compiles(code: str) -> None:
    compile(code, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.anyio
async def test_the_quick_start_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_client: MakeClient
) -> None:
    """`app.py` as printed: /health open, /items needs a key, /docs and /openapi.json locked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    async with open_store("sqlite:///apiguard-keys.db") as store:  # type: ignore[attr-defined]
        issued = await KeyManager(store).create("billing", scopes=["items:read"])
    namespace: dict[str, Any] = {}
    exec(block_starting("# app.py"), namespace)  # noqa: S102 - the README's own code
    key = {"X-API-Key": issued.key}
    async with make_client(namespace["app"]) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        assert (await client.get("/items")).status_code == 401
        allowed = await client.get("/items", headers=key)
        assert allowed.json() == {"caller": "billing", "scopes": ["items:read"]}
        for locked in ("/docs", "/openapi.json"):
            assert (await client.get(locked)).status_code == 401
        middleware = namespace["app"].middleware_stack
        while not isinstance(middleware, APIKeyMiddleware):
            middleware = middleware.app
        await middleware.auth.verifier.store.aclose()


def test_the_fastapi_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`install(...)`: public docs, the key in the document, the scope on the operation."""
    from starlette.testclient import TestClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    namespace: dict[str, Any] = {}
    exec(block_starting("# docs_app.py"), namespace)  # noqa: S102 - the README's
    with TestClient(namespace["app"]) as client:
        assert client.get("/docs").status_code == 200
        document = client.get("/openapi.json").json()
        assert client.post("/items?name=drill").status_code == 401
    assert document["components"]["securitySchemes"]["APIKey"]["name"] == "X-API-Key"
    assert document["paths"]["/items"]["post"]["security"] == [{"APIKey": ["items:write"]}]
    assert "security" not in document["paths"]["/health"]["get"]


@pytest.mark.anyio
async def test_managing_keys_from_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    code = compile(
        block_starting("from datetime import timedelta\nfrom apiguard.keys import KeyManager"),
        "README.md",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
    )
    namespace: dict[str, Any] = {}
    await eval(code, namespace)  # noqa: S307 - the README's own code
    records = await namespace["keys"].list(name="billing")
    await namespace["store"].aclose()
    assert [r.status() for r in records] == ["revoked", "active"]


def test_the_uvicorn_log_config_shows_apiguards_decisions(tmp_path: Path) -> None:
    """`uvicorn app:app --log-config log.json`: the refusal's reason, then the access line."""
    (log_config,) = blocks("json")
    (tmp_path / "log.json").write_text(log_config)
    (tmp_path / "app.py").write_text(block_starting("# app.py"))
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)]
    env = clean_env(APIGUARD_PEPPER=PEPPER)
    server = subprocess.Popen(  # noqa: S603
        [*command, "--log-config", "log.json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/health")
        httpx.get(f"http://127.0.0.1:{port}/items", headers={"X-API-Key": "apg_nope"})
    finally:
        server.send_signal(signal.SIGINT)
        stdout, stderr = server.communicate(timeout=30)
    assert "INFO:     apiguard.middleware: refused status=401 reason=malformed" in stderr
    assert '"GET /items HTTP/1.1" 401' in stdout


def test_the_quoted_startup_error_is_the_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message the README quotes for a missing pepper is the one uvicorn prints."""
    quoted = re.search(
        r"`ERROR: (apiguard: APIKeyMiddleware is misconfigured: [^`]*)\.\.\.`", README
    )
    assert quoted is not None
    monkeypatch.delenv("APIGUARD_PEPPER", raising=False)
    with pytest.raises(ConfigurationError) as info:
        KeyHasher()
    message = f"apiguard: APIKeyMiddleware is misconfigured: {info.value}"
    assert message.startswith(" ".join(quoted[1].split()))


def keyword_names(function: Callable[..., Any]) -> set[str]:
    skip = {"self", "app", "options", "clock", "_owns_engine"}
    return set(inspect.signature(function).parameters) - skip


DOCUMENTED: list[tuple[str, set[str]]] = [
    ("AuthMiddleware", keyword_names(AuthMiddleware.__init__) - {"authenticators"}),
    ("APIKeyMiddleware", keyword_names(APIKeyMiddleware.__init__)),
    ("BearerTokenMiddleware", keyword_names(BearerTokenMiddleware.__init__)),
    ("APIKeyAuth", keyword_names(APIKeyAuth.__init__)),
    ("BearerAuth", keyword_names(BearerAuth.__init__)),
    ("CacheOptions", {f.name for f in dataclasses.fields(CacheOptions)}),
    ("UsageOptions", {f.name for f in dataclasses.fields(UsageOptions)}),
    ("TrustedIssuer", {f.name for f in dataclasses.fields(TrustedIssuer) if f.init}),
    ("JWTIntrospector", keyword_names(JWTIntrospector.__init__) - {"issuers"}),
    ("RemoteIntrospector", keyword_names(RemoteIntrospector.__init__)),
    ("KeyVerifier", {n for n in keyword_names(KeyVerifier.__init__) if n.startswith("slow_")}),
]


@pytest.mark.parametrize(("owner", "names"), DOCUMENTED, ids=[d[0] for d in DOCUMENTED])
def test_every_option_is_documented(owner: str, names: set[str]) -> None:
    spans = re.findall(r"`([^`]+)`", BLOCK.sub("", README))
    missing = {n for n in names if not any(re.search(rf"\b{n}\b", span) for span in spans)}
    assert not missing, f"{owner} options missing from the README: {sorted(missing)}"


@pytest.mark.parametrize("error", refusal_classes(), ids=lambda cls: cls.__name__)
def test_every_refusal_is_in_the_table(error: type[AuthError]) -> None:
    table = section("### Refusals")
    rows = [row for row in table.splitlines() if row.startswith("|")]
    code = f'"{error.error}"' if error.error else "Authentication is required."
    assert any(f"| {error.status_code} |" in row and code in row for row in rows)
    assert any("| 503 |" in row and "temporarily_unavailable" in row for row in rows)


@pytest.mark.parametrize("words", cli_lines(blocks("console")), ids=" ".join)
def test_cli_lines_use_real_commands_and_options(words: list[str]) -> None:
    unknown = unknown_cli_words(words)
    assert not unknown, f"{' '.join(words)}: unknown {sorted(unknown)}"


def test_install_lines_and_scripts_exist() -> None:
    for script in re.findall(r"bash (scripts/[\w-]+)", README):
        assert (ROOT / script).is_file(), script
    for example in re.findall(r"(examples/\w+\.py)", README):
        assert (ROOT / example).is_file(), example
    assert "pip install apiguard\n" not in README
    assert json.loads(blocks("json")[0])["loggers"]["apiguard"]["level"] == "INFO"
