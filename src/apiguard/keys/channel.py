"""Invalidation channels: key changes pushed to every process that caches verifications.

A store with a channel publishes the key id of every key it revokes or rotates, and
subscribes, in each process, to what the others publish: each event drops that key's
cached verifications here, so a revoke made by the CLI or another worker is refused
everywhere within milliseconds instead of the cache ttl.

`RedisChannel` uses Redis pub/sub; `PostgresChannel` uses PostgreSQL `LISTEN/NOTIFY`
(a `SQLKeyStore` on PostgreSQL sends the `NOTIFY` inside the write's transaction, so
it is delivered when, and only if, the write commits). Events carry key ids, never
secrets.

The subscriber is a background task on the running event loop, started by the store
once something listens to it (a `KeyVerifier`) and stopped by the store's `aclose()`.
When its connection is lost it logs a WARNING and reconnects with a growing, jittered
delay; while it is down, other processes' changes take effect here within the cache
ttl, as without a channel. On every (re)connection it sends `ALL_KEYS` to the
listeners, since events published meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from apiguard.exceptions import ConfigurationError
from apiguard.keys._url import redact_url

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "ALL_KEYS",
    "PUSH_PARAM",
    "InvalidationChannel",
    "PostgresChannel",
    "RedisChannel",
    "channel_from_push",
    "split_push",
]

logger = logging.getLogger("apiguard.keys")

ALL_KEYS = "*"
"""What listeners receive when any key may have changed: the channel (re)connected."""

# An event is "<key id> <sender>": key ids are short and alphanumeric
# (apiguard.keys.format), the sender a random id per channel object, so that a process
# skips its own events (applied already, before publishing). Anything else on the
# channel is not ours and is ignored.
_EVENT = re.compile(r"([A-Za-z0-9_-]{1,64}) ([A-Za-z0-9_-]{1,64})")

Listener = Callable[[str], None]


class InvalidationChannel(ABC):
    """Publishes key changes to, and receives them from, every other process.

    Subclasses implement `publish()` and `_listen()`; this class runs the subscriber:
    reconnection with backoff, logging, and `ALL_KEYS` on each connection.

    Args:
        heartbeat: Seconds between liveness checks of an idle subscription; a server
            that does not answer within another `heartbeat` counts as lost.
        backoff: Seconds before the first reconnection attempt; doubled after each
            failure, with jitter, up to `max_backoff`.
        max_backoff: The longest wait between reconnection attempts.
    """

    notify_channel: str | None = None
    """The PostgreSQL `NOTIFY` channel a SQL store on PostgreSQL can notify in its own
    transaction, instead of calling `publish()`; `None` for other channels."""

    def __init__(
        self, *, heartbeat: float = 5.0, backoff: float = 0.1, max_backoff: float = 10.0
    ) -> None:
        if min(heartbeat, backoff, max_backoff) <= 0:
            raise ConfigurationError("channel heartbeat and backoff must be positive")
        self._heartbeat = heartbeat
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self._lost: list[Callable[[], None]] = []
        self._sender = secrets.token_hex(8)
        self.connected = False
        """Whether the subscriber is listening now."""

    @property
    def running(self) -> bool:
        """Whether the subscriber task exists and has not ended."""
        return self._task is not None and not self._task.done()

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever the subscription is lost (or cannot be made)."""
        self._lost.append(callback)

    def payload(self, key_id: str) -> str:
        """The event that says `key_id` changed, as published."""
        return f"{key_id} {self._sender}"

    @abstractmethod
    async def publish(self, key_id: str) -> None:
        """Tell every subscribed process that `key_id` changed."""

    @abstractmethod
    async def _listen(self, connected: Callable[[], None], deliver: Listener) -> None:
        """Subscribe, call `connected()`, then `deliver(payload)` until the link fails.

        Returns or raises when the subscription is lost; cancellation stops it.
        """

    def start(self, apply: Listener) -> None:
        """Start the subscriber on the running event loop, unless it runs already.

        Raises:
            RuntimeError: No event loop is running.
        """
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and not task.get_loop().is_closed():
            return
        # None yet, ended, or left on a loop that is closed (a store used from one
        # event loop after another): a new one on this loop.
        self._task = loop.create_task(self._run(apply), name=f"apiguard invalidations: {self!r}")

    async def _run(self, apply: Listener) -> None:
        try:
            await self._subscribe(apply)
        finally:  # cancelled: by aclose(), or by the end of its event loop
            self.connected = False

    async def _subscribe(self, apply: Listener) -> None:
        lost_at: float | None = None
        failures = 0
        loop = asyncio.get_running_loop()

        def connected() -> None:
            nonlocal lost_at, failures
            self.connected = True
            failures = 0
            if lost_at is None:
                logger.info("invalidation channel connected: %r", self)
            else:
                logger.warning(
                    "invalidation channel back after %.1f s: %r", loop.time() - lost_at, self
                )
                lost_at = None
            apply(ALL_KEYS)  # what was published while we were away is lost

        def deliver(payload: str) -> None:
            event = _EVENT.fullmatch(payload)
            if event is not None and event[2] != self._sender:
                apply(event[1])

        while True:
            reason = "connection closed"
            try:
                await self._listen(connected, deliver)
            # Any driver's errors (and a heartbeat's timeout): the subscriber must go on.
            except Exception as exc:  # noqa: BLE001 - logged below, by name
                reason = type(exc).__name__
            self.connected = False
            if failures == 0:  # it was up, or this was the first attempt: say so once
                for callback in tuple(self._lost):
                    callback()
                lost_at = loop.time() if lost_at is None else lost_at
                logger.warning(
                    "invalidation channel lost (%s): %r; changes made by other processes "
                    "take effect here within the cache ttl until it is back; reconnecting",
                    reason,
                    self,
                )
            else:
                logger.debug("invalidation channel: reconnection failed (%s)", reason)
            failures += 1
            delay = min(self._max_backoff, self._backoff * 2.0 ** min(failures - 1, 16))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter

    async def aclose(self) -> None:
        """Stop the subscriber and release the channel's connections."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            # asyncio.wait_for (in the drivers, and ours) can swallow a cancellation
            # that arrives as the awaited call completes (python/cpython#86296): cancel
            # until the task has ended. Its CancelledError stays in the task.
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
        self.connected = False


class RedisChannel(InvalidationChannel):
    """Key changes over Redis pub/sub.

    Pub/sub ignores the database number: stores that share a server share a channel
    unless their names differ.

    Args:
        client: A `redis.asyncio.Redis` client: publishes, and opens the subscriber's
            own connection. Not closed by the channel unless made by `from_url()`.
        name: The pub/sub channel.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        name: str = "apiguard:invalidations",
        _owns_client: bool = False,
        **options: float,
    ) -> None:
        super().__init__(**options)
        self._client = client
        self._name = name
        self._owns_client = _owns_client

    @classmethod
    def from_url(cls, url: str, *, name: str = "apiguard:invalidations") -> RedisChannel:
        """A channel on the Redis server at `url`, with a client of its own.

        Raises:
            ConfigurationError: The URL is malformed or redis-py is not installed.
        """
        try:
            import redis.asyncio as aioredis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ConfigurationError(
                "a Redis invalidation channel needs redis-py: pip install 'apiguard-asgi[redis]'"
            ) from None
        try:
            # Publishing runs inside a revoke: fail fast, never retry behind its back.
            client = aioredis.Redis.from_url(
                url, socket_connect_timeout=2.0, socket_timeout=2.0, retry=Retry(NoBackoff(), 0)
            )
        except ValueError:
            raise ConfigurationError(f"cannot open channel {redact_url(url)!r}") from None
        return cls(client, name=name, _owns_client=True)

    def __repr__(self) -> str:
        options = self._client.connection_pool.connection_kwargs
        where = options.get("path") or f"{options.get('host')}:{options.get('port')}"
        return f"RedisChannel({where}, name={self._name!r})"

    async def publish(self, key_id: str) -> None:
        await self._client.publish(self._name, self.payload(key_id))

    async def _listen(self, connected: Callable[[], None], deliver: Listener) -> None:
        pubsub = self._client.pubsub()
        try:
            await asyncio.wait_for(pubsub.subscribe(self._name), self._heartbeat)
            connected()
            loop = asyncio.get_running_loop()
            heard = loop.time()
            pinged = False
            while True:
                message: dict[str, Any] | None = await pubsub.get_message(
                    timeout=self._heartbeat / 2
                )
                now = loop.time()
                if message is not None:
                    heard, pinged = now, False
                    if message["type"] == "message":
                        data = message["data"]
                        deliver(data.decode() if isinstance(data, bytes) else str(data))
                elif now - heard >= self._heartbeat * 2 and pinged:
                    # A paused or unplugged server closes nothing: silence is the sign.
                    raise asyncio.TimeoutError
                elif now - heard >= self._heartbeat and not pinged:
                    await pubsub.ping()
                    pinged = True
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await super().aclose()
        if self._owns_client:
            await self._client.aclose()


