"""Bounded caches and single-flight, shared by key verification and token introspection."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

from apiguard.exceptions import BackendUnavailableError, ConfigurationError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

STALE_LOG_INTERVAL = 10.0  # seconds between two warnings about one credential served stale


class TTLCache(Generic[K, V]):
    """A least-recently-used cache whose entries also expire.

    Entries carry a deadline on the caller's clock (`time.monotonic()` in apiguard)
    and an optional tag, so that every entry derived from one credential (one key id,
    for example) can be dropped at once with `invalidate(tag)`. An entry may be kept
    past its deadline, until `keep_until`, for `get_stale`; it still counts toward
    `maxsize` meanwhile.

    The tag index maps a tag to its one key, and only to a set of keys when it has
    several: most tags (a key id) have one entry, and a set of one would be most
    of an entry's memory.
    """

    __slots__ = ("_entries", "_maxsize", "_tags")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._maxsize = maxsize
        self._entries: OrderedDict[K, tuple[float, V, Hashable, float]] = OrderedDict()
        self._tags: dict[Hashable, K | set[K]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """Return the live value for `key`, or `None`; an expired entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            if entry[3] <= now:
                self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def get_stale(self, key: K, now: float) -> V | None:
        """Return the value for `key` if it is kept still, live or past its deadline."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[3] <= now:
            self._remove(key)
            return None
        return entry[1]

    def set(
        self,
        key: K,
        value: V,
        deadline: float,
        tag: Hashable = None,
        *,
        keep_until: float | None = None,
    ) -> None:
        """Store `value` until `deadline`, evicting the least recently used entry when full.

        `keep_until` (later than `deadline`) keeps it for `get_stale` until then.
        """
        if key in self._entries:
            self._remove(key)
        elif len(self._entries) >= self._maxsize:
            self._remove(next(iter(self._entries)))
        keep = deadline if keep_until is None else max(deadline, keep_until)
        self._entries[key] = (deadline, value, tag, keep)
        if tag is not None:
            tags = self._tags
            held = tags.get(tag)
            if held is None:
                tags[tag] = key
            elif isinstance(held, set):
                held.add(key)
            else:
                tags[tag] = {held, key}

    def discard(self, key: K) -> None:
        """Drop the entry for `key`, if there is one."""
        if key in self._entries:
            self._remove(key)

    def invalidate(self, tag: Hashable) -> int:
        """Drop every entry stored with `tag`; return how many were dropped."""
        held = self._tags.pop(tag, None)
        if held is None:
            return 0
        keys = held if isinstance(held, set) else (held,)
        for key in keys:
            del self._entries[key]
        return len(keys)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._tags.clear()

    def _remove(self, key: K) -> None:
        tag = self._entries.pop(key)[2]
        if tag is not None:
            held = self._tags[tag]
            if not isinstance(held, set):
                del self._tags[tag]
                return
            held.discard(key)
            if len(held) == 1:
                self._tags[tag] = held.pop()


class _Call(Generic[V]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        # The event is made by the first caller who has to wait: a call nobody
        # joins (nearly every one) costs no event.
        self.done: anyio.Event | None = None
        self.value: V | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[K, V]):
    """Collapse concurrent calls for the same key into one.

    While a call for `key` is under way, later callers wait for its outcome instead
    of starting their own: N concurrent requests with one uncached credential cost
    one store lookup (or one introspection call). If the leading call is cancelled,
    the waiters run the call again themselves rather than fail.
    """

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[K, _Call[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, key: object) -> bool:
        """Whether a call for `key` is under way."""
        return key in self._calls

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        """Return `await fn()`, sharing one run among concurrent callers of `key`."""
        while True:
            call = self._calls.get(key)
            if call is None:
                break
            if call.done is None:
                call.done = anyio.Event()
            await call.done.wait()
            if call.error is None:
                return call.value  # type: ignore[return-value]
            if not isinstance(call.error, anyio.get_cancelled_exc_class()):
                raise call.error
            # The leader was cancelled: try again, perhaps as the new leader.

        mine: _Call[V] = _Call()  # not _Call[V](): typing's alias call costs a microsecond
        self._calls[key] = mine
        try:
            mine.value = value = await fn()
        except BaseException as exc:
            mine.error = exc
            raise
        finally:
            del self._calls[key]
            if mine.done is not None:
                mine.done.set()
        return value


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """How long verifications are trusted without asking the store (or the issuer) again.

    Attributes:
        max_size: Entries kept in each of the positive and negative caches (LRU).
        ttl: Seconds a successful verification is reused. For API keys this is the
            worst-case delay before a revoke made in *another* process takes effect
            here; for bearer tokens, before a revocation at the authorization server
            does. It never outlives the credential's own expiry.
        negative_ttl: Seconds a refused credential is refused without asking again.
            Malformed credentials and outages are never cached.
        ttl_without_push: API keys in a store with an invalidation channel
            (PostgreSQL, Redis): the `ttl` of verifications made while the channel
            is down, and the cache is emptied when it is lost, so this bounds the
            revocation delay during a channel outage (plus the time to notice a
            silent one). `None`: `ttl` throughout.
        stale_if_error: Seconds past its `ttl` that a successful verification may
            still be served while the store (or the authorization server) is
            unavailable, instead of a 503; each such answer is logged at WARNING.
            Never past the credential's own expiry, never after its invalidation
            (revoke, rotate), never for a refusal, and only for an outage
            (`BackendUnavailableError`). Stale entries count toward `max_size`.
            `0` (the default): fail closed, 503 as soon as `ttl` has passed.
    """

    max_size: int = 10_000
    ttl: float = 30.0
    negative_ttl: float = 5.0
    ttl_without_push: float | None = None
    stale_if_error: float = 0.0

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ConfigurationError("CacheOptions.max_size must be at least 1")
        if min(self.ttl, self.negative_ttl, self.ttl_without_push or 0, self.stale_if_error) < 0:
            raise ConfigurationError("cache TTLs and stale_if_error cannot be negative")


class VerdictCache(Generic[K, V]):
    """Verdicts on credentials: grants for `ttl`, refusal reasons for `negative_ttl`.

    Keys are digests of credentials, never credentials. Concurrent misses for one key
    share one `fill`, but only among requests that began between the same two
    invalidations: a fill that started before an `invalidate` neither stores its
    verdict nor answers a request that began after it, so nothing in flight can
    undo a revoke.
    """

    __slots__ = (
        "_clock",
        "_flight",
        "_generation",
        "_stale_logged",
        "negative",
        "options",
        "positive",
    )

    def __init__(self, options: CacheOptions, clock: Callable[[], float]) -> None:
        self.options = options
        self.positive: TTLCache[K, V] = TTLCache(options.max_size)
        self.negative: TTLCache[K, str] = TTLCache(options.max_size)
        self._flight: SingleFlight[tuple[K, int], V] = SingleFlight()
        self._clock = clock
        self._generation = 0
        self._stale_logged: OrderedDict[str, float] = OrderedDict()

    @property
    def generation(self) -> int:
        """Changes on every invalidation; pass it back to `allow`/`refuse`."""
        return self._generation

    def invalidate(self, tag: Hashable) -> None:
        """Forget every verdict stored with `tag`."""
        self._generation += 1
        self.positive.invalidate(tag)
        self.negative.invalidate(tag)

    def clear(self) -> None:
        """Forget every verdict."""
        self._generation += 1
        self.positive.clear()
        self.negative.clear()

    def allow(
        self,
        key: K,
        value: V,
        generation: int,
        *,
        tag: Hashable = None,
        lifetime: float | None = None,
        trust_for: float | None = None,
    ) -> None:
        """Store a grant for `ttl` seconds (or `trust_for`), never past `lifetime`.

        `lifetime` is what is left of the credential's own life. With
        `stale_if_error` the grant is kept that much longer for `stale`, but never
        past `lifetime` either.
        """
        if generation != self._generation:
            return
        ttl = self.options.ttl if trust_for is None else min(self.options.ttl, trust_for)
        keep = ttl + self.options.stale_if_error
        if lifetime is not None:
            ttl, keep = min(ttl, lifetime), min(keep, lifetime)
        if keep > 0:
            now = self._clock()
            self.positive.set(key, value, now + ttl, tag, keep_until=now + keep)
        else:
            self.positive.discard(key)

    def stale(self, key: K) -> V | None:
        """The grant kept for `key` past its `ttl` under `stale_if_error`, if any.

        For the caller to serve instead of a `BackendUnavailableError`, and no other.
        """
        if not self.options.stale_if_error:
            return None
        return self.positive.get_stale(key, self._clock())

    async def fill_or_stale(
        self,
        key: K,
        fn: Callable[[int], Awaitable[V]],
        *,
        backend: str,
        describe: Callable[[V], str],
        log: logging.Logger,
    ) -> V:
        """`fill`, but an outage is answered with the grant kept under `stale_if_error`.

        Each credential so served is logged at WARNING, at most once per
        `STALE_LOG_INTERVAL`, as `describe(grant)` (an id, never a secret).
        """
        try:
            return await self.fill(key, fn)
        except BackendUnavailableError as exc:
            value = self.stale(key)
            if value is None:
                raise
            name = describe(value)
            if self.should_warn_stale(name):
                log.warning(
                    "%s unavailable (%s): serving a verification past its ttl "
                    "under stale_if_error (%s)",
                    backend,
                    exc,
                    name,
                )
            return value

    def should_warn_stale(self, name: str) -> bool:
        """Whether to log that `name` is served stale: once per `STALE_LOG_INTERVAL`."""
        now = self._clock()
        logged = self._stale_logged
        last = logged.get(name)
        if last is not None and now - last < STALE_LOG_INTERVAL:
            return False
        logged[name] = now
        logged.move_to_end(name)
        if len(logged) > self.options.max_size:
            logged.popitem(last=False)
        return True

    def refuse(
        self,
        key: K,
        reason: str,
        generation: int,
        *,
        tag: Hashable = None,
        lifetime: float | None = None,
    ) -> None:
        """Store a refusal for `negative_ttl` seconds, or `lifetime` if that is shorter."""
        # A grant kept for stale-if-error must not outlive a refusal of the same key.
        self.positive.discard(key)
        if generation != self._generation:
            return
        ttl = self.options.negative_ttl
        if lifetime is not None:
            ttl = min(ttl, lifetime)
        if ttl > 0:
            self.negative.set(key, reason, self._clock() + ttl, tag)

    async def fill(self, key: K, fn: Callable[[int], Awaitable[V]]) -> V:
        """`await fn(generation)`, shared with concurrent callers for the same key.

        `fn` gets the generation the caller saw on arrival; it passes it back to
        `allow`/`refuse`. Callers that arrive after an invalidation start a new
        fill rather than join one that may have read the state before it.
        """
        generation = self._generation
        return await self._flight.run((key, generation), lambda: fn(generation))
