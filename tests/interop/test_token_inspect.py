"""`apiguard token inspect` against a real authorization server (oidc-provider)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from apiguard.cli import main

from .conftest import API, INTROSPECTION_CLIENT, AuthorizationServer


def inspect(server: AuthorizationServer, token: str, *args: str, **env: str) -> Result:
    return CliRunner().invoke(
        main,
        ["token", "inspect", "--issuer", server.issuer, "--json", *args],
        input=token + "\n",
        env=env,
        catch_exceptions=False,
    )


def checks(result: Result) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(result.output)
    return {c["name"]: (c["outcome"], c["detail"]) for c in report["checks"]}


def test_a_jwt_from_the_server_is_explained_and_accepted(
    authorization_server: AuthorizationServer,
) -> None:
    token = authorization_server.token(f"{API}/rs256")
    result = inspect(authorization_server, token, "--audience", f"{API}/rs256")
    assert result.exit_code == 0, result.output
    seen = checks(result)
    assert seen["key"][0] == "pass"
    assert f"{authorization_server.issuer}/jwks" in seen["key"][1]  # found by discovery
    assert seen["signature"] == ("pass", "verified with RS256")
    assert seen["granted scopes"] == ("info", "items:read items:write")
    assert token not in result.output


def test_a_jwt_for_another_api_is_refused_for_its_audience(
    authorization_server: AuthorizationServer,
) -> None:
    token = authorization_server.token(f"{API}/es256")
    result = inspect(authorization_server, token, "--audience", f"{API}/rs256")
    assert result.exit_code == 1
    assert checks(result)["aud"][0] == "fail"
    assert json.loads(result.output)["reason"] == "wrong audience"


def test_an_opaque_token_is_introspected_and_a_revoked_one_refused(
    authorization_server: AuthorizationServer,
) -> None:
    client_id, secret = INTROSPECTION_CLIENT
    token = authorization_server.token(f"{API}/opaque")
    args = ("--audience", f"{API}/opaque", "--client-id", client_id)
    result = inspect(authorization_server, token, *args, APIGUARD_CLIENT_SECRET=secret)
    assert result.exit_code == 0, result.output
    assert checks(result)["active"] == ("pass", "true")
    authorization_server.revoke(token)
    result = inspect(authorization_server, token, *args, APIGUARD_CLIENT_SECRET=secret)
    assert result.exit_code == 1
    assert checks(result)["active"] == ("fail", "false")
    assert token not in result.output
