"""`RateLimits`: requests per caller per window, a policy run after authentication.

Each caller has its own counters: an API key by its key id, a bearer token by its
client id (else its subject), an anonymous request (optional mode) by its client
address. The limits come from the key record (`KeyRecord.rate_limit`) when it has
its own, else from the policy's `default`; `RouteLimit`s add limits on some routes,
counted per caller and per rule.

The counting is the `limits` library's sliding window counter: two counters per
limit, so constant memory and one Redis script per limit, approximating a true
moving window by assuming the previous window's requests were spread evenly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from limits import RateLimitItem
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from apiguard.exceptions import ConfigurationError, RateLimitExceeded
from apiguard.policies import ScopeRule, route_path
from apiguard.principal import Principal
from apiguard.proxies import TrustedProxies
from apiguard.ratelimit._fields import HeaderStyle, LimitState, rate_limit_fields
from apiguard.ratelimit.storage import LimitStorage, parse_limits
from apiguard.types import Scope

if TYPE_CHECKING:
    from apiguard.ratelimit._pipeline import SlidingWindowPipeline

__all__ = ["RateLimits", "RouteLimit", "Strategy", "partition_key"]

Strategy = Literal["sliding-window-counter", "moving-window", "fixed-window"]
ResponseHeaders = list[tuple[bytes, bytes]]
_STRATEGIES: dict[str, type[RateLimiter]] = {
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


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
            429s. Off saves one storage round trip per limit and request.
        proxies: Who the client is behind your proxies, for anonymous callers.

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
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ConfigurationError(
                f"unknown strategy {strategy!r}: use one of {sorted(_STRATEGIES)}"
            )
        if headers not in ("draft", "legacy", "both", "none"):
            raise ConfigurationError(f"unknown header style {headers!r}")
        self._default = () if default is None else parse_limits(default)
        self._routes = tuple(routes)
        self._owns_storage = isinstance(storage, str)
        self.storage = LimitStorage(storage) if isinstance(storage, str) else storage
        self._limiter: RateLimiter = _STRATEGIES[strategy](self.storage.limits)
        # In Redis, the sliding window counter counts and reads in one round trip.
        self._pipeline: SlidingWindowPipeline | None = None
        redis = self.storage.redis
        if strategy == "sliding-window-counter" and redis is not None:
            from apiguard.ratelimit._pipeline import SlidingWindowPipeline

            self._pipeline = SlidingWindowPipeline(self.storage.limits, redis)  # type: ignore[arg-type]
        self._per_key = per_key
        self._style: HeaderStyle = headers
        self._on_success = headers_on_success and headers != "none"
        self._proxies = proxies or TrustedProxies()

    def _items(self, principal: Principal) -> tuple[RateLimitItem, ...]:
        if self._per_key and principal.rate_limit:
            return parse_limits(principal.rate_limit)
        return self._default

    async def check(self, principal: Principal, scope: Scope) -> ResponseHeaders | None:
        """Count the request; raise `RateLimitExceeded` over a limit.

        Returns the RateLimit fields for the response, when they are sent.
        """
        partition = partition_key(principal, scope, self._proxies)
        checks: list[tuple[RateLimitItem, tuple[str, ...], str]] = []
        if self._routes:
            # The route's limits first: a request they refuse (the usual, tighter
            # case) does not use up the caller's own limits. Limits checked before
            # the one that refuses keep the request counted, as in `limits` users.
            path, method = route_path(scope), scope.get("method")
            for number, route in enumerate(self._routes):
                if route.matches(path, method):
                    checks += [
                        (item, (partition, f"route{number}"), f"{route.path} {_name(item)}")
                        for item in route._items
                    ]
                    break
        checks += [(item, (partition,), _name(item)) for item in self._items(principal)]
        if not checks:
            return None
        states: list[LimitState] = []
        try:
            for item, identifiers, name in checks:
                if self._pipeline is not None:
                    allowed, stats = await self._pipeline.hit(item, *identifiers)
                    if allowed and not self._on_success:
                        continue
                else:
                    allowed = await self._limiter.hit(item, *identifiers)
                    if allowed and not self._on_success:
                        continue
                    stats = await self._limiter.get_window_stats(item, *identifiers)
                reset = max(0, math.ceil(stats.reset_time - time.time()))
                states.append(
                    LimitState(name, item.amount, item.get_expiry(), stats.remaining, reset)
                )
                if not allowed:
                    fields = rate_limit_fields(states[-1:], self._style)
                    # RFC 6585 §4 / RFC 9110 §10.2.3; at least a second, never "now".
                    raise RateLimitExceeded(max(1, reset), tuple(fields), reason="rate limit")
        except RateLimitExceeded:
            raise
        except Exception as exc:  # not a context manager: this is the hot path
            error = self.storage.unavailable(exc)
            if error is None:
                raise
            raise error from exc
        return [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in rate_limit_fields(states, self._style)
        ]

    async def aclose(self) -> None:
        """Close the storage's connections, if this policy opened the storage."""
        if self._owns_storage:
            await self.storage.aclose()
