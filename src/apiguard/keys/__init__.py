"""API keys: the format, hashing, stores, verification and lifecycle.

`open_store(url)` picks a store by URL scheme; third-party stores join with
`register_scheme()`. Store drivers are imported only when their scheme is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from apiguard._cache import CacheOptions
from apiguard.exceptions import ConfigurationError
from apiguard.keys._url import redact_url
from apiguard.keys.base import BaseKeyStore
from apiguard.keys.format import GeneratedKey, ParsedKey, format_key, generate_key, parse_key
from apiguard.keys.hashing import KeyHasher
from apiguard.keys.manager import IssuedKey, KeyManager
from apiguard.keys.memory import MemoryKeyStore
from apiguard.keys.record import KeyRecord, KeyStatus
from apiguard.keys.usage import (
    UsageBatch,
    UsageBucket,
    UsageOptions,
    UsageRecorder,
    UsageRetention,
)
from apiguard.keys.verifier import KeyVerifier
from apiguard.types import KeyStore, UsageStore

if TYPE_CHECKING:
    from apiguard.keys.redis import RedisKeyStore
    from apiguard.keys.sql import SQLKeyStore

__all__ = [
    "BaseKeyStore",
    "CacheOptions",
    "GeneratedKey",
    "IssuedKey",
    "KeyHasher",
    "KeyManager",
    "KeyRecord",
    "KeyStatus",
    "KeyStore",
    "KeyVerifier",
    "MemoryKeyStore",
    "ParsedKey",
    "RedisKeyStore",
    "SQLKeyStore",
    "UsageBatch",
    "UsageBucket",
    "UsageOptions",
    "UsageRecorder",
    "UsageRetention",
    "UsageStore",
    "format_key",
    "generate_key",
    "open_store",
    "parse_key",
    "register_scheme",
]

StoreFactory = Callable[[str], KeyStore]

# scheme -> "module:callable taking the URL"; imported only when used.
_SCHEMES: dict[str, str | StoreFactory] = {
    "memory": "apiguard.keys.memory:MemoryKeyStore.from_url",
    "sqlite": "apiguard.keys.sql:SQLKeyStore.from_url",
    "sqlite+aiosqlite": "apiguard.keys.sql:SQLKeyStore.from_url",
    "postgresql": "apiguard.keys.sql:SQLKeyStore.from_url",
    "postgres": "apiguard.keys.sql:SQLKeyStore.from_url",
    "postgresql+asyncpg": "apiguard.keys.sql:SQLKeyStore.from_url",
    "redis": "apiguard.keys.redis:RedisKeyStore.from_url",
    "rediss": "apiguard.keys.redis:RedisKeyStore.from_url",
    "unix": "apiguard.keys.redis:RedisKeyStore.from_url",
}


def register_scheme(scheme: str, factory: str | StoreFactory) -> None:
    """Make `open_store` open URLs of `scheme` with `factory(url)`.

    `factory` is a callable or a lazy `"package.module:Class.from_url"` string.
    """
    _SCHEMES[scheme] = factory


def _load(path: str) -> StoreFactory:
    module_name, _, attribute = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


def open_store(url: str) -> KeyStore:
    """Open the key store that `url` names.

    `memory://`, `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`,
    `postgresql://user:password@host:5432/db` (or `postgres://`),
    `redis://[:password@]host:6379/0`, `rediss://…` (TLS), `unix:///path/redis.sock?db=0`,
    or any scheme added with `register_scheme()`.

    Raises:
        ConfigurationError: The scheme is unknown or its extra is not installed.
    """
    scheme, sep, _ = url.partition("://")
    factory = _SCHEMES.get(scheme) if sep else None
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigurationError(
            f"unknown key store URL scheme in {redact_url(url)!r}; known: {known}"
        )
    if isinstance(factory, str):
        factory = _load(factory)
    return factory(url)


def __getattr__(name: str) -> Any:
    # The stores that need an extra are imported when first named.
    if name == "SQLKeyStore":
        from apiguard.keys.sql import SQLKeyStore

        return SQLKeyStore
    if name == "RedisKeyStore":
        from apiguard.keys.redis import RedisKeyStore

        return RedisKeyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
