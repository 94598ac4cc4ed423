"""The action log as one Merkle tree (RFC 9162 §2.1, as in Certificate Transparency).

Every event has a global leaf index; its leaf hash is ``SHA-256(0x00 || event hash)`` (the event
hash of :mod:`agent_passport.audit`, which covers the whole event). Interior nodes are
``SHA-256(0x01 || left || right)``; the root of ``n`` leaves splits at the largest power of two
below ``n``. Signed tree heads (STH) ``{tree_size, root, at, prev}`` each name the previous head
by the hash of its payload, so a deleted head breaks the chain of the next one.

This module holds the tree math and every verifier, so the registry (which builds the tree and
answers proofs) and an agent or auditor (who verifies offline with nothing but the JWKS) use the
same code. Written here rather than taken from pymerkle: the registry must answer a proof at 10M
leaves in milliseconds from hashes persisted in its database, which needs the stored-subtree
layout below (pymerkle recomputes subtree roots from the leaves, or caches them in memory only);
pymerkle is used by the tests as an independent reference for the roots.

Stored subtrees: a tree is described by "perfect" subtrees, ``(level, index)`` covering leaves
``[index * 2**level, (index + 1) * 2**level)``. :func:`plan_root`, :func:`plan_inclusion` and
:func:`plan_consistency` list which perfect subtrees a root or proof needs; the caller fetches
them (from stored nodes, or by hashing leaves for small ones) and :func:`fold` computes the result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_passport.audit import GENESIS, b64url_decode, canonical

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
HEAD_FIELDS = ("tree_size", "root", "at", "prev")

Node = tuple[int, int]  # (level, index): the perfect subtree of 2**level leaves at index


def leaf_hash(event_hash: str) -> bytes:
    """The leaf of an event, from its (hex) event hash."""
    return hashlib.sha256(b"\x00" + bytes.fromhex(event_hash)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (size ≥ 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def perfect_ranges(start: int, end: int) -> list[Node]:
    """The perfect subtrees that make up ``[start, end)``, left to right, where ``start`` is a
    multiple of a power of two ≥ ``end - start`` (true of every range a root or proof needs)."""
    nodes: list[Node] = []
    size = end - start
    offset = start
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append((level, offset >> level))
            offset += 1 << level
    return nodes


@dataclass(frozen=True)
class Range:
    """The root of leaves ``[start, end)``: the fold of its perfect subtrees."""

    start: int
    end: int

    def nodes(self) -> list[Node]:
        return perfect_ranges(self.start, self.end)


def fold(nodes: Sequence[bytes]) -> bytes:
    """The root of a range from its perfect subtrees' hashes, left to right (RFC 9162's MTH)."""
    if not nodes:
        return bytes.fromhex(EMPTY_ROOT)
    root = nodes[-1]
    for left in reversed(nodes[:-1]):
        root = node_hash(left, root)
    return root


def plan_root(size: int) -> Range:
    return Range(0, size)


def plan_inclusion(index: int, size: int) -> list[Range]:
    """The ranges whose roots form the inclusion path of leaf ``index`` in a tree of ``size``
    (RFC 9162 §2.1.3.1), leaf end first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            path.append(Range(start + k, end))
            end = start + k
        else:
            path.append(Range(start, start + k))
            start += k
    return list(reversed(path))


def plan_consistency(first: int, second: int) -> list[Range]:
    """The ranges whose roots form the consistency proof from ``first`` to ``second`` leaves
    (RFC 9162 §2.1.4.1)."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from {first} to {second}")
    proof: list[Range] = []
    start, end, m, complete = 0, second, first, True  # m: the old size within [start, end)
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(Range(start + k, end))
            end = start + k
        else:
            proof.append(Range(start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:  # the old tree's last subtree is not a node the verifier already has
        proof.append(Range(start, end))
    return list(reversed(proof))


class HashSource:
    """Answers the hash of any range, given ``perfect(nodes) -> {node: hash}``; the caller
    collects every node first so that one round trip fetches them all."""

    def __init__(self, perfect: Callable[[set[Node]], Mapping[Node, bytes]]) -> None:
        self._perfect = perfect

    def roots(self, ranges: Sequence[Range]) -> list[bytes]:
        wanted = {node for each in ranges for node in each.nodes()}
        known = self._perfect(wanted)
        missing = wanted - set(known)
        if missing:
            raise LookupError(f"tree nodes missing: {sorted(missing)[:5]}")
        return [fold([known[node] for node in each.nodes()]) for each in ranges]


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """Root of a list of leaf hashes, in memory (tests and small exports)."""
    return compact_root(leaves).root()


class CompactTree:
    """An append-only tree kept as its perfect subtrees on the right edge (O(log n) memory):
    streams millions of leaves (an export, an archive) into a root, with every head checked on
    the way by :meth:`root` at the sizes it names."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing

    @classmethod
    def from_edge(cls, size: int, nodes: Sequence[bytes]) -> CompactTree:
        """Resume after ``size`` leaves from the hashes of ``perfect_ranges(0, size)`` (e.g. a
        live log whose first ``size`` leaves were archived)."""
        layout = perfect_ranges(0, size)
        if len(layout) != len(nodes):
            raise ValueError(f"a tree of {size} leaves has {len(layout)} edge subtrees")
        tree = cls()
        tree.size = size
        tree._stack = [(level, value) for (level, _), value in zip(layout, nodes, strict=True)]
        return tree

    def append(self, leaf: bytes) -> None:
        level, value = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            value = node_hash(left, value)
            level += 1
        self._stack.append((level, value))
        self.size += 1

    def root(self) -> bytes:
        return fold([value for _, value in self._stack])


