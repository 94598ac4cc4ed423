"""The action log as a transparency log (RFC 9162): leaf indexes at ingestion, the stored tree,
signed tree heads, inclusion and consistency proofs, inclusion promises in receipts.

The tree math and every verifier are the SDK's (agent_passport.merkle). Here: persistence.
- Ingestion reserves a contiguous range of leaf indexes with one ``UPDATE ... RETURNING`` on
  the ``next_leaf`` counter; its row lock is held until the batch commits, so committed leaves
  always form a prefix of the log (never a hole a rolled-back batch left behind).
- :func:`extend_tree` (under the ``tree_size`` counter's lock) stores every perfect subtree of
  ``2**NODE_LEVEL`` leaves or more that the new leaves complete. Smaller subtrees are hashed from
  the events' stored hashes when a proof needs them (at most two blocks of 256 leaves).
- :func:`sign_tree_head` extends the tree and signs ``{tree_size, root, at, prev}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from actions import witnesses
from actions.models import ActionEvent, ArchivedSegment, LogCounter, MerkleNode, SignedTreeHead
from agent_passport.audit import GENESIS, b64url, timestamp
from agent_passport.merkle import (
    CompactTree,
    HashSource,
    Node,
    fold,
    head_id,
    head_payload,
    hexes,
    leaf_hash,
    node_hash,
    perfect_ranges,
    plan_consistency,
    plan_inclusion,
    plan_root,
    promise_payload,
)
from passports import signing
from registry.errors import StateConflict

NODE_LEVEL = 8  # stored subtrees cover 256 leaves or more
BLOCK = 1 << NODE_LEVEL
READ_CHUNK = 20_000


class TreeDamaged(LookupError):
    """A leaf or stored subtree that a proof needs is missing: the log was tampered with."""


# -- ingestion ----------------------------------------------------------------------------------
def _bump(name: str, by: int) -> int:
    """Add ``by`` to a counter (creating it at 0 after a flush) and return the new value; the
    row stays locked until the caller's transaction ends."""
    table = connection.ops.quote_name(LogCounter._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, value) VALUES (%s, %s) "  # noqa: S608 (a model's name)
            f"ON CONFLICT (name) DO UPDATE SET value = {table}.value + excluded.value "
            "RETURNING value",
            [name, by],
        )
        return int(cursor.fetchone()[0])


def reserve_leaves(count: int) -> int:
    """The first of ``count`` consecutive leaf indexes for a batch being stored. Call it inside
    the batch's transaction, as late as possible: other batches wait here until it commits."""
    return _bump(LogCounter.NEXT_LEAF, count) - count


