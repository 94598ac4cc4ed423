"""The action log's tamper evidence on the server: chaining at ingestion, signed checkpoints,
verification and export. The encoding and the verifier are the SDK's (agent_passport.audit), so
an export verifies offline exactly as the registry verifies itself."""

import heapq
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from actions import transparency
from actions.models import (
    ActionEvent,
    ArchivedSegment,
    AuditCheckpoint,
    MerkleNode,
    SignedTreeHead,
)
from agent_passport.audit import (
    GENESIS,
    ChainReport,
    b64url,
    checkpoint_payload,
    event_hash,
    timestamp,
)
from agent_passport.logcheck import (
    SIGNED,
    Checkpoints,
    Expectation,
    HeadChain,
    LogVerifier,
    Progress,
    TreeCheck,
    WitnessCheck,
    feed,
    note,
    read_heads,
)
from agent_passport.merkle import HashSource, hexes, plan_inclusion
from passports import signing
from passports.models import Agent

CHUNK = 2000
NODE_LEVEL = 8  # stored subtrees of 256 leaves (actions.transparency): a rewrite localised
PROOF_BATCH = 100


# The stored columns of an event document, in the order of :func:`document`'s arguments.
EVENT_COLUMNS = (
    "agent_id",
    "seq",
    "id",
    "passport_id",
    "fleet",
    "action",
    "resource",
    "jurisdiction",
    "decision",
    "reason",
    "occurred_at",
    "received_at",
    "details",
    "prev_hash",
    "hash",
    "leaf_index",
)


def event_document(event: ActionEvent) -> dict[str, Any]:
    """The canonical fields of an event (what its hash covers), plus the stored hash and its
    place in the tree (``leaf_index``: not hashed, the tree's root vouches for it)."""
    return document(*(getattr(event, column) for column in EVENT_COLUMNS))


def document(
    agent_id: Any,
    seq: int,
    event_id: Any,
    passport_id: Any,
    fleet: str,
    action: str,
    resource: str,
    jurisdiction: str,
    decision: str,
    reason: str,
    occurred_at: datetime,
    received_at: datetime,
    details: Any,
    prev_hash: str,
    hash_: str,
    leaf_index: int | None,
) -> dict[str, Any]:
    """:func:`event_document` from the ``EVENT_COLUMNS`` of a row (streams skip the model)."""
    return {
        "agent": str(agent_id),
        "seq": seq,
        "id": str(event_id),
        "passport": str(passport_id),
        "fleet": fleet,
        "action": action,
        "resource": resource,
        "jurisdiction": jurisdiction,
        "decision": decision,
        "reason": reason,
        "occurred_at": timestamp(occurred_at),
        "received_at": timestamp(received_at),
        "details": details,
        "prev": prev_hash,
        "hash": hash_,
        "leaf_index": leaf_index,
    }


def chain(documents: list[dict[str, Any]], *, agent_id: Any) -> None:
    """Give new events of one agent, as event documents (see :func:`event_document`) without
    ``seq``, ``prev`` and ``hash``, their place in its chain. Caller holds the agent's lock."""
    head = (
        ActionEvent.objects.filter(agent_id=agent_id)
        .order_by("-seq")
        .values_list("seq", "hash")
        .first()
    )
    seq, prev = head or (0, GENESIS)
    for document in documents:
        seq += 1
        document["seq"], document["prev"] = seq, prev
        document["hash"] = prev = event_hash(document)


def checkpoint_document(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "agent": str(checkpoint.agent_id),
        "count": checkpoint.count,
        "head": checkpoint.head_hash,
        "at": timestamp(checkpoint.created_at),
        "kid": checkpoint.kid,
        "signature": checkpoint.signature,
    }


