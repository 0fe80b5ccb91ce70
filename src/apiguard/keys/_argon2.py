"""argon2 verification in one thread, whatever the hash's parallelism.

An argon2 hash made with parallelism `p` (passlib's default is 4) is verified by
libargon2 in `p` threads at once: one imported key's check would take every core of
a small machine, and the event loop with them. The lanes can be computed by one
thread instead, with the same result (the parallelism is a parameter of the hash,
the thread count only of how it is computed); `slow_hash_concurrency` then bounds
the cores that slow hashes take.
"""

from __future__ import annotations

import base64
import hmac
import re

__all__ = ["verify_single_threaded"]

_PHC = re.compile(
    r"\$(argon2(?:id|i|d))(?:\$v=(\d+))?\$m=(\d+),t=(\d+),p=(\d+)"
    r"\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)"
)
_MAX_MEMORY_KIB = 4 * 1024 * 1024  # what a stored hash may ask for: 4 GiB
_MAX_PASSES = 1_000


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def verify_single_threaded(secret: str, secret_hash: str) -> bool | None:
    """Whether `secret` matches the argon2 `secret_hash`, computed in this one thread.

    `None` when this cannot tell (not a PHC argon2 hash it can read, parameters
    beyond reason, or argon2-cffi missing): passlib decides then.
    """
    match = _PHC.fullmatch(secret_hash)
    if match is None:
        return None
    try:
        from argon2.low_level import Type, core, ffi, lib  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - the argon2 extra is a dev dependency
        return None
    variant, version, memory, passes, lanes = match.group(1, 2, 3, 4, 5)
    memory_kib, time_cost, parallelism = int(memory), int(passes), int(lanes)
    number = int(version) if version else 0x10
    if not (
        number in (0x10, 0x13)
        and 1 <= parallelism <= 255
        and 8 * parallelism <= memory_kib <= _MAX_MEMORY_KIB
        and 1 <= time_cost <= _MAX_PASSES
    ):
        return None
    try:
        salt, expected = _b64(match.group(6)), _b64(match.group(7))
    except ValueError:
        return None
    if not (8 <= len(salt) <= 1024 and 4 <= len(expected) <= 1024):
        return None
    kind = {"argon2id": Type.ID, "argon2i": Type.I, "argon2d": Type.D}[variant]
    pwd = secret.encode("utf-8")
    out = ffi.new("uint8_t[]", len(expected))
    cpwd = ffi.new("uint8_t[]", pwd)
    csalt = ffi.new("uint8_t[]", salt)
    context = ffi.new(
        "argon2_context *",
        {
            "version": number,
            "out": out,
            "outlen": len(expected),
            "pwd": cpwd,
            "pwdlen": len(pwd),
            "salt": csalt,
            "saltlen": len(salt),
            "secret": ffi.NULL,
            "secretlen": 0,
            "ad": ffi.NULL,
            "adlen": 0,
            "t_cost": time_cost,
            "m_cost": memory_kib,
            "lanes": parallelism,
            "threads": 1,
            "allocate_cbk": ffi.NULL,
            "free_cbk": ffi.NULL,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    if core(context, kind.value) != lib.ARGON2_OK:
        return None
    return hmac.compare_digest(bytes(ffi.buffer(out, len(expected))), expected)
