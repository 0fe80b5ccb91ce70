"""The RateLimit header fields, as draft-ietf-httpapi-ratelimit-headers-10 writes them.

    RateLimit-Policy: "100/minute";q=100;w=60          (§3: the policy, stable)
    RateLimit: "100/minute";r=42;t=17                  (§4: the service limit now)

Both are Structured Field Lists (RFC 9651 §3.1) of String items with Integer
parameters; several policies are several items. The older
`RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` fields
(draft-ietf-httpapi-ratelimit-headers-06 §3-§5, still what many clients read) carry
one policy only: the one with the fewest requests left.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

__all__ = ["HeaderStyle", "LimitState", "rate_limit_fields"]

HeaderStyle = Literal["draft", "legacy", "both", "none"]
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")  # RFC 9651 §3.3.3: no " or \


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit as it stands after a request.

    Attributes:
        name: The policy's name, the item of both fields.
        quota: Requests allowed per window (§3.1.1 `q`).
        window: The window in seconds (§3.1.3 `w`), or `None` when it has no fixed
            length (a calendar month).
        remaining: Requests left (§4.1.1 `r`), never negative.
        reset: Seconds until more are allowed (§4.1.2 `t`), never negative.
    """

    name: str
    quota: int
    window: int | None
    remaining: int
    reset: int


@lru_cache(maxsize=1024)
def _item(name: str) -> str:
    return '"' + _UNSAFE.sub("", name) + '"'


def rate_limit_fields(states: Sequence[LimitState], style: HeaderStyle) -> list[tuple[str, str]]:
    """The header fields for `states`, in `style` (none for `"none"` or no states)."""
    if not states or style == "none":
        return []
    fields: list[tuple[str, str]] = []
    if style in ("draft", "both"):
        policies = []
        limits = []
        for state in states:
            window = "" if state.window is None else f";w={state.window}"
            policies.append(f"{_item(state.name)};q={state.quota}{window}")
            limits.append(
                f"{_item(state.name)};r={max(0, state.remaining)};t={max(0, state.reset)}"
            )
        fields.append(("ratelimit-policy", ", ".join(policies)))
        fields.append(("ratelimit", ", ".join(limits)))
    if style in ("legacy", "both"):
        tightest = min(states, key=lambda state: (state.remaining, -state.reset))
        fields.append(("ratelimit-limit", str(tightest.quota)))
        fields.append(("ratelimit-remaining", str(max(0, tightest.remaining))))
        fields.append(("ratelimit-reset", str(max(0, tightest.reset))))
    return fields