@transaction.atomic
def create_checkpoints(*, everyone: bool = False) -> int:
    """Sign a checkpoint for every chain that grew since its last one (all chains if
    ``everyone``, e.g. after a key rotation). Returns how many were signed."""
    heads = ActionEvent.objects.values("agent_id").annotate(top=Max("seq"))
    latest = {
        row["agent_id"]: row["last"]
        for row in AuditCheckpoint.objects.values("agent_id").annotate(last=Max("count"))
    }
    signed = 0
    now = timezone.now()
    for row in heads:
        if not everyone and latest.get(row["agent_id"]) == row["top"]:
            continue
        head = ActionEvent.objects.get(agent_id=row["agent_id"], seq=row["top"]).hash
        checkpoint = AuditCheckpoint(
            agent_id=row["agent_id"], count=row["top"], head_hash=head, created_at=now
        )
        kid, signature = signing.sign_bytes(checkpoint_payload(checkpoint_document(checkpoint)))
        checkpoint.kid, checkpoint.signature = kid, b64url(signature)
        checkpoint.save()
        signed += 1
    return signed


def _checkpoints(agents: QuerySet[Agent] | None = None) -> Iterator[dict[str, Any]]:
    checkpoints = AuditCheckpoint.objects.order_by("agent_id", "count", "created_at")
    if agents is not None:
        checkpoints = checkpoints.filter(agent__in=agents)
    for checkpoint in checkpoints.iterator(chunk_size=CHUNK):
        yield checkpoint_document(checkpoint)


def _heads(up_to: SignedTreeHead | None = None) -> Iterator[dict[str, Any]]:
    """Head documents in the order they were signed (up to ``up_to``)."""
    heads = SignedTreeHead.objects.order_by("id")
    if up_to is not None:
        heads = heads.filter(id__lte=up_to.id)
    for head in heads.iterator(chunk_size=CHUNK):
        yield head.document()


def _signed_roots() -> Iterator[Expectation]:
    """Every head's (size, root), by size: the roots the recomputed tree must have."""
    rows = SignedTreeHead.objects.order_by("tree_size", "id").values_list("tree_size", "root_hash")
    for size, root in rows.iterator(chunk_size=CHUNK):
        yield Expectation(size, root, SIGNED)


def _events(start: int, agents: QuerySet[Agent] | None = None) -> Iterator[dict[str, Any]]:
    """Event documents in leaf order from leaf ``start`` (streamed)."""
    events = ActionEvent.objects.filter(leaf_index__gte=start).order_by("leaf_index")
    if agents is not None:
        events = events.filter(agent__in=agents)
    for row in events.values_list(*EVENT_COLUMNS).iterator(chunk_size=CHUNK):
        yield document(*row)


@transaction.atomic  # the cursors stream inside it (outside, PostgreSQL materialises them)
def verify(
    *, witness: Sequence[Mapping[str, Any]] = (), progress: Progress | None = None
) -> ChainReport:
    """Verify the whole log in one streaming pass (agent_passport.logcheck): the tree from
    :func:`transparency.live_start` against every signed head (and every ``witness`` head),
    the chain of heads, the per-agent chains against their newest checkpoints. Memory: per
    agent and witness head, not per event."""
    keys = signing.all_public_keys()
    report = ChainReport()
    chain = HeadChain(keys, report)
    witnesses = WitnessCheck(witness, keys, report)
    for head in _heads():
        if chain.add(head):
            witnesses.see(head)
    newest = chain.finish()
    witnesses.finish(newest)
    try:
        start, edge = transparency.live_start()
    except transparency.TreeDamaged as exc:
        note(report, f"the archived part of the tree is damaged: {exc}")
        start, edge = 0, []
    segment = ArchivedSegment.objects.filter(end_leaf=start).first()
    archived = [Expectation(start, segment.root_hash, "archived segment")] if segment else []
    roots = heapq.merge(archived, _signed_roots(), witnesses.expectations(), key=lambda e: e.size)
    # The heads are read before the events: every leaf a head covers is then visible.
    blocks = (
        MerkleNode.objects.filter(level=NODE_LEVEL, index__gte=start >> NODE_LEVEL)
        .order_by("index")
        .values_list("index", "hash")
    )
    tree = TreeCheck(
        report, roots, start=start, edge=edge, blocks=blocks.iterator(chunk_size=CHUNK)
    )
    checkpoints = Checkpoints(keys, report)
    for checkpoint in _checkpoints():
        checkpoints.add(checkpoint)
    verifier = LogVerifier(report, checkpoints, tree=tree, resume=start > 0)
    top = ActionEvent.objects.aggregate(top=Max("leaf_index"))["top"]
    feed(verifier, _events(start), 0 if top is None else top + 1 - start, progress)
    return verifier.finish()