class PostgresChannel(InvalidationChannel):
    """Key changes over PostgreSQL `LISTEN/NOTIFY`, through asyncpg.

    The subscriber holds one connection of its own (LISTEN needs a session), named
    `apiguard-invalidations` in `pg_stat_activity`.

    Args:
        dsn: A `postgresql://` URL for asyncpg.
        name: The `NOTIFY` channel.
    """

    def __init__(self, dsn: str, *, name: str = "apiguard_invalidations", **options: float) -> None:
        super().__init__(**options)
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "a PostgreSQL invalidation channel needs asyncpg: pip install 'apiguard-asgi[postgres]'"
            ) from None
        self._dsn = dsn
        self.notify_channel = name

    def __repr__(self) -> str:
        return f"PostgresChannel({redact_url(self._dsn)!r}, name={self.notify_channel!r})"

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(
            self._dsn,
            timeout=self._heartbeat,
            server_settings={"application_name": "apiguard-invalidations"},
        )

    async def publish(self, key_id: str) -> None:
        connection = await self._connect()
        try:
            await connection.execute(
                "SELECT pg_notify($1, $2)", self.notify_channel, self.payload(key_id)
            )
        finally:
            await connection.close()

    async def _listen(self, connected: Callable[[], None], deliver: Listener) -> None:
        connection = await self._connect()
        closed = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: closed.set())
            await connection.add_listener(
                self.notify_channel, lambda _conn, _pid, _channel, payload: deliver(payload)
            )
            connected()
            while not closed.is_set():
                try:
                    await asyncio.wait_for(closed.wait(), self._heartbeat)
                except asyncio.TimeoutError:
                    # A paused or unplugged server closes nothing: ask it something.
                    await connection.fetchval("SELECT 1", timeout=self._heartbeat)
        finally:
            connection.terminate()  # never waits on a server that may be gone


PUSH_PARAM = "push"
"""The store URL query parameter that chooses the channel: `off`, or a Redis URL."""


def split_push(url: str) -> tuple[str, str | None]:
    """`url` without its `push` query parameter, and that parameter's value (or None)."""
    # Not through urlsplit/urlunsplit: they turn sqlite:////abs/path into sqlite://abs/path.
    base, sep, query = url.partition("?")
    if not sep:
        return url, None
    query, hash_sign, fragment = query.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    push = [value for name, value in pairs if name == PUSH_PARAM]
    if not push:
        return url, None
    rest = urlencode([(name, value) for name, value in pairs if name != PUSH_PARAM])
    return base + ("?" + rest if rest else "") + hash_sign + fragment, push[-1]


def channel_from_push(push: str) -> InvalidationChannel | None:
    """The channel a `push` URL parameter names: `off` is none, a Redis URL is Redis.

    Raises:
        ConfigurationError: Anything else.
    """
    if push == "off":
        return None
    if push.partition("://")[0] in ("redis", "rediss", "unix"):
        return RedisChannel.from_url(push)
    raise ConfigurationError(
        f"{PUSH_PARAM}= takes 'off' or a redis://, rediss:// or unix:// URL, "
        f"not {redact_url(push)!r}"
    )
