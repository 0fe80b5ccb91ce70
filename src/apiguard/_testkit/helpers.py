"""Keys in memory, a clock that moves when told, and authentication overrides for tests."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from starlette.authentication import AuthCredentials

from apiguard import _override
from apiguard.exceptions import ConfigurationError
from apiguard.keys import KeyHasher, KeyManager, MemoryKeyStore
from apiguard.principal import Principal
from apiguard.types import KeyStore

__all__ = [
    "TEST_PEPPER",
    "FakeClock",
    "KeySpec",
    "make_keys",
    "override_authentication",
]

logger = logging.getLogger("apiguard.testing")

TEST_PEPPER = "apiguard-testing-pepper-not-for-production"
"""The pepper `make_keys` hashes with: give the middleware the same (`pepper=TEST_PEPPER`)."""


class FakeClock:
    """A monotonic clock that moves only when a test says so.

    Pass it as `clock=` to `JWTIntrospector`, `TokenVerifier`, `KeyVerifier` and
    `CacheOptions`-using verifiers, then `advance()` it (or set `now`) to expire
    caches and cooldowns without waiting.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`."""
        self.now += seconds


@dataclass(frozen=True)
class KeySpec:
    """One API key for `make_keys`: its owner's name, scopes, lifetime and metadata."""

    name: str
    scopes: Collection[str] = ()
    expires_in: timedelta | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


async def make_keys(
    *specs: KeySpec | str,
    store: KeyStore | None = None,
    pepper: str = TEST_PEPPER,
) -> tuple[KeyStore, dict[str, str]]:
    """Create API keys in `store` (a new `MemoryKeyStore` by default).

    Returns the store and each key's full value by name: send it as `X-API-Key`.
    The keys are hashed with `pepper`: configure the middleware with the same one.
    A plain string is a key of that name without scopes.

        store, keys = await make_keys(KeySpec("reader", scopes=["items:read"]))
        app.add_middleware(APIKeyMiddleware, store=store, pepper=TEST_PEPPER)
        client.get("/items", headers={"X-API-Key": keys["reader"]})
    """
    specs_ = [KeySpec(spec) if isinstance(spec, str) else spec for spec in specs]
    names = [spec.name for spec in specs_]
    if len(set(names)) != len(names):
        raise ConfigurationError("make_keys needs a different name for each key")
    target: KeyStore = store if store is not None else MemoryKeyStore()
    manager = KeyManager(target, KeyHasher(pepper))
    keys: dict[str, str] = {}
    for spec in specs_:
        issued = await manager.create(
            spec.name, scopes=spec.scopes, expires_in=spec.expires_in, metadata=spec.metadata
        )
        keys[spec.name] = issued.key
    return target, keys


def _principal(
    scopes: Collection[str],
    key_id: str | None,
    client_id: str | None,
    subject: str | None,
    name: str | None,
    claims: Mapping[str, Any] | None,
) -> Principal:
    if key_id is not None and (client_id is not None or subject is not None or claims):
        raise ConfigurationError("a principal has a key_id or a client_id/subject, not both")
    bearer = key_id is None and (client_id is not None or subject is not None or bool(claims))
    identity = key_id or subject or client_id or "test"
    return Principal(
        identity=identity,
        kind="bearer" if bearer else "api_key",
        name=name or client_id or identity,
        scopes=frozenset(scopes),
        key_id=None if bearer else identity,
        client_id=client_id,
        subject=subject,
        claims=dict(claims or {}),
    )


@contextmanager
def override_authentication(
    app: object,
    *,
    scopes: Collection[str] = (),
    key_id: str | None = None,
    client_id: str | None = None,
    subject: str | None = None,
    name: str | None = None,
    claims: Mapping[str, Any] | None = None,
    principal: Principal | None = None,
) -> Iterator[Principal]:
    """Within the block, every request `app` guards is authenticated as one principal.

    `app` is the Starlette or FastAPI application the apiguard middleware was added
    to (or the middleware instance itself, for a bare ASGI app). The middleware
    reads no credential then: the request gets the principal, given whole or made
    from `scopes` with `key_id` (an API key) or `client_id`/`subject`/`claims` (a
    bearer token). Excluded paths stay anonymous, and policies (`ScopeRules`) and
    route checks (`require_scopes`) still apply to its scopes.

    Only this function installs an override, only for the object it is given and
    only until the block ends; no header, environment variable or middleware
    option can. Yields the principal.
    """
    if principal is None:
        principal = _principal(scopes, key_id, client_id, subject, name, claims)
    elif scopes or key_id or client_id or subject or name or claims:
        raise ConfigurationError("pass a principal or its parts, not both")
    grant = (principal, AuthCredentials(sorted(principal.scopes)))
    logger.warning(
        "authentication overridden for %s: every request is %r", type(app).__name__, principal
    )
    previous = _override.install(app, grant)
    try:
        yield principal
    finally:
        _override.remove(app, previous)