def status() -> ChainReport:
    """What GET /api/v1/audit answers: :func:`verify`, also against the heads held by every
    witness file configured (``file://`` sinks of ``AUDIT_WITNESSES``: one head per line)."""
    heads: list[dict[str, Any]] = []
    unreadable = []
    for sink in getattr(settings, "AUDIT_WITNESSES", ()):
        if not sink.startswith("file://"):
            continue
        path = sink.removeprefix("file://")
        try:
            with open(path, encoding="utf-8") as lines:
                heads += read_heads(lines, path)
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            unreadable.append(f"witness copy {path} cannot be read ({exc})")
    report = verify(witness=heads)
    if report.heads:  # before the first head, no witness file exists yet
        for problem in unreadable:
            note(report, problem)
    return report


def export_jsonl(agents: QuerySet[Agent] | None = None) -> Iterator[str]:
    """The header, the signed heads (up to the newest when the export starts), the checkpoints,
    then the events in leaf order from where the live log starts (``start``, after the leaves
    archived, and the subtrees before it, ``edge``). A filtered export (``agents``: their
    chains) carries each event's inclusion proof in the newest head."""
    newest = transparency.latest_head()
    try:
        start, edge = transparency.live_start()
    except transparency.TreeDamaged:  # the verifier names the export's edge as malformed
        start, edge = ArchivedSegment.objects.order_by("-end_leaf")[0].end_leaf, []
    header = {
        "type": "export",
        "v": 2,
        "exported_at": timestamp(timezone.now()),
        "scope": "full" if agents is None else "filtered",
        "start": start,
        "edge": hexes(edge),
    }
    yield json.dumps(header) + "\n"
    for document in _heads(up_to=newest):
        yield json.dumps({"type": "head", **document}) + "\n"
    for document in _checkpoints(agents):
        yield json.dumps({"type": "checkpoint", **document}) + "\n"
    documents = _events(start, agents)
    if agents is not None:
        documents = _with_proofs(documents, newest.tree_size if newest is not None else 0)
    for document in documents:
        yield json.dumps({"type": "event", **document}, ensure_ascii=False) + "\n"


def _with_proofs(documents: Iterator[dict[str, Any]], size: int) -> Iterator[dict[str, Any]]:
    """Each event covered by the tree of ``size`` leaves gains its inclusion ``proof``; the
    proofs of PROOF_BATCH events are fetched together (one read of the stored nodes, of each
    256-leaf block and of the tree's right edge). A damaged tree leaves the proofs out (the
    offline verifier then names those events)."""
    source = HashSource(transparency.perfect_subtrees)
    for _batch, group in itertools.groupby(enumerate(documents), key=lambda d: d[0] // PROOF_BATCH):
        batch = [document for _, document in group]
        covered = [document for document in batch if document["leaf_index"] < size]
        plans = [plan_inclusion(document["leaf_index"], size) for document in covered]
        try:
            hashes = source.roots([r for plan in plans for r in plan])
        except LookupError:
            hashes = None
        if hashes is not None:
            position = 0
            for document, plan in zip(covered, plans, strict=True):
                document["proof"] = hexes(hashes[position : position + len(plan)])
                position += len(plan)
        yield from batch
