"""`LimitStorage`: where rate-limit and quota counters live, in memory or in Redis.

`memory://` keeps counters in this process: right for one worker, wrong for several
(each would allow the whole limit). `redis://host:6379/0` (also `rediss://`,
`unix://`) shares them between every worker and machine: the same URL as the Redis
key store, whose `?push=` option is ignored here.

Rate limits go through the `limits` library: in memory its synchronous storage (no
coroutine, no lock to await per request: the event loop runs one check at a time),
in Redis its asyncio storage with redis-py as the driver; quotas use their own
calendar counters on the same connection pool (`apiguard.ratelimit.quota`). Needs `pip install 'apiguard-asgi[ratelimit]'`,
and the `redis` extra for Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from apiguard.exceptions import BackendUnavailableError, ConfigurationError
from apiguard.keys._url import redact_url

try:
    from limits import RateLimitItem, parse_many
    from limits.aio.storage import RedisStorage
    from limits.errors import ConfigurationError as LimitsConfigurationError
    from limits.errors import StorageError
    from limits.storage import MemoryStorage
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ConfigurationError(
        "rate limits need the limits library: pip install 'apiguard-asgi[ratelimit]'"
    ) from exc

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["LimitStorage", "parse_limits"]

# Seconds to connect to Redis and to wait for an answer: a request waits this long at
# most before the limit fails closed (503).
DEFAULT_TIMEOUT = 2.0
_REDIS_SCHEMES = ("redis", "rediss", "unix")


@lru_cache(maxsize=1024)
def parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    """`"100/minute; 5000/day"` as `limits` items (cached: per-key strings repeat).

    Raises:
        ConfigurationError: `text` is not in the `limits` notation.
    """
    try:
        items = tuple(parse_many(text))
    except ValueError:
        raise ConfigurationError(
            f"not a rate limit: {text!r} (write e.g. '100/minute; 5000/day')"
        ) from None
    if not items or any(item.amount <= 0 for item in items):
        raise ConfigurationError(f"not a rate limit: {text!r} (amounts are positive)")
    return items


class LimitStorage:
    """Counters for `RateLimits`, `Quotas` and `FailedAuthLimit`; share one between them.

    Args:
        url: `memory://`, or a Redis URL (`redis://[:password@]host:6379/0`,
            `rediss://`, `unix:///path/redis.sock`).
        key_prefix: Put before every Redis key used, as the key store's prefix is.
        timeout: Seconds to connect to Redis and to wait for an answer.
        client_options: More options for `redis.asyncio.Redis.from_url`.

    Raises:
        ConfigurationError: The URL is malformed, or Redis support (redis-py) is
            not installed.
    """

    def __init__(
        self,
        url: str = "memory://",
        *,
        key_prefix: str = "apiguard:",
        timeout: float = DEFAULT_TIMEOUT,
        **client_options: Any,
    ) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.redis: aioredis.Redis | None = None
        # Exactly one of the two: `limits`' memory storage, or its Redis storage.
        self.memory: MemoryStorage | None = None
        self.limits: RedisStorage | None = None
        scheme = url.partition("://")[0]
        if url == "memory://":
            self.memory = MemoryStorage(wrap_exceptions=True)
        elif scheme in _REDIS_SCHEMES:
            self.redis = _redis_client(url, timeout, client_options)
            # limits' storage over our connection pool: one pool, closed by aclose().
            try:
                self.limits = RedisStorage(
                    "async+redis://",
                    implementation="redispy",
                    wrap_exceptions=True,
                    key_prefix=f"{key_prefix}limits",
                    connection_pool=self.redis.connection_pool,  # type: ignore[arg-type]
                )
            except LimitsConfigurationError as exc:  # redis-py older than limits needs
                raise ConfigurationError(
                    f"limits cannot use the installed redis-py ({exc}): pip install 'redis>=5.2'"
                ) from None
        else:
            raise ConfigurationError(
                f"unknown limit storage {redact_url(url)!r}: use memory:// or redis://"
            )

    def __repr__(self) -> str:
        return f"LimitStorage({redact_url(self.url)!r})"

    def unavailable(self, exc: BaseException) -> BackendUnavailableError | None:
        """The `BackendUnavailableError` (the middleware's 503) for a storage error;
        `None` for anything else, to be raised as it is."""
        if isinstance(exc, StorageError):
            exc = exc.storage_error
        elif not isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)) and not (
            self.redis is not None and _is_redis_error(exc)
        ):
            return None
        return BackendUnavailableError(f"limit storage unavailable: {type(exc).__name__}")

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Storage errors become `BackendUnavailableError` (the middleware's 503)."""
        try:
            yield
        except Exception as exc:
            error = self.unavailable(exc)
            if error is None:
                raise
            raise error from exc

    async def aclose(self) -> None:
        """Close the Redis connections, if any."""
        if self.redis is not None:
            await self.redis.aclose()


def _redis_client(url: str, timeout: float, options: dict[str, Any]) -> aioredis.Redis:
    try:
        from apiguard.keys.redis import redis_client
    except ConfigurationError:  # pragma: no cover - exercised without the extra installed
        raise ConfigurationError(
            "a Redis limit storage needs redis-py: pip install 'apiguard-asgi[ratelimit,redis]'"
        ) from None
    from apiguard.keys.channel import split_push

    url, _ = split_push(url)  # the key store's push option means nothing here
    options.setdefault("socket_connect_timeout", timeout)
    options.setdefault("socket_timeout", timeout)
    return redis_client(url, "limit storage", **options)


def _is_redis_error(exc: BaseException) -> bool:
    from redis.exceptions import RedisError

    return isinstance(exc, RedisError)
