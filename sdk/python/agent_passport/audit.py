"""Tamper evidence for the action log: canonical encoding, per-agent hash chains, checkpoints.
(The global Merkle tree and its signed heads: :mod:`agent_passport.merkle`; verifying a whole
log or an export: :mod:`agent_passport.logcheck`.)

Each event's hash is SHA-256 over its canonical encoding (JSON, sorted keys, no spaces, UTF-8)
which includes the previous event's hash (``prev``; 64 zeros for an agent's first event). The
registry periodically signs a checkpoint ``{agent, count, head, at}`` with its Ed25519 key, so
an export can be verified offline with nothing but the registry's JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64
EVENT_FIELDS = (
    "agent",
    "seq",
    "id",
    "passport",
    "fleet",
    "action",
    "resource",
    "jurisdiction",
    "decision",
    "reason",
    "occurred_at",
    "received_at",
    "details",
    "prev",
)
CHECKPOINT_FIELDS = ("agent", "count", "head", "at")


def timestamp(moment: datetime) -> str:
    """The log's time text: UTC to the microsecond, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# One encoder for every hash: json.dumps with options builds a new encoder per call (half the
# cost of hashing an event).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(document: Mapping[str, Any]) -> bytes:
    return _CANONICAL.encode(document).encode("utf-8")


def event_hash(event: Mapping[str, Any]) -> str:
    """Hash of an event given as a mapping with (at least) EVENT_FIELDS."""
    return hashlib.sha256(canonical({"v": 1, **{k: event[k] for k in EVENT_FIELDS}})).hexdigest()


def checkpoint_payload(checkpoint: Mapping[str, Any]) -> bytes:
    return canonical(
        {"v": 1, "type": "checkpoint", **{k: checkpoint[k] for k in CHECKPOINT_FIELDS}}
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """The inverse of :func:`b64url` (padding restored); ValueError if ``text`` is not ASCII."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class ChainReport:
    """The outcome of verifying an action log (:mod:`agent_passport.logcheck`): its chains and
    checkpoints, and its Merkle tree against the signed tree heads. ``problems`` name what was
    tampered with; ``unsigned_events`` are events no signed head covers yet (not tampering,
    but not verified either)."""

    chains: int = 0
    events: int = 0
    checkpoints: int = 0
    heads: int = 0
    tree_size: int = 0  # leaves in the log (archived ones included); filtered exports: 0
    signed_size: int = 0  # the newest signed head's size
    unsigned_events: int = 0
    proven: int = 0  # events checked by an inclusion proof (a filtered export)
    witnessed: int = 0  # witness heads checked
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing was found tampered with."""
        return not self.problems

    @property
    def verified(self) -> bool:
        """Nothing tampered with, and every event is covered by a signed head."""
        return self.ok and not self.unsigned_events

    def summary(self) -> str:
        """The counts, and the events not yet covered by a signed head if any."""
        if self.unsigned_events:
            return (
                f"{self.counts()}; {self.unsigned_events} event(s) not yet covered by a signed head"
            )
        return self.counts()

    def counts(self) -> str:
        text = (
            f"{self.chains} chain(s), {self.events} event(s), {self.checkpoints} checkpoint(s), "
            f"{self.heads} head(s)"
        )
        if self.proven:
            text += f", {self.proven} inclusion proof(s) in the head of size {self.signed_size}"
        else:
            text += f", tree of {self.tree_size} leaves signed up to {self.signed_size}"
        if self.witnessed:
            text += f", {self.witnessed} witness head(s)"
        return text


class ChainWalk:
    """One agent's chain, walked an event at a time (streaming: memory per agent, not per
    event). A chain may resume mid-way (``seq``, ``prev``) where older events were archived."""

    def __init__(self, agent: str, seq: int = 1, prev: str = GENESIS) -> None:
        self.agent = agent
        self.expected_seq = seq
        self.head = prev  # the hash of event ``last_seq`` (GENESIS before the first)
        self.count = 0
        self.problem: str | None = None

    @property
    def last_seq(self) -> int:
        return self.expected_seq - 1

    def step(self, event: Mapping[str, Any]) -> str | None:
        """Check the next event; returns the chain's first problem when it is found (later
        events of a broken chain are ignored)."""
        if self.problem is not None:
            return None
        self.problem = self._problem(event)
        return self.problem

    def _problem(self, event: Mapping[str, Any]) -> str | None:
        seq, event_id, agent = event.get("seq"), event.get("id"), self.agent
        expected_seq = self.expected_seq
        if seq != expected_seq:
            if isinstance(seq, int) and seq > expected_seq:
                what = (
                    f"event seq {expected_seq} is missing (deleted or reordered) before event "
                    f"{event_id}"
                )
            else:
                what = (
                    f"event {event_id} has seq {seq} where {expected_seq} was expected "
                    "(inserted or reordered)"
                )
            return f"agent {agent}: {what}"
        if event.get("prev") != self.head:
            return (
                f"agent {agent}: event {event_id} (seq {seq}) does not follow the previous "
                "event (an event was deleted, inserted or reordered before it)"
            )
        try:
            recomputed = event_hash(event)
        except (KeyError, TypeError, ValueError) as exc:
            return f"agent {agent}: event {event_id} is malformed ({exc})"
        if recomputed != event.get("hash"):
            return (
                f"agent {agent}: event {event_id} (seq {seq}) was edited: its content no "
                "longer matches its hash"
            )
        self.head, self.expected_seq, self.count = recomputed, expected_seq + 1, self.count + 1
        return None


def verify_chain(agent: str, events: Iterable[Mapping[str, Any]]) -> tuple[int, str, str | None]:
    """Walk one agent's events in stored order. Returns ``(count, head, problem)``.

    The problem (if any) names the first event that was edited, deleted, inserted or reordered.
    """
    walk = ChainWalk(agent)
    for event in events:
        if walk.step(event):
            break
    return walk.count, walk.head, walk.problem


def verify_checkpoint(
    checkpoint: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """Check a checkpoint's signature. Returns a problem description or None."""
    name = f"checkpoint {checkpoint.get('agent')}#{checkpoint.get('count')}"
    key = keys.get(checkpoint.get("kid", ""))
    if key is None:
        return f"{name} is signed by unknown key {checkpoint.get('kid')!r}"
    try:
        key.verify(b64url_decode(checkpoint["signature"]), checkpoint_payload(checkpoint))
    except (InvalidSignature, KeyError, ValueError):
        return f"{name} has a bad signature"
    return None
