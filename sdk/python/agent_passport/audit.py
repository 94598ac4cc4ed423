"""Tamper evidence for the action log: canonical encoding, per-agent hash chains, checkpoints.

Each event's hash is SHA-256 over its canonical encoding (JSON, sorted keys, no spaces, UTF-8)
which includes the previous event's hash (``prev``; 64 zeros for an agent's first event). The
registry periodically signs a checkpoint ``{agent, count, head, at}`` with its Ed25519 key, so
an export can be verified offline with nothing but the registry's JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
    """The outcome of verifying one or more chains. ``problems`` name the first bad event."""

    chains: int = 0
    events: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return f"{self.chains} chain(s), {self.events} event(s), {self.checkpoints} checkpoint(s)"


def verify_chain(agent: str, events: Iterable[Mapping[str, Any]]) -> tuple[int, str, str | None]:
    """Walk one agent's events in stored order. Returns ``(count, head, problem)``.

    The problem (if any) names the first event that was edited, deleted, inserted or reordered.
    """
    expected_prev, expected_seq, count = GENESIS, 1, 0
    for event in events:
        seq, event_id = event.get("seq"), event.get("id")
        if seq != expected_seq:
            if isinstance(seq, int) and seq > expected_seq:
                what = f"event seq {expected_seq} is missing (deleted) before event {event_id}"
            else:
                what = (
                    f"event {event_id} has seq {seq} where {expected_seq} was expected "
                    "(inserted or reordered)"
                )
            return count, expected_prev, f"agent {agent}: {what}"
        if event.get("prev") != expected_prev:
            return (
                count,
                expected_prev,
                (
                    f"agent {agent}: event {event_id} (seq {seq}) does not follow the previous "
                    "event (an event was deleted, inserted or reordered before it)"
                ),
            )
        try:
            recomputed = event_hash(event)
        except (KeyError, TypeError, ValueError) as exc:
            return count, expected_prev, f"agent {agent}: event {event_id} is malformed ({exc})"
        if recomputed != event.get("hash"):
            return (
                count,
                expected_prev,
                (
                    f"agent {agent}: event {event_id} (seq {seq}) was edited: its content no "
                    "longer matches its hash"
                ),
            )
        expected_prev, expected_seq, count = recomputed, expected_seq + 1, count + 1
    return count, expected_prev, None


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


def verify_log(
    events: Iterable[Mapping[str, Any]],
    checkpoints: Iterable[Mapping[str, Any]],
    keys: Mapping[str, Ed25519PublicKey],
) -> ChainReport:
    """Verify whole chains (events in stored order per agent) against signed checkpoints.

    Every checkpoint must be validly signed and agree with the chain at its count; the newest
    checkpoint of a chain also proves no events were cut off its end.
    """
    by_agent: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    report = ChainReport()
    for event in events:
        by_agent[str(event.get("agent"))].append(event)
    marks: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for checkpoint in checkpoints:
        report.checkpoints += 1
        marks[str(checkpoint.get("agent"))].append(checkpoint)
    for agent in sorted(set(by_agent) | set(marks)):
        chain = by_agent.get(agent, [])
        report.chains += 1
        report.events += len(chain)
        count, _head, problem = verify_chain(agent, chain)
        if problem:
            report.problems.append(problem)
            continue
        hashes = [event["hash"] for event in chain]
        for checkpoint in marks.get(agent, []):
            bad_signature = verify_checkpoint(checkpoint, keys)
            if bad_signature:
                report.problems.append(bad_signature)
                break
            at = checkpoint["count"]
            if at > count:
                report.problems.append(
                    f"agent {agent}: checkpoint says {at} events but only {count} remain "
                    f"(event seq {count + 1} and later were deleted)"
                )
                break
            if at and hashes[at - 1] != checkpoint["head"]:
                report.problems.append(
                    f"agent {agent}: the chain up to seq {at} differs from the signed checkpoint "
                    "(events were rewritten)"
                )
                break
    return report