def promise(leaves: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """A signed promise that the leaves ``(index, event hash)`` will be covered by a signed
    head before ``include_by`` (CT's signed certificate timestamp, for a batch)."""
    due = timezone.now() + timedelta(seconds=2 * settings.AUDIT_CHECKPOINT_SECONDS)
    document: dict[str, Any] = {
        "leaves": [[index, event_hash] for index, event_hash in leaves],
        "include_by": timestamp(due),
    }
    kid, signature = signing.sign_bytes(promise_payload(document))
    return {**document, "kid": kid, "signature": b64url(signature)}


def receipt(leaves: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """What ``POST /api/v1/actions`` answers about the batch's place in the log: its leaves, the
    newest signed head and a signed promise to include the leaves (none for an empty batch)."""
    head = latest_head()
    return {
        "head": head.document() if head is not None else None,
        "promise": promise(leaves) if leaves else None,
    }


# -- heads --------------------------------------------------------------------------------------
def latest_head() -> SignedTreeHead | None:
    return SignedTreeHead.objects.order_by("-id").first()


def head_for_size(size: int) -> SignedTreeHead | None:
    """The newest head of exactly ``size`` leaves."""
    return SignedTreeHead.objects.filter(tree_size=size).order_by("-id").first()


@transaction.atomic
def sign_tree_head(*, force: bool = False) -> SignedTreeHead | None:
    """Extend the tree over every committed leaf and sign a head if it grew (or ``force``, e.g.
    after a key rotation). Returns the new head, or None if there was nothing new to sign."""
    size, root = extend_tree()  # holds the tree lock: heads are signed one after the other
    latest = latest_head()
    if not force and (size == (latest.tree_size if latest is not None else 0)):
        return None
    head = SignedTreeHead(
        tree_size=size,
        root_hash=root.hex(),
        created_at=timezone.now(),
        prev=head_id(latest.document()) if latest is not None else GENESIS,
    )
    head.kid, signature = signing.sign_bytes(head_payload(head.document()))
    head.signature = b64url(signature)
    head.save()
    # Witnesses get the head once it is committed (a rolled-back head was never published);
    # robust: a failing publication is logged and recorded, never undoes the head.
    transaction.on_commit(lambda: witnesses.publish(head), robust=True)
    return head


def sign_on_demand() -> tuple[SignedTreeHead, bool]:
    """Sign a head over everything committed now (published to the witnesses once committed).
    Returns (the head, True) if a new one was signed, (the latest head, False) if the log has
    not grown since. StateConflict while the log is still empty (no head to show)."""
    head = sign_tree_head()
    if head is not None:
        return head, True
    latest = latest_head()
    if latest is None:
        raise StateConflict("log", "the action log is empty: no tree head to sign yet")
    return latest, False


# -- the stored tree ----------------------------------------------------------------------------
def _leaves_in(ranges: Sequence[tuple[int, int]]) -> dict[int, bytes]:
    """Leaf hashes of every ``[start, end)`` in ``ranges``; TreeDamaged if one is missing."""
    if not ranges:
        return {}
    query = Q()
    for start, end in ranges:
        query |= Q(leaf_index__gte=start, leaf_index__lt=end)
    rows = ActionEvent.objects.filter(query).values_list("leaf_index", "hash")
    leaves = {index: leaf_hash(event_hash) for index, event_hash in rows}
    for start, end in ranges:
        for index in range(start, end):
            if index not in leaves:
                raise TreeDamaged(f"leaf {index} is missing (its event was deleted)")
    return leaves


def _stored(nodes: Iterable[Node]) -> dict[Node, bytes]:
    wanted = list(nodes)
    if not wanted:
        return {}
    query = Q()
    for level, index in wanted:
        query |= Q(level=level, index=index)
    return {
        (level, index): bytes.fromhex(value)
        for level, index, value in MerkleNode.objects.filter(query).values_list(
            "level", "index", "hash"
        )
    }


def perfect_subtrees(nodes: set[Node]) -> dict[Node, bytes]:
    """Hashes of perfect subtrees: stored ones read, small ones hashed from their leaves."""
    found = _stored(node for node in nodes if node[0] >= NODE_LEVEL)
    small = sorted(node for node in nodes if node[0] < NODE_LEVEL)
    blocks = sorted({(index << level) >> NODE_LEVEL for level, index in small})
    ranges = [  # at most two blocks: the leaf's own and the right edge; read in one query
        (
            block << NODE_LEVEL,
            max((i + 1) << lv for lv, i in small if (i << lv) >> NODE_LEVEL == block),
        )
        for block in blocks
    ]
    leaves = _leaves_in(ranges)
    for level, index in small:
        tree = CompactTree()
        for position in range(index << level, (index + 1) << level):
            tree.append(leaves[position])
        found[(level, index)] = tree.root()
    return found


def _source() -> HashSource:
    return HashSource(perfect_subtrees)


def _roots(ranges: Sequence[Any]) -> list[bytes]:
    try:
        return _source().roots(ranges)
    except LookupError as exc:
        raise TreeDamaged(str(exc)) from exc


def root(size: int) -> bytes:
    return _roots([plan_root(size)])[0]


def inclusion_proof(leaf_index: int, size: int) -> list[str]:
    """The audit path of a leaf in the tree of ``size`` leaves (hex, leaf end first)."""
    return hexes(_roots(plan_inclusion(leaf_index, size)))


def consistency_proof(first: int, second: int) -> list[str]:
    """Proof that the tree of ``first`` leaves is a prefix of the tree of ``second`` (hex)."""
    if first == second:
        return []
    return hexes(_roots(plan_consistency(first, second)))


def extend_tree() -> tuple[int, bytes]:
    """Store the subtrees completed by leaves committed since the last call; returns the new
    size (every contiguous committed leaf) and its root. Takes the tree lock until commit."""
    built = _locked_tree_size()
    start = built >> NODE_LEVEL << NODE_LEVEL  # re-read the partial block the last call left
    edge = _stored(node for node in perfect_ranges(0, start) if node[0] >= NODE_LEVEL)
    new: dict[Node, bytes] = {}
    block: list[bytes] = []
    size = start
    rows = (
        ActionEvent.objects.filter(leaf_index__gte=start)
        .order_by("leaf_index")
        .values_list("leaf_index", "hash")
        .iterator(chunk_size=READ_CHUNK)
    )
    for index, event_hash in rows:
        if index != size:
            break  # a gap: a batch not committed yet (or a deleted event; verify_audit names it)
        block.append(leaf_hash(event_hash))
        size += 1
        if len(block) == BLOCK:
            _complete(NODE_LEVEL, (size >> NODE_LEVEL) - 1, fold_block(block), edge, new)
            block = []
    if new:
        MerkleNode.objects.bulk_create(
            [MerkleNode(level=lv, index=i, hash=value.hex()) for (lv, i), value in new.items()],
            ignore_conflicts=True,
        )
    LogCounter.objects.filter(name=LogCounter.TREE_SIZE).update(value=size)
    known = {**edge, **new}
    top = [known[node] for node in perfect_ranges(0, size - len(block))]
    return size, fold([*top, *([fold_block(block)] if block else [])])


def fold_block(leaves: Sequence[bytes]) -> bytes:
    tree = CompactTree()
    for leaf in leaves:
        tree.append(leaf)
    return tree.root()


def _complete(
    level: int, index: int, value: bytes, edge: dict[Node, bytes], new: dict[Node, bytes]
) -> None:
    """Record a finished subtree and every parent it finishes (its left siblings are on the
    tree's left edge, stored or new)."""
    while True:
        new[(level, index)] = value
        if not index & 1:
            edge[(level, index)] = value
            return
        sibling = new.get((level, index - 1)) or edge.get((level, index - 1))
        if sibling is None:
            raise TreeDamaged(f"stored subtree {level}/{index - 1} is missing")
        edge.pop((level, index - 1), None)
        value = node_hash(sibling, value)
        level, index = level + 1, index >> 1


def _locked_tree_size() -> int:
    """The built size, with the ``tree_size`` counter locked until the transaction ends."""
    return _bump(LogCounter.TREE_SIZE, 0)


def live_start() -> tuple[int, list[bytes]]:
    """Where the events in the database begin: the newest archived segment's end (0 if none)
    and the stored subtrees of everything before it, to resume the tree from."""
    segment = ArchivedSegment.objects.order_by("-end_leaf").first()
    if segment is None:
        return 0, []
    layout = perfect_ranges(0, segment.end_leaf)
    stored = _stored(layout)
    missing = [node for node in layout if node not in stored]
    if missing:
        raise TreeDamaged(f"stored subtrees of the archived part are missing: {missing[:3]}")
    return segment.end_leaf, [stored[node] for node in layout]
