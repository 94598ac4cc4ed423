"""Offline verification of a saved answer of the registry's proof endpoints, with only its JWKS.

- ``GET /api/v1/actions/{id}/proof``: ``{"event", "leaf_index", "tree_size", "path", "head"}``.
  The event's hash is recomputed from its fields (agent_passport.audit.event_hash), its leaf
  hashed, the audit path folded up to the head's root, and the head's signature checked.
- ``GET /api/v1/audit/consistency``: ``{"from", "to", "proof", "from_head", "to_head"}``. Both
  heads' signatures, and that the newer tree extends the older one.

Used by ``python -m agent_passport verify-proof FILE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_passport.audit import EVENT_FIELDS, event_hash
from agent_passport.merkle import (
    HEAD_FIELDS,
    leaf_hash,
    unhex,
    verify_consistency,
    verify_head,
    verify_inclusion,
)


class UnusableProof(ValueError):
    """The document is not a proof that can be checked (a field missing or of the wrong type)."""


@dataclass(frozen=True)
class Outcome:
    problem: str | None  # what failed; None when the proof holds
    summary: str = ""


def _field(document: Mapping[str, Any], name: str, kind: type, where: str = "") -> Any:
    value = document.get(name)
    if value is None or not isinstance(value, kind) or isinstance(value, bool):
        what = "an object" if kind is dict else "a list" if kind is list else kind.__name__
        raise UnusableProof(f"missing or malformed field '{where}{name}' (must be {what})")
    return value


def _head(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    head: dict[str, Any] = _field(document, name, dict)
    for key in (*HEAD_FIELDS, "kid", "signature"):
        _field(head, key, int if key == "tree_size" else str, f"{name}.")
    try:
        bytes.fromhex(head["root"])
    except ValueError as exc:
        raise UnusableProof(f"'{name}.root' is not hex") from exc
    return head


def _hashes(document: Mapping[str, Any], name: str) -> list[bytes]:
    try:
        return unhex(_field(document, name, list))
    except ValueError as exc:
        raise UnusableProof(f"'{name}': {exc}") from exc


def _signed_at(head: Mapping[str, Any]) -> str:
    return f"{head['tree_size']} leaves (root {head['root'][:12]}…, signed {head['at']})"


def verify_proof_document(document: object, keys: Mapping[str, Ed25519PublicKey]) -> Outcome:
    """Which kind of proof ``document`` is, checked. UnusableProof if it is neither."""
    if not isinstance(document, dict):
        raise UnusableProof("not a JSON object")
    if "event" in document:
        return verify_inclusion_document(document, keys)
    if "to_head" in document:
        return verify_consistency_document(document, keys)
    raise UnusableProof(
        "neither an inclusion proof (GET /api/v1/actions/{id}/proof: 'event', 'path', 'head') "
        "nor a consistency proof (GET /api/v1/audit/consistency: 'proof', 'from_head', 'to_head')"
    )


def verify_inclusion_document(
    document: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> Outcome:
    event: dict[str, Any] = _field(document, "event", dict)
    missing = [name for name in (*EVENT_FIELDS, "hash") if name not in event]
    if missing:
        raise UnusableProof(f"the event lacks field(s) {', '.join(missing)}")
    index: int = _field(document, "leaf_index", int)
    size: int = _field(document, "tree_size", int)
    path = _hashes(document, "path")
    head = _head(document, "head")
    name = f"event {event.get('id')}"
    if problem := verify_head(head, keys):
        return Outcome(f"the head: {problem}")
    if head["tree_size"] != size:
        return Outcome(f"tree_size {size} is not the size of the head ({head['tree_size']})")
    if event.get("leaf_index", index) != index:
        return Outcome(f"{name} says it is leaf {event['leaf_index']}, the proof says {index}")
    try:
        computed = event_hash(event)
    except (TypeError, ValueError) as exc:
        raise UnusableProof(f"the event cannot be hashed ({exc})") from exc
    if computed != event["hash"]:
        return Outcome(
            f"{name} was edited: its fields hash to {computed[:12]}…, "
            f"not to its recorded hash {str(event['hash'])[:12]}…"
        )
    if not verify_inclusion(leaf_hash(computed), index, size, path, bytes.fromhex(head["root"])):
        return Outcome(
            f"{name} is not leaf {index} of the signed head of {_signed_at(head)}: "
            "the inclusion proof fails"
        )
    return Outcome(None, f"{name} is leaf {index} of the signed head of {_signed_at(head)}")


def verify_consistency_document(
    document: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> Outcome:
    first: int = _field(document, "from", int)
    second: int = _field(document, "to", int)
    proof = _hashes(document, "proof")
    if document.get("from_head") is None:
        raise UnusableProof(
            f"'from_head' is null: no signed head has {first} leaves, so the older root is not "
            "known; ask again with from= the size of a signed head"
        )
    old, new = _head(document, "from_head"), _head(document, "to_head")
    for label, head in (("from_head", old), ("to_head", new)):
        if problem := verify_head(head, keys):
            return Outcome(f"{label}: {problem}")
    if (old["tree_size"], new["tree_size"]) != (first, second):
        return Outcome(
            f"the heads have {old['tree_size']} and {new['tree_size']} leaves, "
            f"not from={first} and to={second}"
        )
    if first > second:
        return Outcome(
            f"the head of {_signed_at(new)} is smaller than the head of {_signed_at(old)}: "
            "the log was truncated or rolled back"
        )
    if not verify_consistency(
        first, second, bytes.fromhex(old["root"]), bytes.fromhex(new["root"]), proof
    ):
        return Outcome(
            f"the signed head of {_signed_at(new)} does not extend the signed head of "
            f"{_signed_at(old)}: the consistency proof fails (the log was rewritten)"
        )
    return Outcome(
        None,
        f"the signed head of {_signed_at(new)} extends the signed head of {_signed_at(old)}",
    )
