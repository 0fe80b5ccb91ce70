"""Who called: the `Principal` placed in `scope["user"]`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from starlette.authentication import AuthCredentials, BaseUser

__all__ = ["ANONYMOUS", "CredentialKind", "Grant", "Principal"]

CredentialKind = Literal["api_key", "bearer", "anonymous"]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal(BaseUser):
    """The authenticated caller of one request.

    It is a Starlette `BaseUser`, so `request.user.is_authenticated`,
    `request.user.display_name` and `request.user.identity` work unchanged, and it
    is placed beside `AuthCredentials(principal.scopes)` in `scope["auth"]`.

    Attributes:
        identity: A stable identifier: the key id for API keys, the subject (or
            client id) for bearer tokens, `""` for the anonymous principal.
        kind: Which credential authenticated the call: `"api_key"`, `"bearer"`
            or `"anonymous"`.
        name: A human-readable name: the key's name or owner, the client id.
        scopes: The scopes granted to the credential.
        key_id: The API key id, for `kind == "api_key"`.
        client_id: The OAuth client id, for bearer tokens.
        subject: The token subject (`sub`), for bearer tokens.
        metadata: Metadata stored with the API key.
        claims: The verified token claims, for bearer tokens.
        rate_limit: The API key's own rate limits (`KeyRecord.rate_limit`), if any.
        quota: The API key's request quota (`KeyRecord.quota`), if any.
    """

    # field(): without it the dataclass would take BaseUser.identity as a default.
    identity: str = field()
    kind: CredentialKind = field()
    name: str = ""
    scopes: frozenset[str] = frozenset()
    key_id: str | None = None
    client_id: str | None = None
    subject: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=_empty, repr=False)
    claims: Mapping[str, Any] = field(default_factory=_empty, repr=False)
    rate_limit: str | None = None
    quota: str | None = None

    @property
    def is_authenticated(self) -> bool:
        """Whether a credential authenticated the call (`False` for the anonymous principal)."""
        return self.kind != "anonymous"

    @property
    def display_name(self) -> str:
        """The name to show for the caller."""
        return self.name or self.identity


ANONYMOUS = Principal(identity="", kind="anonymous")
"""The principal of a request let through without credentials (optional mode, exclusions)."""

Grant = tuple[Principal, AuthCredentials]
"""What authentication yields: the values for `scope["user"]` and `scope["auth"]`."""


MAX_SCOPE_SETS = 1024  # distinct scope sets a `ScopeSets` shares


class ScopeSets:
    """One scope set and one `AuthCredentials` per distinct set of scopes.

    Callers mostly grant a few sets of scopes: the cached grants of API keys and of
    tokens share them, which keeps a cached credential well under a kilobyte. At
    most `MAX_SCOPE_SETS` sets are kept (the scopes come from outside); others are
    not shared.
    """

    __slots__ = ("_sets",)

    def __init__(self) -> None:
        self._sets: dict[frozenset[str], tuple[frozenset[str], AuthCredentials]] = {}

    def __len__(self) -> int:
        return len(self._sets)

    def shared(self, scopes: frozenset[str]) -> tuple[frozenset[str], AuthCredentials]:
        """The shared equal of `scopes`, and the `AuthCredentials` that go with it."""
        found = self._sets.get(scopes)
        if found is None:
            found = (scopes, AuthCredentials(sorted(scopes)))
            if len(self._sets) < MAX_SCOPE_SETS:
                self._sets[scopes] = found
        return found
