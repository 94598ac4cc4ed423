"""Retention: move the oldest part of the action log into a self-verifying segment file, then
drop the partitions it emptied (``manage.py archive_audit --before DATE --to DIR``).

The segment covers leaves ``[S, N)``: S is where the live log starts (``live_start``), N the
largest multiple of 256 that is at most the newest signed head's size and at most the first leaf
received at or after DATE (so only events received before DATE are archived, and the stored
subtrees of 256+ leaves keep the live tree whole). The file (format: agent_passport.segment)
is read back and verified with the SDK before anything is recorded or dropped; then, in one
transaction, the ArchivedSegment is recorded (the live log starts at N from then on) and the
monthly partitions holding only leaves below N are detached and dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Min
from django.utils import timezone
from tqdm import tqdm

from actions import partitions, transparency
from actions.audit import event_document
from actions.models import ActionEvent, ArchivedSegment, LogCounter, SignedTreeHead
from agent_passport.merkle import hexes
from agent_passport.segment import (
    SEGMENT_VERSION,
    SegmentError,
    SegmentReport,
    read_records,
    verify_segment,
)
from passports import signing

READ_CHUNK = 5_000


class ArchiveRefused(Exception):
    """Nothing was archived or dropped; the message says why."""


@dataclass(frozen=True)
class Plan:
    start: int
    end: int
    head: SignedTreeHead  # the newest head: the segment's consistency proof ends there
    edge: list[bytes]  # stored subtrees of perfect_ranges(0, start)


@dataclass
class Outcome:
    segment: ArchivedSegment
    report: SegmentReport
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # partitions before DATE holding leaves ≥ N


def plan(before: datetime) -> Plan:
    if before > timezone.now():
        raise ArchiveRefused(f"{before.isoformat()} is in the future: nothing received yet")
    head = transparency.latest_head()
    if head is None:
        raise ArchiveRefused("no signed tree head yet: nothing to archive")
    start, edge = transparency.live_start()
    later = ActionEvent.objects.filter(received_at__gte=before, leaf_index__gte=start).aggregate(
        first=Min("leaf_index")
    )["first"]
    limit = head.tree_size if later is None else min(later, head.tree_size)
    end = limit >> transparency.NODE_LEVEL << transparency.NODE_LEVEL
    if end <= start:
        raise ArchiveRefused(
            f"nothing to archive: the live log starts at leaf {start} and fewer than "
            f"{transparency.BLOCK} further leaves were received before {before.isoformat()} "
            f"and signed (newest head: {head.tree_size} leaves)"
        )
    return Plan(start=start, end=end, head=head, edge=edge)


def _heads(plan: Plan) -> list[SignedTreeHead]:
    """Heads from the newest one of at most ``start`` leaves through ``plan.head``."""
    heads = SignedTreeHead.objects.filter(id__lte=plan.head.id).order_by("id")
    anchor = heads.filter(tree_size__lte=plan.start).order_by("-id").first()
    if plan.start and anchor is not None:
        heads = heads.filter(id__gte=anchor.id)
    return list(heads)


def segment_records(plan: Plan, *, progress: bool = False) -> Iterator[dict[str, Any]]:
    yield {
        "type": "segment",
        "version": SEGMENT_VERSION,
        "start": plan.start,
        "end": plan.end,
        "root": transparency.root(plan.end).hex(),
        "edge": hexes(plan.edge),
        "archived_at": timezone.now().isoformat(),
    }
    for head in _heads(plan):
        yield {"type": "head", **head.document()}
    yield {
        "type": "consistency",
        "from": plan.end,
        "to": plan.head.tree_size,
        "proof": transparency.consistency_proof(plan.end, plan.head.tree_size),
    }
    events = (
        ActionEvent.objects.filter(leaf_index__gte=plan.start, leaf_index__lt=plan.end)
        .order_by("leaf_index")
        .iterator(chunk_size=READ_CHUNK)
    )
    for event in tqdm(events, total=plan.end - plan.start, unit="event", disable=not progress):
        yield {"type": "event", **event_document(event), "leaf_index": event.leaf_index}


def write_segment(plan: Plan, directory: Path, *, progress: bool = False) -> tuple[Path, str]:
    """Write the segment file (fsynced); returns its path and SHA-256."""
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise ArchiveRefused(f"{directory} is not a writable directory")
    path = directory / f"segment-{plan.start}-{plan.end}.jsonl"
    if path.exists():
        raise ArchiveRefused(f"{path} exists already")
    digest = hashlib.sha256()
    try:
        with path.open("x", encoding="utf-8") as out:
            for record in segment_records(plan, progress=progress):
                line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
                digest.update(line.encode("utf-8"))
                out.write(line)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise ArchiveRefused(f"cannot write {path}: {exc.strerror}") from exc
    except transparency.TreeDamaged:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest()


def verify_file(path: Path, *, progress: bool = False) -> SegmentReport:
    """Verify a written segment with the SDK, with the registry's public keys."""
    with path.open(encoding="utf-8") as lines:
        return verify_segment(
            read_records(lines, str(path)), signing.all_public_keys(), progress=progress
        )


def archive(before: datetime, directory: Path, *, progress: bool | None = None) -> Outcome:
    """Archive the leaves received before ``before`` into ``directory``; see the module doc."""
    if progress is None:
        progress = sys.stderr.isatty()
    partitions.ensure_partitions()
    try:
        chosen = plan(before)
        path, sha256 = write_segment(chosen, directory, progress=progress)
    except transparency.TreeDamaged as exc:
        raise ArchiveRefused(f"the log is damaged ({exc}); run manage.py verify_audit") from exc
    try:
        report = verify_file(path, progress=progress)
        problems = report.problems
    except SegmentError as exc:
        problems = [str(exc)]
    if problems:  # the log itself is damaged: verify_audit names what changed
        path.unlink()
        raise ArchiveRefused(
            f"the segment did not verify ({'; '.join(problems)}); removed it, nothing was dropped"
        )
    with transaction.atomic():
        # the tree lock: no head is signed and no other archive runs until this commits
        list(LogCounter.objects.select_for_update().filter(name=LogCounter.TREE_SIZE))
        if transparency.live_start()[0] != chosen.start:
            raise ArchiveRefused("another archive ran meanwhile; nothing was dropped")
        segment = ArchivedSegment.objects.create(
            start_leaf=chosen.start,
            end_leaf=chosen.end,
            root_hash=report.root,
            head=chosen.head,
            archived_at=timezone.now(),
            location=str(path.resolve()),
            sha256=sha256,
        )
        outcome = Outcome(segment=segment, report=report)
        for partition in partitions.partitions():
            if partition.end is None or partition.end > before:
                continue
            if partitions.holds_leaves_from(partition, chosen.end):
                outcome.kept.append(partition.name)
            else:
                partitions.drop(partition)
                outcome.dropped.append(partition.name)
    return outcome
