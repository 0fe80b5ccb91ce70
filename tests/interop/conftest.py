"""A real authorization server (panva/oidc-provider, Node.js) started on loopback.

`scripts/install` installs it from the committed lockfile (`npm ci`). When Node.js
or the package is missing these tests fail rather than skip: a skipped interop
suite would pass CI without proving anything.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

SERVER_DIR = Path(__file__).parent / "oidc"
API = "https://api.example"
INTROSPECTION_CLIENT = ("api:server", "p@ss:w/rd+&= ~%")


def private_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    return {**json.loads(algorithm.to_jwk(key)), "kid": kid, "alg": alg, "use": "sig"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AuthorizationServer:
    """Start, stop and restart oidc-provider; obtain and revoke tokens from it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._jwks_path = workdir / "jwks.json"
        self._client_jwks_path = workdir / "client-jwks.json"
        # The key the API signs its private_key_jwt client assertions with.
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self._process: subprocess.Popen[str] | None = None
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def start(self, rsa_kid: str = "rsa-1") -> None:
        keys = [private_jwk(self.rsa, rsa_kid, "RS256"), private_jwk(self.ec, "ec-1", "ES256")]
        self._jwks_path.write_text(json.dumps({"keys": keys}))
        public = json.loads(ECAlgorithm.to_jwk(self.client_key.public_key()))
        client_keys = [{**public, "kid": "client-key-1", "alg": "ES256", "use": "sig"}]
        self._client_jwks_path.write_text(json.dumps({"keys": client_keys}))
        node = shutil.which("node")
        if node is None or not (SERVER_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("Node.js and oidc-provider are needed: run scripts/install (npm ci)")
        env = {
            **os.environ,
            "PORT": str(self.port),
            "JWKS_PATH": str(self._jwks_path),
            "CLIENT_JWKS_PATH": str(self._client_jwks_path),
        }
        self._process = subprocess.Popen(  # noqa: S603
            [node, "server.mjs"],
            cwd=SERVER_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + 30
        for line in self._process.stdout:
            if line.startswith("ready "):
                return
            if time.monotonic() > deadline:  # pragma: no cover - diagnostics
                break
        self.stop()  # pragma: no cover - diagnostics
        pytest.fail("oidc-provider did not start")  # pragma: no cover

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def restart_with_new_rsa_key(self, kid: str) -> None:
        """Rotate the RSA signing key: the old one is dropped from the JWKS."""
        self.stop()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.start(rsa_kid=kid)

    def token(self, resource: str, scope: str = "items:read items:write") -> str:
        response = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "resource": resource, "scope": scope},
            auth=("service", "service-secret"),
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def bound_token(
        self, resource: str, client: tuple[str, str], headers: dict[str, str]
    ) -> tuple[str, str]:
        """A client-credentials token for `client`, sending `headers` (a DPoP proof, a
        client certificate): the token and its `token_type`."""
        response = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "resource": resource, "scope": "items:read"},
            auth=client,
            headers=headers,
        )
        response.raise_for_status()
        answer = response.json()
        return answer["access_token"], answer["token_type"]

    def introspections(self) -> int:
        """How many introspection calls the server has received since it started."""
        response = httpx.get(f"{self.issuer}/test/introspections")
        response.raise_for_status()
        count: int = response.json()["count"]
        return count

    def revoke(self, token: str) -> None:
        response = httpx.post(
            f"{self.issuer}/token/revocation",
            data={"token": token},
            auth=("service", "service-secret"),
        )
        response.raise_for_status()


@pytest.fixture(scope="module")
def authorization_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    server = AuthorizationServer(tmp_path_factory.mktemp("oidc"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def port() -> int:
    """A free loopback port, for an app the test serves itself."""
    return free_port()


@contextmanager
def mcp_example(
    module: str, server: AuthorizationServer, port: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """`module` (an MCP server example) imported anew, for `server`'s tokens and the
    resource `http://127.0.0.1:<port>/mcp`; forgotten again on exit."""
    monkeypatch.setenv("OAUTH_ISSUER", server.issuer)
    monkeypatch.setenv("MCP_RESOURCE", f"http://127.0.0.1:{port}/mcp")
    sys.modules.pop(module, None)
    try:
        yield importlib.import_module(module)
    finally:
        sys.modules.pop(module, None)
