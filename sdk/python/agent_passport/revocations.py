"""Revocation entries as they travel through Redis, and the agent's local revocation state.

Wire format (JSON, one per stream entry and per snapshot hash field)::

    {"id": 12, "epoch": 40, "kind": "revoke", "target": {"type": "agent", "value": "<uuid>"},
     "reason": "...", "source": "api", "at": "2026-11-25T10:00:00Z"}
    {"id": 12, "epoch": 41, "kind": "lift"}

``type`` is one of ``passport`` (value = jti), ``agent`` (value = agent id), ``fleet``
(value = fleet label) or ``all`` (value = ``*``). Epochs increase with every revoke and lift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from agent_passport.protocol import (
    SNAPSHOT_ENTRY_PREFIX,
    SNAPSHOT_EPOCH_FIELD,
    SNAPSHOT_GENERATION_FIELD,
    SNAPSHOT_VERSION_FIELD,
    STREAM_ENTRY_FIELD,
    STREAM_PREV_FIELD,
    unsupported_protocol,
)

TARGET_TYPES = ("passport", "agent", "fleet", "all")
ENTRY_KINDS = ("revoke", "lift")


def describe_target(target_type: str, target_value: str) -> str:
    """What a revocation stops, for people: ``all agents`` or e.g. ``fleet gpu-a``."""
    return "all agents" if target_type == "all" else f"{target_type} {target_value}"


DIGEST_LENGTH = 64  # hex SHA-256


def revocations_digest(active_ids: Iterable[int]) -> str:
    """What an agent reports it holds: SHA-256 (hex) of the active revocation ids, ascending,
    in decimal, joined by ``,`` (the empty set hashes the empty string). The registry computes
    the same over the revocations active at the reported epoch to verify an acknowledgement."""
    text = ",".join(str(i) for i in sorted(active_ids))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def stream_position(raw: str | bytes | None) -> int:
    """The epoch a stream entry stands for in the ``prev`` chain: its JSON ``epoch`` if that is
    an integer, else 0 (the publisher's Lua script reads it the same way)."""
    try:
        epoch = json.loads(raw or "").get("epoch")
    except (ValueError, AttributeError):
        return 0
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


class MalformedEntry(ValueError):
    """A stream entry or snapshot field that does not follow the wire format."""


@dataclass(frozen=True)
class RevocationEntry:
    id: int
    epoch: int
    kind: str
    target_type: str = ""
    target_value: str = ""
    reason: str = ""
    source: str = ""
    at: str = ""

    @classmethod
    def parse(cls, raw: str | bytes) -> RevocationEntry:
        try:
            data = json.loads(raw)
            kind = data["kind"]
            entry_id, epoch = data["id"], data["epoch"]
            if kind not in ENTRY_KINDS or type(entry_id) is not int or type(epoch) is not int:
                raise MalformedEntry(f"bad kind, id or epoch in {raw!r}")
            if kind == "lift":
                return cls(id=entry_id, epoch=epoch, kind=kind)
            target = data["target"]
            if target["type"] not in TARGET_TYPES or not isinstance(target["value"], str):
                raise MalformedEntry(f"bad target in {raw!r}")
            return cls(
                id=entry_id,
                epoch=epoch,
                kind=kind,
                target_type=target["type"],
                target_value=target["value"],
                reason=str(data.get("reason", "")),
                source=str(data.get("source", "")),
                at=str(data.get("at", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, MalformedEntry):
                raise
            raise MalformedEntry(f"cannot parse revocation entry {raw!r:.200}: {exc}") from exc

    def to_json(self) -> str:
        if self.kind == "lift":
            return json.dumps({"id": self.id, "epoch": self.epoch, "kind": "lift"})
        return json.dumps(
            {
                "id": self.id,
                "epoch": self.epoch,
                "kind": "revoke",
                "target": {"type": self.target_type, "value": self.target_value},
                "reason": self.reason,
                "source": self.source,
                "at": self.at,
            }
        )

    def describe(self) -> str:
        who = describe_target(self.target_type, self.target_value)
        return f"revocation #{self.id} of {who} (epoch {self.epoch}, {self.source}): {self.reason}"


@dataclass(frozen=True)
class RevocationState:
    """The set of active revocations, indexed for O(1) lookups. Immutable: swap, don't mutate."""

    active: Mapping[int, RevocationEntry] = field(default_factory=dict)
    versions: Mapping[int, int] = field(default_factory=dict)
    epoch: int = 0
    _index: Mapping[tuple[str, str], RevocationEntry] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        entries: Iterable[RevocationEntry],
        epoch: int,
        versions: Mapping[int, int] | None = None,
    ) -> RevocationState:
        active = {entry.id: entry for entry in entries if entry.kind == "revoke"}
        index: dict[tuple[str, str], RevocationEntry] = {}
        for entry in sorted(active.values(), key=lambda e: e.epoch):
            index.setdefault((entry.target_type, entry.target_value), entry)
        known = dict(versions or {})
        for entry in active.values():
            known[entry.id] = max(known.get(entry.id, 0), entry.epoch)
        return cls(active=active, versions=known, epoch=epoch, _index=index)

    def apply(self, entries: Iterable[RevocationEntry]) -> RevocationState:
        """Apply stream entries; older or repeated entries for a revocation are ignored."""
        active = dict(self.active)
        versions = dict(self.versions)
        epoch = self.epoch
        for entry in entries:
            epoch = max(epoch, entry.epoch)
            if versions.get(entry.id, 0) >= entry.epoch:
                continue
            versions[entry.id] = entry.epoch
            if entry.kind == "revoke":
                active[entry.id] = entry
            else:
                active.pop(entry.id, None)
        return RevocationState.build(active.values(), epoch, versions)

    def blocking(self, *, jti: str, agent: str, fleet: str | None) -> RevocationEntry | None:
        """The revocation that stops this passport, if any (most specific first)."""
        index = self._index
        return (
            index.get(("passport", jti))
            or index.get(("agent", agent))
            or (index.get(("fleet", fleet)) if fleet else None)
            or index.get(("all", "*"))
        )

    @cached_property
    def digest(self) -> str:
        """revocations_digest of the active set (computed once per state)."""
        return revocations_digest(self.active)


# -- following the channel: the watcher's decisions as pure functions (conformance vectors drive
# them; README, "Kill-switch protocol", steps 1-3) ------------------------------------------------
StreamMessage = tuple[str, Mapping[str, str]]  # (stream id, fields)


class SnapshotUnavailable(Exception):
    """The snapshot is missing, unreadable, older than the state applied or in a protocol version
    this SDK does not know: keep what we have, fail closed, and retry. ``reason`` is a code:
    ``missing_snapshot``, ``malformed_snapshot``, ``older_snapshot`` or ``unsupported_protocol``."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Follower:
    """Where an agent stands in the channel: the applied state, the snapshot generation it was
    loaded from, and the id and ``prev``-chain position of the last stream entry consumed."""

    state: RevocationState = field(default_factory=RevocationState)
    generation: str | None = None
    last_id: str = "0-0"
    position: int = 0


@dataclass(frozen=True)
class Poll:
    """The outcome of one poll: where the follower now stands and, if it must reload the
    snapshot, why (``reload``: a code, ``detail``: for people; both empty otherwise)."""

    follower: Follower
    reload: str = ""
    detail: str = ""


def _check_snapshot(snapshot: Mapping[str, str | None]) -> int:
    """The snapshot's epoch; raises SnapshotUnavailable if the snapshot is missing, malformed or
    in a protocol version this SDK does not know."""
    epoch = snapshot.get(SNAPSHOT_EPOCH_FIELD)
    if epoch is None:
        raise SnapshotUnavailable(
            "no snapshot in Redis (new, flushed or restarted); waiting for the service",
            "missing_snapshot",
        )
    version = snapshot.get(SNAPSHOT_VERSION_FIELD)  # absent: written before versions, i.e. 1
    problem = unsupported_protocol(_decimal(version)) if version is not None else None
    if problem:
        raise SnapshotUnavailable(f"the revocation snapshot's {problem}", "unsupported_protocol")
    parsed = _decimal(epoch)
    if not isinstance(parsed, int):
        raise SnapshotUnavailable(
            f"malformed snapshot: epoch {epoch!r:.40} is not an integer", "malformed_snapshot"
        )
    return parsed


def _decimal(text: str) -> int | str:
    """A decimal integer as Redis holds it, as an int; any other text stays text."""
    return int(text) if text.isascii() and text.isdigit() else text


def load_snapshot(
    snapshot: Mapping[str, str], last: StreamMessage | None, applied_epoch: int
) -> Follower:
    """Step 1: the follower after loading ``snapshot`` (the whole hash) and the stream's last
    entry. Raises SnapshotUnavailable; never goes back behind ``applied_epoch``."""
    epoch = _check_snapshot(snapshot)
    try:
        entries = [
            RevocationEntry.parse(value)
            for name, value in snapshot.items()
            if name.startswith(SNAPSHOT_ENTRY_PREFIX)
        ]
    except MalformedEntry as exc:
        raise SnapshotUnavailable(f"malformed snapshot: {exc}", "malformed_snapshot") from exc
    if epoch < applied_epoch:
        raise SnapshotUnavailable(
            f"the snapshot (epoch {epoch}) is older than the state applied (epoch "
            f"{applied_epoch}): Redis was restored from an older copy or lags; keeping "
            "the newer state until the service rewrites it",
            "older_snapshot",
        )
    return Follower(
        state=RevocationState.build(entries, epoch),
        generation=snapshot.get(SNAPSHOT_GENERATION_FIELD),
        last_id=last[0] if last else "0-0",
        position=stream_position(last[1].get(STREAM_ENTRY_FIELD)) if last else 0,
    )


def follow_poll(
    follower: Follower,
    snapshot: Mapping[str, str | None],
    messages: Sequence[StreamMessage],
    batch: int,
) -> Poll:
    """Steps 2-3: apply one poll's stream ``messages`` (read with COUNT ``batch``), given the
    snapshot's ``_epoch``, ``_generation`` and ``_v`` read in the same round trip. Raises
    SnapshotUnavailable (reload, after a pause) if the snapshot is missing, malformed or in an
    unknown protocol version."""
    snapshot_epoch = _check_snapshot(snapshot)
    entries = []
    last_id, position = follower.last_id, follower.position
    for message_id, fields in messages:
        try:
            entry = RevocationEntry.parse(fields.get(STREAM_ENTRY_FIELD, ""))
            prev = int(fields[STREAM_PREV_FIELD])
        except (MalformedEntry, KeyError, ValueError) as exc:
            detail = f"malformed revocation stream entry {message_id}: {exc}"
            return Poll(follower, "malformed_entry", detail)
        if prev != position:
            detail = (
                f"revocation stream entry {message_id} follows epoch {prev} but the last one "
                f"seen was epoch {position}: entries were trimmed or lost"
            )
            return Poll(follower, "gap", detail)
        last_id, position = message_id, entry.epoch
        entries.append(entry)
    state = follower.state.apply(entries) if entries else follower.state
    follower = Follower(state, follower.generation, last_id, position)
    if snapshot.get(SNAPSHOT_GENERATION_FIELD) != follower.generation:
        return Poll(follower, "new_generation", "the service rewrote the snapshot")
    if snapshot_epoch < state.epoch and not entries:
        return Poll(follower, "snapshot_behind", "the snapshot is older than the state applied")
    if snapshot_epoch > state.epoch and len(messages) < batch:
        return Poll(follower, "snapshot_ahead", "the snapshot knows more than the stream told")
    return Poll(follower)
