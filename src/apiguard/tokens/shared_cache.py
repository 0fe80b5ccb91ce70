"""`RedisTokenCache`: one introspection per token across every process, through Redis.

Install with `pip install 'apiguard-asgi[redis]'`. It sits under each process's own
cache (`TokenVerifier`): a token this process has not seen is looked up in Redis
first; on a miss, one process (the one that takes a short lock) asks the
authorization server and stores the verdict for all. Under the key prefix
(`apiguard:token:` by default)::

    apiguard:token:{<sha-256 of the token, hex>}        the verdict, with a Redis TTL
    apiguard:token:{<sha-256 of the token, hex>}:lock   who is asking (random id), short TTL

A verdict is JSON: `{"u": <valid until, ms since the epoch>, "a": true, "i": {...}}`
with the token's verified `TokenInfo`, or `{"u": ..., "a": false, "r": <reason>}` for a
refusal. With `secret`, it is preceded by an HMAC-SHA256 (hex) over the Redis key and
the JSON, so that a verdict cannot be forged, nor moved to another token, without it.
The braces make the two keys of one token one Redis Cluster hash slot.

Processes that lose the race for the lock poll for the verdict, 5 ms apart at first
and then up to 50 ms apart, for at most `lock_wait` seconds; then, or as soon as the
lock is gone without a verdict (the leader failed), they ask the authorization server
themselves. Polling rather than pub/sub: inside one process concurrent requests for
one token already share one lookup, so at most one request per process polls, and
polling needs neither a connection held open per process nor keyspace notifications,
which managed Redis services often turn off.

Every Redis call is bounded by `timeout`. A failed or timed-out call takes Redis out
of use for `retry_interval` seconds (logged at WARNING once per outage, and its end at
INFO): tokens are then verified with the process's own cache and the authorization
server, never passed, and never refused with a 503 because of the cache alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, TypeVar

import anyio

from apiguard._observe import backend_call
from apiguard.exceptions import ConfigurationError, InvalidToken
from apiguard.tokens.info import TokenInfo
from apiguard.tokens.jwks import looks_like_jwt

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_exceptions
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from apiguard.keys.redis import describe, redis_client
except ImportError as exc:
    raise ConfigurationError(
        "RedisTokenCache needs redis-py: pip install 'apiguard-asgi[redis]'"
    ) from exc

__all__ = ["RedisTokenCache"]

logger = logging.getLogger("apiguard.tokens")

T = TypeVar("T")

MAX_ENTRY_SIZE = 64 * 1024  # bytes; a larger verdict is neither stored nor read
_MAC_SIZE = 64  # hex digits of an HMAC-SHA256
_FIRST_POLL, _MAX_POLL = 0.005, 0.05  # seconds between two looks for the leader's verdict
_BAD_ENTRY_LOG_INTERVAL = 10.0

# KEYS: the verdict, the lock. ARGV: the verdict, its TTL (ms), the lock owner or ''.
# Stored and the lock released in one step: a waiter sees the verdict or the lock.
_PUBLISH = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: the lock. ARGV: its owner. Only the owner's lock is deleted, never one that
# expired and was taken by another process meanwhile.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

Fetch = Callable[[str], Awaitable[TokenInfo]]


class _Unavailable(Exception):
    """Redis did not answer in time, or answered with an error."""


class RedisTokenCache:
    """A token verdict cache shared by every process through Redis.

    Pass it to `BearerAuth`, `BearerTokenMiddleware` or `TokenVerifier` as
    `token_cache=`; close it in your app's lifespan (`await cache.aclose()`, or
    `async with`). It does not change what is accepted, only who asks: a revocation
    at the authorization server is seen everywhere within `ttl` (and the local
    `CacheOptions.ttl`) of the introspection that last saw the token active.

    Args:
        client: A `redis.asyncio.Redis` client, not closed by `aclose()`;
            `from_url()` makes one the cache owns.
        key_prefix: Put before every Redis key the cache uses.
        ttl: Seconds an active verdict is shared; never past the token's `exp`.
        negative_ttl: Seconds a refusal (inactive, expired, wrong audience, ...)
            is shared; `0` shares none. Outages and malformed tokens never are.
        timeout: Seconds each Redis call may take; past it the call counts as failed.
        lock_ttl: Seconds the lock of the process asking the authorization server
            lives at most (should that process die while asking).
        lock_wait: Seconds the other processes wait for its verdict before asking
            themselves.
        retry_interval: Seconds Redis is left alone after a failed call; then one
            request tries it again.
        secret: A key (32 bytes or more) for an HMAC over each stored verdict:
            then someone who can write to Redis but lacks the secret cannot make a
            token accepted. Without it Redis is trusted like a key store.
        jwts: Also share verdicts on tokens shaped like a JWT. Off by default: a JWT
            is validated locally in microseconds, so sharing saves nothing unless
            it is also introspected (`CompositeIntrospector(introspect_jwts=True)`).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "apiguard:token:",
        ttl: float = 30.0,
        negative_ttl: float = 2.0,
        timeout: float = 0.1,
        lock_ttl: float = 5.0,
        lock_wait: float = 2.0,
        retry_interval: float = 1.0,
        secret: str | bytes | None = None,
        jwts: bool = False,
        _owns_client: bool = False,
    ) -> None:
        if ttl <= 0 or timeout <= 0 or lock_ttl <= 0:
            raise ConfigurationError("ttl, timeout and lock_ttl must be positive")
        if min(negative_ttl, lock_wait, retry_interval) < 0:
            raise ConfigurationError(
                "negative_ttl, lock_wait and retry_interval cannot be negative"
            )
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and len(secret) < 32:
            raise ConfigurationError("the secret of a RedisTokenCache needs 32 bytes or more")
        self._client = client
        self._owns_client = _owns_client
        self._prefix = key_prefix
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._timeout = timeout
        self._lock_ms = max(1, int(lock_ttl * 1000))
        self._lock_wait = lock_wait
        self._retry_interval = retry_interval
        self._secret = secret
        self._jwts = jwts
        self._publish = client.register_script(_PUBLISH)
        self._release = client.register_script(_RELEASE)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._bad_logged = float("-inf")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisTokenCache:
        """Open a cache at `url`: `redis://`, `rediss://` or `unix://`.

        `options` are those of the constructor; any other goes to
        `redis.asyncio.Redis.from_url` (options in the URL's query win). Connecting
        and each command give up after `timeout`, and a failed command is not
        retried: the cache is skipped instead.

        Raises:
            ConfigurationError: The URL is malformed.
        """
        own = {name: options.pop(name) for name in list(options) if name in _OPTIONS}
        timeout = float(own.get("timeout", 0.1))
        options.setdefault("socket_connect_timeout", timeout)
        options.setdefault("socket_timeout", timeout)
        options.setdefault("retry", Retry(NoBackoff(), 0))
        client = redis_client(url, "token cache", **options)
        return cls(client, _owns_client=True, **own)

    def __repr__(self) -> str:
        return f"RedisTokenCache({describe(self._client)}, key_prefix={self._prefix!r})"

    @property
    def available(self) -> bool:
        """Whether Redis answered the last call (or none was made yet)."""
        return self._down_since is None

    async def introspect(
        self, digest: bytes, token: str, fetch: Fetch
    ) -> tuple[TokenInfo, float | None]:
        """The verdict on `token` (whose SHA-256 is `digest`), shared or `fetch`ed.

        Returns the active `TokenInfo` and, when it came from Redis, the seconds it
        may still be trusted (`None`: it was just fetched). A refusal is raised as
        `InvalidToken`, with `remember_for` when it came from Redis.

        Raises:
            InvalidToken: The token is not active, or `fetch` refused it.
            BackendUnavailableError: `fetch` could not get an answer.
        """
        if (not self._jwts and looks_like_jwt(token)) or not self._usable():
            return await fetch(token), None
        key = f"{self._prefix}{{{digest.hex()}}}"
        lock = f"{key}:lock"
        owner = secrets.token_hex(16)
        try:
            found = await self._read(key)
            if found is not None:
                return found
            leader = await self._call(
                lambda: self._client.set(lock, owner, nx=True, px=self._lock_ms)
            )
            if leader:
                # The previous leader may have shared its verdict, and released its
                # lock, between the read above and this lock: read again.
                found = await self._read(key)
                if found is not None:
                    await self._quietly(lambda: self._release(keys=[lock], args=[owner]))
                    return found
            else:
                found = await self._await(key, lock)
                if found is not None:
                    return found
        except _Unavailable:
            return await fetch(token), None
        # The leader, or a waiter whose wait ran out: ask, and share the answer.
        return await self._fill(key, lock, owner if leader else "", token, fetch)

    async def _fill(
        self, key: str, lock: str, owner: str, token: str, fetch: Fetch
    ) -> tuple[TokenInfo, float | None]:
        try:
            info = await fetch(token)
        except InvalidToken as exc:
            ttl = self.negative_ttl
            if exc.remember_for is not None:
                ttl = min(ttl, exc.remember_for)
            await self._store(key, lock, owner, {"a": False, "r": exc.reason}, ttl)
            raise
        except BaseException:
            if owner:
                with anyio.CancelScope(shield=True):
                    await self._quietly(lambda: self._release(keys=[lock], args=[owner]))
            raise
        if info.active:
            ttl = self.ttl
            if info.expires_at is not None:
                ttl = min(ttl, info.expires_at.timestamp() - time.time())
            await self._store(key, lock, owner, {"a": True, "i": _dump(info)}, ttl)
        else:
            await self._store(key, lock, owner, {"a": False, "r": "inactive"}, self.negative_ttl)
        return info, None

    async def _store(
        self, key: str, lock: str, owner: str, verdict: dict[str, Any], ttl: float
    ) -> None:
        """Share `verdict` for `ttl` seconds and release the lock; never raises."""
        ms = int(ttl * 1000)
        value = None
        if ms > 0:
            verdict["u"] = int(time.time() * 1000) + ms
            try:
                value = self._seal(key, json.dumps(verdict, separators=(",", ":")).encode())
            except (TypeError, ValueError):  # claims a custom introspector made unserializable
                value = None
            if value is not None and len(value) > MAX_ENTRY_SIZE:
                value = None
        with anyio.CancelScope(shield=True):
            if value is not None:
                await self._quietly(
                    lambda: self._publish(keys=[key, lock], args=[value, ms, owner])
                )
            elif owner:
                await self._quietly(lambda: self._release(keys=[lock], args=[owner]))

    async def _read(self, key: str) -> tuple[TokenInfo, float | None] | None:
        raw = await self._call(lambda: self._client.get(key))
        return self._verdict(key, raw)

    async def _await(self, key: str, lock: str) -> tuple[TokenInfo, float | None] | None:
        """Poll for the leader's verdict; `None` once its lock is gone or the wait is over."""
        deadline = time.monotonic() + self._lock_wait
        delay = _FIRST_POLL
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await anyio.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_POLL)
            raw, held = await self._call(lambda: self._client.mget(key, lock))
            found = self._verdict(key, raw)
            if found is not None or held is None:
                return found

    def _verdict(self, key: str, raw: bytes | str | None) -> tuple[TokenInfo, float | None] | None:
        """The stored verdict, or `None` for none, an expired or an unusable one."""
        if raw is None:
            return None
        if isinstance(raw, str):  # a client made with decode_responses=True
            raw = raw.encode()
        try:
            entry = self._open(key, raw)
            left = (entry["u"] - time.time() * 1000) / 1000
            if left <= 0:
                return None
            if entry["a"] is True:
                return _load(entry["i"]), left
            reason = entry["r"]
            if entry["a"] is not False or not isinstance(reason, str):
                raise TypeError("not a verdict")
        except (ValueError, TypeError, KeyError, OverflowError, OSError) as exc:
            self._bad_entry(type(exc).__name__)
            return None
        refusal = InvalidToken(reason=reason)
        refusal.remember_for = left
        raise refusal

    def _seal(self, key: str, payload: bytes) -> bytes:
        if self._secret is None:
            return payload
        mac = hmac.new(self._secret, key.encode() + b"\0" + payload, hashlib.sha256)
        return mac.hexdigest().encode() + payload

    def _open(self, key: str, raw: bytes) -> dict[str, Any]:
        if len(raw) > MAX_ENTRY_SIZE:
            raise ValueError("too large")
        if self._secret is not None:
            mac, raw = raw[:_MAC_SIZE], raw[_MAC_SIZE:]
            if not hmac.compare_digest(mac, self._seal(key, raw)[:_MAC_SIZE]):
                raise ValueError("bad HMAC")
        entry = json.loads(raw)
        if not isinstance(entry, dict) or not isinstance(entry.get("u"), (int, float)):
            raise TypeError("not a verdict")
        return entry

    def _bad_entry(self, what: str) -> None:
        now = time.monotonic()
        if now - self._bad_logged >= _BAD_ENTRY_LOG_INTERVAL:
            self._bad_logged = now
            logger.warning(
                "shared token cache: ignored an entry that is not a verdict of this "
                "cache (%s); check that every process has the same secret",
                what,
            )

    def _usable(self) -> bool:
        if self._down_since is None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._retry_interval  # this request tries; the others wait
        return True

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`await fn()` within `timeout`; a failure takes Redis out of use for a while."""
        try:
            with backend_call("shared_cache"), anyio.fail_after(self._timeout):
                result = await fn()
        except (redis_exceptions.RedisError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            now = time.monotonic()
            self._retry_at = now + self._retry_interval
            if self._down_since is None:
                self._down_since = now
                logger.warning(
                    "shared token cache unavailable (%s): verifying tokens with this "
                    "process's cache and the authorization server until it is back",
                    type(exc).__name__,
                )
            raise _Unavailable from None
        if self._down_since is not None:
            logger.info(
                "shared token cache available again after %.1f s",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return result

    async def _quietly(self, fn: Callable[[], Awaitable[object]]) -> None:
        if self._usable():
            with contextlib.suppress(_Unavailable):
                await self._call(fn)

    async def aclose(self) -> None:
        """Close the Redis client if the cache made it (`from_url()`)."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> RedisTokenCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_OPTIONS = frozenset(
    {
        "key_prefix",
        "ttl",
        "negative_ttl",
        "timeout",
        "lock_ttl",
        "lock_wait",
        "retry_interval",
        "secret",
        "jwts",
    }
)


