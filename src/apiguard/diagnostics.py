"""Why a token or an API key would be accepted or refused, check by check.

`explain_token()` and `explain_key()` run the checks the middleware runs, one at a
time, and say for each what was found; the verdict at the end comes from the very
code the middleware uses (`TokenVerifier`, and the key checks in their order), so
the explanation cannot promise what a request would not get. `apiguard token
inspect` and `apiguard keys check` print these reports.

A report never holds the token, the key or its secret: only the JOSE header, the
claims, the key id and what was decided about them. Values taken from the token are
shown escaped and shortened, so a crafted token cannot write to the terminal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import jwt

from apiguard._cache import CacheOptions
from apiguard.authenticators import check_bearer_binding
from apiguard.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidCredentials,
    InvalidToken,
)
from apiguard.keys.format import DEFAULT_PREFIX, MAX_KEY_LENGTH, parse_key
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.record import utcnow
from apiguard.tokens.composite import CompositeIntrospector
from apiguard.tokens.info import TokenInfo, scopes_from_claims
from apiguard.tokens.introspection import _BEARER_TYPES, RemoteIntrospector
from apiguard.tokens.jwks import _COMPACT_JWS, JWTIntrospector, _segment, looks_like_jwt
from apiguard.tokens.verifier import TokenVerifier
from apiguard.types import KeyStore, TokenIntrospector

__all__ = ["Check", "Report", "explain_key", "explain_token"]

Outcome = Literal["pass", "fail", "skip", "info"]
_MAX_SHOWN = 80


@dataclass(frozen=True, slots=True)
class Check:
    """One step of a report: what was checked, how it came out, and what was seen."""

    name: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    """Whether a credential would be accepted, and the checks that say why.

    Attributes:
        kind: `"jwt"`, `"opaque token"` or `"api key"`.
        accepted: Whether the middleware would let a request with it through (its
            scopes may still be short of what a route requires: 403); `None` when
            the report cannot tell (an API key checked without the pepper).
        status: The status the middleware would answer: 200, 401 or 503 (`None`
            when `accepted` is).
        reason: The refusal reason, as the middleware's log line gives it.
        checks: The checks, in the order the middleware runs them.
    """

    kind: str
    accepted: bool | None
    status: int | None
    reason: str | None
    checks: tuple[Check, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "kind": self.kind,
            "accepted": self.accepted,
            "status": self.status,
            "reason": self.reason,
            "checks": [
                {"name": c.name, "outcome": c.outcome, "detail": c.detail} for c in self.checks
            ],
        }

    def as_text(self) -> str:
        """The report as a table for a terminal, with the verdict on the last line."""
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [f"  {c.outcome.upper():<4}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        if self.accepted:
            verdict = f"verdict: ACCEPTED ({self.kind})"
        elif self.accepted is None:
            verdict = f"verdict: UNDECIDED ({self.kind}): {self.reason}"
        else:
            verdict = f"verdict: REFUSED with {self.status} ({self.kind}): {self.reason}"
        return "\n".join([*lines, verdict])


def show(value: object) -> str:
    """A value taken from a credential, escaped and shortened for display."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _ago(seconds: float) -> str:
    seconds = round(abs(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _fetched(when: float | None) -> str:
    if when is None:
        return "never"
    return f"{_utc(when)}, {_ago(time.time() - when)} ago"


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Steps:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, outcome: Outcome, detail: str) -> bool:
        self.checks.append(Check(name, outcome, detail))
        return outcome != "fail"

    @property
    def failed(self) -> bool:
        return any(c.outcome == "fail" for c in self.checks)


async def explain_token(token: str, introspector: TokenIntrospector) -> Report:
    """Explain whether `introspector` (as the middleware uses it) accepts `token` as Bearer.

    The token is checked for real: JWKS, discovery and introspection requests are
    made as a first request with it would make them.
    """
    steps = _Steps()
    part = _routed(introspector, token)
    answer: TokenIntrospector = introspector
    if isinstance(part, JWTIntrospector):
        kind = "jwt"
        await _explain_jwt(token, part, steps)
    else:
        kind = "opaque token"
        if isinstance(part, RemoteIntrospector):
            answer = await _explain_introspection(token, part, steps)
    return await _verdict(kind, token, answer, introspector, steps)


def _routed(introspector: TokenIntrospector, token: str) -> TokenIntrospector:
    """The introspector that checks `token`: a `CompositeIntrospector` routes by shape."""
    if isinstance(introspector, CompositeIntrospector):
        return introspector._jwt if looks_like_jwt(token) else introspector._remote
    return introspector


async def _verdict(
    kind: str,
    token: str,
    answer: TokenIntrospector,
    introspector: TokenIntrospector,
    steps: _Steps,
) -> Report:
    leeway = float(getattr(introspector, "leeway", 0.0))
    verifier = TokenVerifier(answer, cache=CacheOptions(max_size=1), leeway=leeway)
    raw = token.encode("utf-8", "surrogateescape")
    try:
        grant = await verifier.verify(raw)
        # What BearerAuth checks on every request after the verdict (RFC 9449 §7.2,
        # RFC 8705 §3): a sender-constrained token presented as a plain bearer token.
        check_bearer_binding(grant[0].claims, None, {"type": "http", "headers": []})
    except InvalidToken as exc:
        if not steps.failed:
            steps.add("verdict", "fail", exc.reason)
        return Report(kind, False, 401, exc.reason, tuple(steps.checks))
    except BackendUnavailableError as exc:
        steps.add("backend", "fail", str(exc))
        return Report(kind, False, 503, "backend unavailable", tuple(steps.checks))
    principal = grant[0]
    scopes = " ".join(sorted(principal.scopes)) or "(none)"
    steps.add("principal", "info", f"client_id={principal.client_id} sub={principal.subject}")
    steps.add("granted scopes", "info", scopes)
    return Report(kind, True, 200, None, tuple(steps.checks))


async def _explain_jwt(token: str, introspector: JWTIntrospector, steps: _Steps) -> None:
    limit = introspector._max_size
    if not steps.add(
        "size",
        "pass" if len(token) <= limit else "fail",
        f"{len(token)} characters (at most {limit})",
    ):
        return
    if not steps.add(
        "serialization",
        "pass" if _COMPACT_JWS.fullmatch(token) else "fail",
        "compact JWS: three base64url parts (RFC 7515 §7.1)",
    ):
        return
    try:
        header = _segment(token, 0, "malformed header")
        claims = _segment(token, 1, "malformed payload")
    except InvalidToken as exc:
        steps.add("JSON", "fail", exc.reason)
        return
    alg, typ, kid = header.get("alg"), header.get("typ"), header.get("kid")
    steps.add("JOSE header", "info", f"alg={show(alg)} typ={show(typ)} kid={show(kid)}")
    try:
        trusted, keys = introspector._issuer_of(token)
    except InvalidToken:
        steps.add("issuer", "fail", f"iss={show(claims.get('iss'))} is not a trusted issuer")
        return
    allowed = ", ".join(trusted.algorithms)
    if not steps.add(
        "algorithm",
        "pass" if isinstance(alg, str) and alg in trusted.algorithms else "fail",
        f"{show(alg)}; allowed: {allowed} (RFC 8725 §3.1)",
    ):
        return
    try:
        introspector._check_typ(trusted, typ)
        steps.add("typ", "pass", f"{show(typ)} (RFC 9068 §4)")
    except InvalidToken:
        wanted = "at+jwt" + (", JWT or none" if trusted.accept_jwt_typ else "")
        steps.add("typ", "fail", f"{show(typ)}; wanted {wanted} (RFC 9068 §4)")
        return
    if not isinstance(kid, str | None):
        steps.add("kid", "fail", "not a string")
        return
    try:
        key = await keys.key(kid, str(alg))
    except InvalidToken as exc:
        steps.add("key", "fail", f"{exc.reason}: kid={show(kid)} alg={alg} in {keys._uri}")
        return
    except BackendUnavailableError as exc:
        steps.add("key set", "fail", f"{keys._uri or trusted.issuer}: {exc}")
        return
    steps.add(
        "key",
        "pass",
        f"kid={show(kid)} found in {keys._uri} (key set fetched {_fetched(keys.fetched_at)})",
    )
    try:
        jwt.decode(
            token,
            key.key,
            algorithms=[str(alg)],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
        steps.add("signature", "pass", f"verified with {alg}")
    except jwt.InvalidTokenError:
        steps.add("signature", "fail", "does not verify with the issuer's key")
        return
    _claims(claims, trusted.issuer, trusted.audiences, introspector.leeway, steps)
    missing = [c for c in trusted.required_claims if c not in claims]
    steps.add(
        "required claims",
        "fail" if missing else "pass",
        f"missing: {', '.join(missing)}" if missing else ", ".join(trusted.required_claims),
    )
    scopes = scopes_from_claims(claims, trusted.scope_claims)
    steps.add(
        "scopes",
        "info",
        f"{' '.join(sorted(scopes)) or '(none)'} (from {', '.join(trusted.scope_claims)})",
    )
    _confirmation(claims.get("cnf"), steps)


def _claims(
    claims: Mapping[str, Any],
    issuer: str | None,
    audiences: Sequence[str],
    leeway: float,
    steps: _Steps,
) -> None:
    iss = claims.get("iss")
    if issuer is not None:
        steps.add(
            "iss",
            "pass" if iss == issuer else "fail",
            f"{show(iss)}" + ("" if iss == issuer else f"; expected {issuer}"),
        )
    aud = claims.get("aud")
    present = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    steps.add(
        "aud",
        "pass" if set(present) & set(audiences) else "fail",
        f"{show(aud)}; this API accepts {', '.join(audiences)} (RFC 9068 §4)",
    )
    now = time.time()
    times = {name: claims.get(name) for name in ("exp", "nbf", "iat")}
    for name, value in times.items():
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            steps.add(name, "fail", f"{show(value)} is not a NumericDate (RFC 7519 §2)")
            continue
        when = _utc(value)
        delta = value - now
        if name == "exp":
            ok = delta + leeway > 0
            said = f"expires in {_ago(delta)}" if delta > 0 else f"expired {_ago(delta)} ago"
        else:
            ok = delta - leeway <= 0
            said = f"{_ago(delta)} ago" if delta <= 0 else f"{_ago(delta)} in the future"
        steps.add(name, "pass" if ok else "fail", f"{when}, {said} (leeway {leeway:g} s)")


def _confirmation(cnf: object, steps: _Steps) -> None:
    if isinstance(cnf, Mapping) and ({"jkt", "x5t#S256"} & cnf.keys()):
        steps.add(
            "cnf",
            "fail",
            "sender-constrained token (RFC 9449 §6, RFC 8705 §3): refused when"
            " presented as a plain Bearer token",
        )


class _Answered:
    """The remote introspector's own checks, run on the answer already obtained."""

    def __init__(self, introspector: RemoteIntrospector, answer: Mapping[str, Any]) -> None:
        self._introspector = introspector
        self._answer = answer
        self.leeway = introspector.leeway

    async def introspect(self, token: str) -> TokenInfo:
        return self._introspector._check(self._answer)

    async def aclose(self) -> None:
        return None


async def _explain_introspection(
    token: str, introspector: RemoteIntrospector, steps: _Steps
) -> TokenIntrospector:
    limit = introspector._max_size
    if not steps.add(
        "size",
        "pass" if len(token) <= limit else "fail",
        f"{len(token)} characters (at most {limit})",
    ):
        return introspector
    try:
        answer = await introspector._backoff.call(
            lambda: introspector._ask(token), deadline=introspector._deadline, what="introspection"
        )
    except (InvalidToken, BackendUnavailableError):
        return introspector  # the verdict asks again and reports the error
    endpoint = introspector._endpoint or "the discovered introspection endpoint"
    steps.add("introspection", "info", f"answered by {endpoint} (RFC 7662 §2.2)")
    active = answer.get("active")
    if not steps.add("active", "pass" if active is True else "fail", show(active)):
        return _Answered(introspector, answer)
    steps.add(
        "client",
        "info",
        f"client_id={show(answer.get('client_id'))} sub={show(answer.get('sub'))}",
    )
    token_type = answer.get("token_type")
    if token_type is not None:
        bearer = str(token_type).lower() in _BEARER_TYPES
        steps.add("token_type", "pass" if bearer else "fail", f"{show(token_type)}; wanted Bearer")
    iss = answer.get("iss")
    issuer = introspector._issuer if isinstance(iss, str) else None
    _claims(answer, issuer, sorted(introspector._audiences), introspector.leeway, steps)
    scopes = scopes_from_claims(answer, introspector._scope_claims)
    steps.add("scopes", "info", " ".join(sorted(scopes)) or "(none)")
    _confirmation(answer.get("cnf"), steps)
    return _Answered(introspector, answer)


async def explain_key(
    key: str,
    store: KeyStore,
    *,
    hasher: KeyHasher | None = None,
    prefixes: Sequence[str] = (DEFAULT_PREFIX,),
) -> Report:
    """Explain whether `key` would be accepted against `store`, in the middleware's order.

    Without `hasher` (which needs the server's pepper) the secret cannot be checked:
    the report says so and gives no verdict of acceptance.
    """
    steps = _Steps()
    kind = "api key"

    def refused(reason: str, status: int = 401) -> Report:
        return Report(kind, False, status, reason, tuple(steps.checks))

    if len(key) > MAX_KEY_LENGTH:
        steps.add("format", "fail", f"{len(key)} characters; a key has at most {MAX_KEY_LENGTH}")
        return refused("malformed")
    try:
        parsed = parse_key(key, prefixes)
    except InvalidCredentials as exc:
        if exc.reason == "malformed":
            steps.add(
                "format", "fail", "not shaped like <prefix>_<12-character id>_<49 characters>"
            )
        else:
            steps.add("format", "pass", "<prefix>_<key id>_<secret and checksum>")
            if exc.reason == "unknown prefix":
                shown = show(key.split("_", 1)[0])
                steps.add("prefix", "fail", f"{shown} is not one of: {', '.join(prefixes)}")
            else:
                steps.add("checksum", "fail", "does not match: a character is wrong or missing")
        return refused(exc.reason)
    steps.add("format", "pass", f"prefix {parsed.prefix}, key id, 256-bit secret")
    steps.add("checksum", "pass", "CRC32 matches")
    steps.add("key id", "info", parsed.key_id)
    try:
        record = await store.get(parsed.key_id)
    except BackendUnavailableError as exc:
        steps.add("store", "fail", str(exc))
        return refused("backend unavailable", 503)
    if record is None:
        steps.add("found", "fail", "no key with this id in the store")
        return refused("unknown key")
    steps.add("found", "pass", f"name {show(record.name)}")
    if hasher is None:
        steps.add("secret", "skip", "set APIGUARD_PEPPER to the server's pepper to check it")
    else:
        try:
            ok, _ = hasher.verify(parsed.secret, record.secret_hash)
        except ConfigurationError as exc:
            steps.add("secret", "fail", str(exc))
            return refused("backend unavailable", 503)
        if not steps.add("secret", "pass" if ok else "fail", "matches the stored hash"):
            return refused("wrong secret")
    now = utcnow()
    status = record.status(now)
    detail: str = status
    if record.revoked_at is not None and status == "revoked":
        ago = _ago((now - record.revoked_at).total_seconds())
        detail = f"revoked {_utc(record.revoked_at.timestamp())}, {ago} ago"
    elif record.expires_at is not None:
        delta = (record.expires_at - now).total_seconds()
        when = _utc(record.expires_at.timestamp())
        detail = f"{when}, " + (
            f"expires in {_ago(delta)}" if delta > 0 else f"expired {_ago(delta)} ago"
        )
    if not steps.add("status", "pass" if status == "active" else "fail", detail):
        return refused(status)
    steps.add("scopes", "info", " ".join(sorted(record.scopes)) or "(none)")
    if hasher is None:
        return Report(kind, None, None, "the secret was not checked", tuple(steps.checks))
    return Report(kind, True, 200, None, tuple(steps.checks))
