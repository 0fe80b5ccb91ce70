"""`RateLimits`: requests per caller per window, a policy run after authentication.

Each caller has its own counters: an API key by its key id, a bearer token by its
client id (else its subject), an anonymous request (optional mode) by its client
address. The limits come from the key record (`KeyRecord.rate_limit`) when it has
its own, else from the policy's `default`; `RouteLimit`s add limits on some routes,
counted per caller and per rule.

The counting is the `limits` library's sliding window counter: two counters per
limit, so constant memory, approximating a true moving window by assuming the
previous window's requests were spread evenly. A request is counted by all of its
limits or by none: one limit's refusal does not use up the others. In memory that
is `limits`' synchronous strategies (test every limit, then hit them, with no await
in between); in Redis one script for all of them, one round trip per request
(`apiguard.ratelimit._pipeline`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem
from limits import strategies as sync_strategies
from limits.aio import strategies as aio_strategies
from limits.util import WindowStats

from apiguard.exceptions import ConfigurationError, RateLimitExceeded
from apiguard.policies import ScopeRule, route_path
from apiguard.principal import Principal
from apiguard.proxies import TrustedProxies
from apiguard.ratelimit._fields import HeaderStyle, LimitState, _item, rate_limit_fields
from apiguard.ratelimit._windows import MemoryWindows
from apiguard.ratelimit.storage import LimitStorage, parse_limits
from apiguard.types import Scope

if TYPE_CHECKING:
    from apiguard.ratelimit._pipeline import RedisWindows
    from apiguard.ratelimit.quota import Quotas, _Pending

__all__ = ["RateLimits", "RouteLimit", "Strategy", "partition_key"]

Strategy = Literal["sliding-window-counter", "moving-window", "fixed-window"]
ResponseHeaders = list[tuple[bytes, bytes]]
_STRATEGIES: dict[
    str, tuple[type[sync_strategies.RateLimiter], type[aio_strategies.RateLimiter]]
] = {
    "sliding-window-counter": (
        sync_strategies.SlidingWindowCounterRateLimiter,
        aio_strategies.SlidingWindowCounterRateLimiter,
    ),
    "moving-window": (
        sync_strategies.MovingWindowRateLimiter,
        aio_strategies.MovingWindowRateLimiter,
    ),
    "fixed-window": (
        sync_strategies.FixedWindowRateLimiter,
        aio_strategies.FixedWindowRateLimiter,
    ),
}
# Distinct per-key limit sets whose header text is kept (a bound on attacker-chosen
# nothing: key records are the operator's; the bound only keeps memory flat).
_PLANS = 1024
_KEYS = 4096  # callers whose counter keys are kept, per plan


def partition_key(principal: Principal, scope: Scope, proxies: TrustedProxies) -> str:
    """Whose counter a request counts against: `api_key:<key id>`, `bearer:<client
    id or subject>`, or `address:<client address>` for the anonymous principal."""
    if principal.kind == "api_key":
        return f"api_key:{principal.key_id or principal.identity}"
    if principal.kind == "bearer":
        return f"bearer:{principal.client_id or principal.subject or principal.identity}"
    return f"address:{proxies.client_address(scope)}"


@lru_cache(maxsize=1024)
def _name(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return (
        f"{item.amount}/{unit}" if item.multiples == 1 else f"{item.amount}/{item.multiples}{unit}s"
    )


@dataclass(frozen=True, slots=True)
class _Limit:
    """One limit of a request, with the text of its fields worked out once."""

    item: RateLimitItem
    route: str | None  # the route rule's identifier, for route limits
    name: str
    policy: str  # its RateLimit-Policy item: `"100/minute";q=100;w=60`
    prefix: str  # its RateLimit item up to the numbers: `"100/minute";r=`


def _limit(item: RateLimitItem, route: str | None = None, path: str = "") -> _Limit:
    name = f"{path} {_name(item)}" if route is not None else _name(item)
    return _Limit(
        item,
        route,
        name,
        f"{_item(name)};q={item.amount};w={item.get_expiry()}",
        f"{_item(name)};r=",
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """The limits of one kind of request (a route rule and the caller's own limits),
    its `RateLimit-Policy` value, which does not change between requests, and the
    `limits` keys of recent callers' counters (`key_for` is not free)."""

    limits: tuple[_Limit, ...]
    items: tuple[RateLimitItem, ...]
    policy: bytes
    keys: dict[str, list[str]] = field(default_factory=dict)

    def keys_for(self, partition: str) -> list[str]:
        """The counter keys of `partition`'s limits, in order."""
        keys = self.keys.get(partition)
        if keys is None:
            if len(self.keys) >= _KEYS:
                self.keys.clear()
            keys = self.keys[partition] = [
                limit.item.key_for(*_identifiers(limit, partition)) for limit in self.limits
            ]
        return keys


def _plan(limits: tuple[_Limit, ...]) -> _Plan:
    policy = ", ".join(limit.policy for limit in limits).encode("latin-1")
    return _Plan(limits, tuple(limit.item for limit in limits), policy)


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """Limits on a route, on top of the caller's own, counted per caller.

    Attributes:
        path: An exact path or a prefix ending in `*`, matched as `ScopeRule` paths
            are (without the root path, only in normal form).
        limit: The limits, in the `limits` notation: `"10/minute"`,
            `"10/minute; 100/hour"`.
        methods: The methods it applies to; all if empty (`"GET"` covers HEAD).
    """

    path: str
    limit: str
    methods: Collection[str] = ()
    _rule: ScopeRule = field(init=False, repr=False, compare=False)
    _items: tuple[RateLimitItem, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A ScopeRule with no real scope requirement does the path and method matching.
        object.__setattr__(self, "_rule", ScopeRule(self.path, "-", self.methods))
        object.__setattr__(self, "_items", parse_limits(self.limit))

    def matches(self, path: str, method: str | None) -> bool:
        """Whether the rule applies to a request for `path` with `method`."""
        return self._rule.matches(path, method)


class RateLimits:
    """A policy (`AuthMiddleware(policies=[...])`) limiting requests per caller.

    `RateLimits("100/minute; 5000/day", storage="redis://localhost:6379/0")`

    A request over a limit gets 429 with `Retry-After` and the RateLimit fields, in
    the same JSON body as every other refusal. Allowed responses carry the fields
    too (`headers_on_success`), added to the app's response start; the body is
    never touched. Websocket handshakes are limited alike (refused before accept).

    Args:
        default: The limits of callers without their own, in the `limits` notation
            (`"100/minute; 5000/day"`); `None` for no limit on those.
        routes: Extra limits on some routes; the first matching rule applies.
        storage: `memory://` (this process only), a Redis URL shared by every
            worker, or a `LimitStorage` shared with `Quotas`/`FailedAuthLimit`.
        strategy: The `limits` strategy: `"sliding-window-counter"` (default),
            `"moving-window"` (exact, one stored timestamp per request), or
            `"fixed-window"` (cheapest; up to twice the limit across a boundary).
        per_key: Use a key record's own `rate_limit` in place of `default`.
        headers: `"draft"` (`RateLimit-Policy` and `RateLimit`,
            draft-ietf-httpapi-ratelimit-headers-10), `"legacy"`
            (`RateLimit-Limit/-Remaining/-Reset`), `"both"`, or `"none"`.
        headers_on_success: Send the fields on allowed responses too, not only on
            429s. Off saves reading the windows in memory; in Redis the one round
            trip carries them anyway.
        proxies: Who the client is behind your proxies, for anonymous callers.
        quotas: A `Quotas` counted with the limits, in the same Redis round trip and
            all or nothing with them (a request the quota refuses uses up no limit,
            and the reverse); it must share this policy's storage. Do not also list
            it in `policies`, or requests are counted twice.

    Raises:
        ConfigurationError: A limit is not in the `limits` notation, or the
            strategy or storage is unknown.
    """

    def __init__(
        self,
        default: str | None = None,
        *,
        routes: Sequence[RouteLimit] = (),
        storage: str | LimitStorage = "memory://",
        strategy: Strategy = "sliding-window-counter",
        per_key: bool = True,
        headers: HeaderStyle = "draft",
        headers_on_success: bool = True,
        proxies: TrustedProxies | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ConfigurationError(
                f"unknown strategy {strategy!r}: use one of {sorted(_STRATEGIES)}"
            )
        if headers not in ("draft", "legacy", "both", "none"):
            raise ConfigurationError(f"unknown header style {headers!r}")
        self._default = () if default is None else parse_limits(default)
        self._routes = tuple(routes)
        self._route_limits = tuple(
            tuple(_limit(item, f"route{number}", route.path) for item in route._items)
            for number, route in enumerate(self._routes)
        )
        self._plans: dict[tuple[int, str | None], _Plan] = {}
        self._owns_storage = isinstance(storage, str)
        self.storage = LimitStorage(storage) if isinstance(storage, str) else storage
        if quotas is not None and quotas.storage is not self.storage:
            raise ConfigurationError(
                "RateLimits(quotas=...) counts them together: give both the same LimitStorage"
            )
        self._quotas = quotas
        memory_strategy, redis_strategy = _STRATEGIES[strategy]
        # Exactly one of these counts: memory (the sliding window counter through the
        # storage's own API, the others through `limits`' synchronous strategies),
        # one Redis script, `limits`' asyncio API.
        self._windows: MemoryWindows | None = None
        self._memory: sync_strategies.RateLimiter | None = None
        self._script: RedisWindows | None = None
        self._limiter: aio_strategies.RateLimiter | None = None
        redis = self.storage.redis
        if self.storage.memory is not None and strategy == "sliding-window-counter":
            self._windows = MemoryWindows(self.storage.memory)
        elif self.storage.memory is not None:
            self._memory = memory_strategy(self.storage.memory)
        elif strategy == "sliding-window-counter" and redis is not None:
            from apiguard.ratelimit._pipeline import RedisWindows

            self._script = RedisWindows(self.storage.limits, redis)  # type: ignore[arg-type]
        else:
            self._limiter = redis_strategy(self.storage.limits)  # type: ignore[arg-type]
        self._per_key = per_key
        self._style: HeaderStyle = headers
        self._on_success = headers_on_success and headers != "none"
        self._proxies = proxies or TrustedProxies()
        self._one = (
            self._windows is not None and quotas is None and self._on_success and headers == "draft"
        )

    def _plan(self, principal: Principal, scope: Scope) -> _Plan | None:
        """The limits that apply to this request; `None` for none."""
        route = -1
        if self._routes:
            path, method = route_path(scope), scope.get("method")
            for number, rule in enumerate(self._routes):
                if rule.matches(path, method):
                    route = number
                    break
        own = principal.rate_limit if self._per_key and principal.rate_limit else None
        plan = self._plans.get((route, own))
        if plan is None:
            items = self._default if own is None else parse_limits(own)
            if route < 0 and not items:
                return None
            if len(self._plans) >= _PLANS:
                self._plans.clear()
            # The route's limits first: the refusal named is the route's, the usual
            # tighter case.
            limits = self._route_limits[route] if route >= 0 else ()
            plan = self._plans[(route, own)] = _plan(limits + tuple(_limit(i) for i in items))
        return plan

    async def check(self, principal: Principal, scope: Scope) -> ResponseHeaders | None:
        """Count the request by all its limits, or by none: raise `RateLimitExceeded`
        if one of them (or the quota) has no room left.

        Returns the RateLimit fields for the response, when they are sent.
        """
        plan = self._plan(principal, scope)
        if self._one and plan is not None and len(plan.limits) == 1:
            # The usual case (memory, one limit, no quota, draft fields): no lists.
            partition = partition_key(principal, scope, self._proxies)
            try:
                left = self._windows.hit_one(plan.items[0], plan.keys_for(partition)[0])  # type: ignore[union-attr]
            except Exception as exc:
                error = self.storage.unavailable(exc)
                if error is None:
                    raise
                raise error from exc
            if left is not None:
                value = f"{plan.limits[0].prefix}{left[0]};t={left[1]}"
                return [(b"ratelimit-policy", plan.policy), (b"ratelimit", value.encode("latin-1"))]
            # No room, nothing counted: the general path below says why.
        pending = None if self._quotas is None else self._quotas._pending(principal, scope)
        if plan is None and pending is None:
            return None
        limits = () if plan is None else plan.limits
        partition = partition_key(principal, scope, self._proxies)
        try:
            if self._windows is not None:
                refused, stats, used = self._count_windows(
                    self._windows,
                    () if plan is None else plan,
                    partition,
                    pending,
                )
            elif self._memory is not None:
                refused, stats, used = self._count_in_memory(
                    self._memory, limits, partition, pending
                )
            elif self._script is not None:
                counted = await self._script.hit(
                    [(limit.item, _identifiers(limit, partition)) for limit in limits],
                    None
                    if pending is None
                    else (pending.key, pending.quota.amount, pending.expire_at),
                )
                refused, stats, used = counted.refused, counted.stats, counted.used
            else:
                refused, stats, used = await self._count_with_limits(limits, partition, pending)
        except Exception as exc:  # not a context manager: this is the hot path
            error = self.storage.unavailable(exc)
            if error is None:
                raise
            raise error from exc
        now = time.time()
        if refused is not None and refused < len(limits):
            limit = limits[refused]
            state = _state(limit, stats[refused], now)
            refusal = rate_limit_fields([state], self._style)
            # RFC 6585 §4 / RFC 9110 §10.2.3; at least a second, never "now".
            raise RateLimitExceeded(max(1, state.reset), tuple(refusal), reason="rate limit")
        if refused is not None:  # the quota's
            return self._quotas._answer(pending, used, refused=True)  # type: ignore[union-attr,arg-type]
        fields = None
        if plan is not None and self._on_success:
            fields = self._fields(plan, stats, now)
        if pending is not None:
            quota_fields = self._quotas._answer(pending, used, refused=False)  # type: ignore[union-attr]
            if quota_fields:
                fields = quota_fields if fields is None else fields + quota_fields
        return fields

    def _count_windows(
        self,
        windows: MemoryWindows,
        plan: _Plan | tuple[()],
        partition: str,
        pending: _Pending | None,
    ) -> tuple[int | None, list[WindowStats], int]:
        """The sliding window counter in memory (`MemoryWindows`), and the quota's
        dict: every window tested, then all counted, or none."""
        quotas = self._quotas
        full = pending is not None and not quotas._memory_room(pending)  # type: ignore[union-attr]
        if isinstance(plan, _Plan):
            keys = plan.keys_for(partition)
            refused, stats = windows.hit(plan.items, keys, refuse=full, read=self._on_success)
        else:
            refused, stats = (0, []) if full else (None, [])
        if refused is not None:
            return refused, stats, -1 if pending is None else pending.quota.amount
        used = -1 if pending is None else quotas._memory_count(pending)  # type: ignore[union-attr]
        return None, stats, used

    def _count_in_memory(
        self,
        limiter: sync_strategies.RateLimiter,
        limits: tuple[_Limit, ...],
        partition: str,
        pending: _Pending | None,
    ) -> tuple[int | None, list[WindowStats], int]:
        """`limits`' synchronous strategy: nothing is awaited, so no other request
        counts between the test of every limit and the hits."""
        ids = [_identifiers(limit, partition) for limit in limits]
        refused: int | None = None
        if len(limits) > 1 or pending is not None:
            for number, limit in enumerate(limits):
                if not limiter.test(limit.item, *ids[number]):
                    refused = number
                    break
            quotas = self._quotas
            if refused is None and pending is not None and not quotas._memory_room(pending):  # type: ignore[union-attr]
                refused = len(limits)
        if refused is None:
            for number, limit in enumerate(limits):
                if not limiter.hit(limit.item, *ids[number]):
                    refused = number  # only a lone limit: it was not tested
                    break
        if refused is not None:
            stats = (
                [limiter.get_window_stats(limits[refused].item, *ids[refused])]
                if refused < len(limits)
                else []
            )
            return (
                refused,
                [WindowStats(0, 0)] * refused + stats,
                pending.quota.amount if pending else -1,
            )
        used = -1 if pending is None else self._quotas._memory_count(pending)  # type: ignore[union-attr]
        if not self._on_success:
            return None, [], used
        return (
            None,
            [
                limiter.get_window_stats(limit.item, *i)
                for limit, i in zip(limits, ids, strict=True)
            ],
            used,
        )

    async def _count_with_limits(
        self, limits: tuple[_Limit, ...], partition: str, pending: _Pending | None
    ) -> tuple[int | None, list[WindowStats], int]:
        """`limits`' asyncio strategies in Redis (the moving and fixed windows): a
        round trip per limit and another to read it; a limit that refuses leaves the
        earlier ones counted."""
        limiter = self._limiter
        assert limiter is not None  # noqa: S101 - set by __init__ for this path
        stats: list[WindowStats] = []
        for number, limit in enumerate(limits):
            identifiers = _identifiers(limit, partition)
            allowed = await limiter.hit(limit.item, *identifiers)
            if allowed and not self._on_success:
                continue
            stats.append(await limiter.get_window_stats(limit.item, *identifiers))
            if not allowed:
                return number, [WindowStats(0, 0)] * number + stats[-1:], -1
        used = -1
        if pending is not None:
            used = await self._quotas._add(pending.key, 1, pending.expire_at)  # type: ignore[union-attr]
            if used > pending.quota.amount:
                used = await self._quotas._add(pending.key, -1, pending.expire_at)  # type: ignore[union-attr]
                return len(limits), [], used
        return None, stats, used

    def _fields(self, plan: _Plan, stats: list[WindowStats], now: float) -> ResponseHeaders:
        """The fields for an allowed request; the policy's text was worked out once."""
        style = self._style
        if style == "none":
            return []
        fields: ResponseHeaders = []
        limits = plan.limits
        if style != "legacy":
            if len(limits) == 1:  # the usual case, without a list to join
                window = stats[0]
                reset = math.ceil(window.reset_time - now)
                value = f"{limits[0].prefix}{window.remaining};t={reset if reset > 0 else 0}"
            else:
                value = ", ".join(
                    f"{limit.prefix}{window.remaining};t={max(0, math.ceil(window.reset_time - now))}"
                    for limit, window in zip(limits, stats, strict=True)
                )
            fields.append((b"ratelimit-policy", plan.policy))
            fields.append((b"ratelimit", value.encode("latin-1")))
        if style != "draft":
            states = [
                _state(limit, window, now) for limit, window in zip(limits, stats, strict=True)
            ]
            fields += [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in rate_limit_fields(states, "legacy")
            ]
        return fields

    async def aclose(self) -> None:
        """Close the storage's connections, if this policy opened the storage."""
        if self._owns_storage:
            await self.storage.aclose()


def _identifiers(limit: _Limit, partition: str) -> tuple[str, ...]:
    return (partition,) if limit.route is None else (partition, limit.route)


def _state(limit: _Limit, window: WindowStats, now: float) -> LimitState:
    reset = max(0, math.ceil(window.reset_time - now))
    return LimitState(
        limit.name, limit.item.amount, limit.item.get_expiry(), window.remaining, reset
    )