def _time(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dump(info: TokenInfo) -> dict[str, Any]:
    return {
        "sub": info.subject,
        "cid": info.client_id,
        "scp": sorted(info.scopes),
        "aud": list(info.audience),
        "iss": info.issuer,
        "exp": _time(info.expires_at),
        "iat": _time(info.issued_at),
        "typ": info.token_type,
        "cnf": None if info.cnf is None else dict(info.cnf),
        "claims": dict(info.claims),
    }


def _opt_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _opt_time(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a time")
    return datetime.fromtimestamp(value, timezone.utc)


def _load(data: Mapping[str, Any]) -> TokenInfo:
    scopes, audience, cnf, claims = data["scp"], data["aud"], data["cnf"], data["claims"]
    if not (
        isinstance(scopes, list)
        and isinstance(audience, list)
        and all(isinstance(s, str) for s in scopes + audience)
        and isinstance(claims, dict)
        and (cnf is None or isinstance(cnf, dict))
    ):
        raise TypeError("not a token")
    return TokenInfo(
        active=True,
        subject=_opt_str(data["sub"]),
        client_id=_opt_str(data["cid"]),
        scopes=frozenset(scopes),
        audience=tuple(audience),
        issuer=_opt_str(data["iss"]),
        expires_at=_opt_time(data["exp"]),
        issued_at=_opt_time(data["iat"]),
        token_type=_opt_str(data["typ"]),
        cnf=None if cnf is None else MappingProxyType(cnf),
        claims=MappingProxyType(claims),
    )
