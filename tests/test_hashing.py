from __future__ import annotations

import pytest
from passlib.hash import argon2, bcrypt_sha256, pbkdf2_sha256

from apiguard import ConfigurationError
from apiguard.keys import KeyHasher

from .conftest import PEPPER


def test_default_scheme_is_peppered_hmac(hasher: KeyHasher) -> None:
    """New secrets get the fast HMAC-SHA256 scheme, which verifies and needs no migration."""
    stored = hasher.hash("s3cret")
    assert stored.startswith("$hmac-sha256$")
    assert "s3cret" not in stored
    assert hasher.is_fast(stored)
    assert hasher.verify("s3cret", stored) == (True, None)
    assert hasher.verify("s3cres", stored) == (False, None)


def test_pepper_changes_the_hash(hasher: KeyHasher) -> None:
    """A stolen store is useless without the pepper: another pepper verifies nothing."""
    other = KeyHasher("another-pepper-6Dh3Xq8Lw1Zt5Mv9Rc2Kb7Pn4Gs0")
    stored = hasher.hash("s3cret")
    assert other.hash("s3cret") != stored
    assert other.verify("s3cret", stored) == (False, None)


def test_pepper_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIGUARD_PEPPER", PEPPER)
    assert KeyHasher().hash("x") == KeyHasher(PEPPER).hash("x")


@pytest.mark.parametrize("pepper", [None, "short", b"x" * 31])
def test_missing_or_short_pepper(monkeypatch: pytest.MonkeyPatch, pepper: str | None) -> None:
    monkeypatch.delenv("APIGUARD_PEPPER", raising=False)
    with pytest.raises(ConfigurationError, match="pepper"):
        KeyHasher(pepper)


@pytest.mark.parametrize("handler", [pbkdf2_sha256, argon2, bcrypt_sha256], ids=lambda h: h.name)
def test_slow_schemes_verify_and_migrate(hasher: KeyHasher, handler: object) -> None:
    """Imported slow hashes verify and come back re-hashed in the default scheme."""
    stored = handler.hash("legacy-secret")  # type: ignore[attr-defined]
    assert not hasher.is_fast(stored)
    ok, new_hash = hasher.verify("legacy-secret", stored)
    assert ok
    assert new_hash is not None
    assert hasher.is_fast(new_hash)
    assert hasher.verify("legacy-secret", new_hash) == (True, None)
    assert hasher.verify("wrong", stored) == (False, None)


@pytest.mark.parametrize("stored", ["", "garbage", "$hmac-sha256$zz", "$1$md5crypt$abc"])
def test_unknown_or_corrupt_hash_matches_nothing(hasher: KeyHasher, stored: str) -> None:
    assert hasher.verify("anything", stored) == (False, None)


def test_schemes_outside_the_allowlist_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="unsupported"):
        KeyHasher(PEPPER, accept=["md5_crypt"])


def test_scheme_not_accepted_verifies_nothing() -> None:
    """A hasher accepting no slow scheme does not verify an argon2 hash."""
    strict = KeyHasher(PEPPER, accept=())
    assert strict.verify("x", argon2.hash("x")) == (False, None)


def test_missing_backend_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, hasher: KeyHasher
) -> None:
    """A hash whose backend is not installed is a configuration error naming the extra."""
    from passlib.exc import MissingBackendError

    def missing(*args: object, **kwargs: object) -> None:
        raise MissingBackendError("argon2: no backends available")

    monkeypatch.setattr(hasher._context, "verify_and_update", missing)
    with pytest.raises(ConfigurationError, match=r"apiguard-asgi\[argon2\]"):
        hasher.verify("x", "$argon2id$whatever")


def test_repr_hides_the_pepper(hasher: KeyHasher) -> None:
    assert PEPPER not in repr(hasher)
    assert "apiguard_hmac_sha256" in repr(hasher)
