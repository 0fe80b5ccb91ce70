"""Copying key records from one store to another (`apiguard keys copy`).

Records are copied as stored, hashes included: no secret is known or needed, so the
destination's keys verify with the pepper the source's were hashed with. Only the
`KeyStore` protocol is used, so any two stores, a third party's too, will do.

Copying again is safe. Each source record is compared with the destination's record
of the same key id:

- none there: the record is added (`copy`);
- the same: nothing is done (`skip`);
- the same but for changes that only ever go one way, a revocation the destination
  lacks or a later last use: those are applied, through `revoke` and `record_usage`,
  as the source's own store applied them (`update`);
- anything else (name, secret hash, scopes, metadata, rate limit, quota, creation or expiry time, a
  revocation only the destination has or at another time): left as it is and
  reported (`conflict`). The protocol has no way to replace a record, and which of
  two versions of a key is right is for a person to decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from apiguard.exceptions import KeyStateError
from apiguard.keys.record import KeyRecord
from apiguard.types import KeyStore

__all__ = ["CopyOutcome", "compare_records", "copy_keys"]

Action = Literal["copy", "update", "skip", "conflict"]

# Fields that a copy never changes in a destination's record.
_FIXED = (
    "name",
    "secret_hash",
    "scopes",
    "created_at",
    "expires_at",
    "metadata",
    "rate_limit",
    "quota",
)


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    """What a copy does, or did, with one source record.

    Attributes:
        key_id: The record's key id.
        action: `copy`, `update`, `skip` or `conflict` (see the module docstring).
        fields: For `update`, the fields brought forward (`revoked_at`,
            `last_used_at`); for `conflict`, the fields that differ. Names only,
            never values: one of them may be the secret hash.
    """

    key_id: str
    action: Action
    fields: tuple[str, ...] = ()


def _field(record: KeyRecord, name: str) -> object:
    value = getattr(record, name)
    # Stores hand metadata back as different kinds of mapping: compare the contents.
    return dict(value) if name == "metadata" else value


def compare_records(source: KeyRecord, target: KeyRecord | None) -> CopyOutcome:
    """What copying `source` onto `target` (the destination's record, if any) takes."""
    key_id = source.key_id
    if target is None:
        return CopyOutcome(key_id, "copy")
    differing = [name for name in _FIXED if _field(source, name) != _field(target, name)]
    updates: list[str] = []
    if source.revoked_at != target.revoked_at:
        if target.revoked_at is None:
            updates.append("revoked_at")
        else:  # a revocation cannot be undone, nor its time changed
            differing.append("revoked_at")
    if source.last_used_at is not None and (
        target.last_used_at is None or target.last_used_at < source.last_used_at
    ):
        updates.append("last_used_at")  # a later use in the destination is kept
    if differing:
        return CopyOutcome(key_id, "conflict", tuple(sorted(differing)))
    if updates:
        return CopyOutcome(key_id, "update", tuple(updates))
    return CopyOutcome(key_id, "skip")


async def _apply(outcome: CopyOutcome, record: KeyRecord, target: KeyStore) -> CopyOutcome:
    if outcome.action == "copy":
        try:
            await target.add(record)
        except KeyStateError:
            # Added in the destination since it was listed: compare with that one.
            outcome = compare_records(record, await target.get(record.key_id))
            if outcome.action == "copy":  # and removed again: give up on this record
                raise
            return await _apply(outcome, record, target)
    elif outcome.action == "update":
        if "revoked_at" in outcome.fields and record.revoked_at is not None:
            await target.revoke(record.key_id, at=record.revoked_at)
        if "last_used_at" in outcome.fields and record.last_used_at is not None:
            await target.record_usage(record.key_id, at=record.last_used_at)
    return outcome


async def copy_keys(
    source: KeyStore, target: KeyStore, *, dry_run: bool = False
) -> list[CopyOutcome]:
    """Copy every record of `source` into `target`; one outcome per source record.

    With `dry_run`, only read both stores and say what a copy would do.

    Raises:
        BackendUnavailableError: Either store could not be reached. Records copied
            before the failure stay copied; copying again carries on.
    """
    existing = {record.key_id: record for record in await target.list()}
    outcomes = []
    for record in await source.list():
        outcome = compare_records(record, existing.get(record.key_id))
        if not dry_run:
            outcome = await _apply(outcome, record, target)
        outcomes.append(outcome)
    return outcomes