def compact_root(leaves: Sequence[bytes]) -> CompactTree:
    tree = CompactTree()
    for leaf in leaves:
        tree.append(leaf)
    return tree


# -- verifiers (RFC 9162 §2.1.3.2 and §2.1.4.2) ------------------------------------------------
def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    if first == second:
        return not proof and first_root == second_root
    if not 0 < first < second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


# -- signed tree heads ---------------------------------------------------------------------------
def head_payload(head: Mapping[str, Any]) -> bytes:
    """What the registry signs: ``{v, type, tree_size, root, at, prev}`` canonically encoded."""
    return canonical({"v": 1, "type": "tree_head", **{k: head[k] for k in HEAD_FIELDS}})


def head_id(head: Mapping[str, Any]) -> str:
    """The hash a later head names as ``prev`` (GENESIS for the first head)."""
    return hashlib.sha256(head_payload(head)).hexdigest()


def verify_head(head: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """Check a head's signature and shape. Returns a problem description or None."""
    name = f"tree head of size {head.get('tree_size')!r}"
    try:
        if not isinstance(head["tree_size"], int) or head["tree_size"] < 0:
            return f"{name} is malformed (tree_size)"
        bytes.fromhex(head["root"])
        key = keys.get(head.get("kid", ""))
        if key is None:
            return f"{name} is signed by unknown key {head.get('kid')!r}"
        key.verify(b64url_decode(head["signature"]), head_payload(head))
    except InvalidSignature:
        return f"{name} has a bad signature"
    except (KeyError, TypeError, ValueError) as exc:
        return f"{name} is malformed ({exc})"
    return None


def verify_head_chain(heads: Sequence[Mapping[str, Any]]) -> str | None:
    """Heads in order of size: each must name the previous one and never shrink. Returns the
    first problem (a deleted, reordered or forked head) or None."""
    previous: Mapping[str, Any] | None = None
    for head in heads:
        expected = GENESIS if previous is None else head_id(previous)
        if head.get("prev") != expected:
            what = "the first head" if previous is None else f"head {previous.get('tree_size')}"
            return (
                f"tree head of size {head.get('tree_size')} does not follow {what} "
                "(a head was deleted, inserted or rewritten)"
            )
        if previous is not None and head["tree_size"] < previous["tree_size"]:
            return f"tree head of size {head['tree_size']} is smaller than the one before"
        previous = head
    return None


def promise_payload(promise: Mapping[str, Any]) -> bytes:
    """What the registry signs in a receipt: ``{v, type, leaves: [[index, event hash]...],
    include_by}`` — the leaves will be covered by a signed head before ``include_by``."""
    return canonical(
        {
            "v": 1,
            "type": "inclusion_promise",
            "leaves": promise["leaves"],
            "include_by": promise["include_by"],
        }
    )


def verify_promise(promise: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """Check a receipt's promise signature. Returns a problem description or None."""
    key = keys.get(promise.get("kid", ""))
    if key is None:
        return f"inclusion promise signed by unknown key {promise.get('kid')!r}"
    try:
        key.verify(b64url_decode(promise["signature"]), promise_payload(promise))
    except InvalidSignature:
        return "inclusion promise has a bad signature"
    except (KeyError, TypeError, ValueError) as exc:
        return f"inclusion promise is malformed ({exc})"
    return None


def hexes(hashes: Sequence[bytes]) -> list[str]:
    return [value.hex() for value in hashes]


def unhex(values: Sequence[str]) -> list[bytes]:
    """Hex strings to bytes; ValueError on anything that is not a 32-byte hex hash."""
    out = []
    for value in values:
        if not isinstance(value, str) or len(value) != 64:
            raise ValueError("a proof hash is not 64 hex digits")
        out.append(bytes.fromhex(value))
    return out
