"""pytest fixtures for testing apps that use apiguard. Opt in from a `conftest.py`:

    pytest_plugins = ["apiguard.pytest_plugin"]

Fixtures:
    fake_issuer: A new `apiguard.testing.FakeIssuer`.
    fake_clock: A new `apiguard.testing.FakeClock`.
    override_auth: `override_auth(app, scopes=[...], ...)` authenticates every
        request to `app` as one principal until the test ends (the arguments of
        `apiguard.testing.override_authentication`); returns the principal.

It is not registered as a `pytest11` entry point on purpose: that would load it into
the pytest run of every project that has apiguard installed, with fixture names
that may clash with the project's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from apiguard.principal import Principal
    from apiguard.testing import FakeClock, FakeIssuer

__all__ = ["fake_clock", "fake_issuer", "override_auth"]


@pytest.fixture
def fake_issuer() -> FakeIssuer:
    """An in-memory authorization server: mints tokens, serves discovery, JWKS, introspection."""
    from apiguard.testing import FakeIssuer

    return FakeIssuer()


@pytest.fixture
def fake_clock() -> FakeClock:
    """A monotonic clock that moves only when the test says so."""
    from apiguard.testing import FakeClock

    return FakeClock()


@pytest.fixture
def override_auth() -> Iterator[Callable[..., Principal]]:
    """Authenticate every request to an app as one principal, until the test ends."""
    from apiguard.testing import override_authentication

    with ExitStack() as stack:

        def override(app: object, **principal: Any) -> Principal:
            return stack.enter_context(override_authentication(app, **principal))

        yield override
