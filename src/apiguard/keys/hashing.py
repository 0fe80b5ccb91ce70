"""How key secrets are hashed: the one module that imports passlib.

Generated keys carry 256 random bits, so a slow password hash would only add
latency (15 to 270 ms a request) without adding safety. The default scheme is
therefore HMAC-SHA256 keyed with a server-side *pepper* that lives in the
application's configuration, never in the store: a stolen store alone does not
let anyone test guesses.

Keys imported from other systems may carry slow hashes (argon2, bcrypt_sha256,
pbkdf2_sha256). They are verified in a worker thread (argon2 in that one thread,
whatever its parallelism: `keys/_argon2.py`) and, once verified, re-hashed with the
default scheme (passlib's `verify_and_update`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from passlib.context import CryptContext
from passlib.exc import MissingBackendError
from passlib.utils import handlers

from apiguard.exceptions import ConfigurationError
from apiguard.keys._argon2 import verify_single_threaded

__all__ = ["DEFAULT_SCHEME", "PEPPER_ENV", "SLOW_SCHEMES", "KeyHasher"]

DEFAULT_SCHEME = "apiguard_hmac_sha256"
SLOW_SCHEMES = ("argon2", "bcrypt_sha256", "pbkdf2_sha256")
PEPPER_ENV = "APIGUARD_PEPPER"
MIN_PEPPER_LENGTH = 32


class _HmacSha256(handlers.StaticHandler):  # type: ignore[misc]
    """passlib handler: hex HMAC-SHA256 of the secret, keyed by the pepper bound at runtime."""

    name = DEFAULT_SCHEME
    _hash_prefix = "$hmac-sha256$"
    checksum_chars = "0123456789abcdef"
    checksum_size = 64
    pepper: ClassVar[bytes] = b""

    def _calc_checksum(self, secret: str | bytes) -> str:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        return hmac.new(self.pepper, secret, hashlib.sha256).hexdigest()


def _resolve_pepper(pepper: str | bytes | None) -> bytes:
    if pepper is None:
        pepper = os.environ.get(PEPPER_ENV)
    if pepper is None:
        raise ConfigurationError(
            f"no pepper configured: set {PEPPER_ENV}, or pass pepper= to the middleware or"
            f" KeyHasher (at least {MIN_PEPPER_LENGTH} bytes; `apiguard keys init` suggests one)"
        )
    if isinstance(pepper, str):
        pepper = pepper.encode("utf-8")
    if len(pepper) < MIN_PEPPER_LENGTH:
        raise ConfigurationError(f"the pepper must be at least {MIN_PEPPER_LENGTH} bytes long")
    return pepper


class KeyHasher:
    """Hashes and verifies key secrets through a passlib `CryptContext`.

    Args:
        pepper: The server-side HMAC key. Defaults to the `APIGUARD_PEPPER`
            environment variable. Changing it invalidates every key hashed with it.
        accept: The slow schemes accepted for imported keys, verified off the event
            loop and migrated to the default scheme on success.
    """

    __slots__ = ("_argon2", "_context", "_handler", "_pepper")

    def __init__(
        self, pepper: str | bytes | None = None, *, accept: Sequence[str] = SLOW_SCHEMES
    ) -> None:
        unknown = set(accept) - set(SLOW_SCHEMES)
        if unknown:
            raise ConfigurationError(f"unsupported hash schemes: {sorted(unknown)}")
        # A subclass per hasher binds the pepper without any module-level state.
        self._pepper = _resolve_pepper(pepper)
        self._argon2 = "argon2" in accept
        handler: Any = type("_PepperedHmacSha256", (_HmacSha256,), {"pepper": self._pepper})
        self._handler = handler
        # "auto": every scheme but the default is deprecated, so verify_and_update migrates it.
        self._context = CryptContext(
            schemes=[handler, *accept], default=DEFAULT_SCHEME, deprecated="auto"
        )

    def __repr__(self) -> str:
        return f"KeyHasher(schemes={list(self._context.schemes())!r})"

    def hash(self, secret: str) -> str:
        """Hash `secret` with the default scheme."""
        return str(self._context.hash(secret))

    def is_fast(self, secret_hash: str) -> bool:
        """Whether `secret_hash` is in the default scheme (cheap enough for the event loop)."""
        return secret_hash.startswith(_HmacSha256._hash_prefix)

    def verify(self, secret: str, secret_hash: str) -> tuple[bool, str | None]:
        """Check `secret` against `secret_hash` in constant time.

        Returns:
            `(matches, new_hash)`, where `new_hash` is the secret re-hashed with the
            default scheme when the stored hash used another one, else `None`.

        Raises:
            ConfigurationError: The hash is in a scheme whose backend is not installed.
        """
        if secret_hash.startswith(_HmacSha256._hash_prefix):
            # The default scheme, on every cold lookup: what passlib would do, without
            # its parsing (a quarter of a cold check's CPU). A malformed checksum
            # matches nothing, as there.
            expected = hmac.new(self._pepper, secret.encode("utf-8"), hashlib.sha256)
            stored = secret_hash[len(_HmacSha256._hash_prefix) :].encode("utf-8")
            return hmac.compare_digest(expected.hexdigest().encode("ascii"), stored), None
        if self._argon2 and secret_hash.startswith("$argon2"):
            matches = verify_single_threaded(secret, secret_hash)
            if matches is not None:
                return matches, self.hash(secret) if matches else None
        try:
            ok, new_hash = self._context.verify_and_update(secret, secret_hash)
        except MissingBackendError as exc:
            raise ConfigurationError(
                f"a key is hashed with a scheme whose backend is missing ({exc}); "
                "install 'apiguard-asgi[argon2]' or 'apiguard-asgi[bcrypt]'"
            ) from exc
        except ValueError:
            # An unrecognized or corrupt hash matches nothing.
            return False, None
        return bool(ok), new_hash
