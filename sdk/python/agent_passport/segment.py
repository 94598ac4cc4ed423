"""Archived segments of the action log (``manage.py archive_audit``), verified offline.

A segment file is JSONL:
- ``{"type": "segment", "version": 1, "start": S, "end": N, "root": root(N), "edge": [...]}``
  where ``edge`` holds the hashes of ``perfect_ranges(0, S)`` (the tree before the segment; empty
  for S = 0), so the root of the first N leaves can be recomputed from the segment alone;
- ``{"type": "head", ...}`` the signed tree heads from the newest one of at most S leaves up to
  the newest head when archived, in signing order (each names the previous one);
- ``{"type": "consistency", "from": N, "to": H, "proof": [...]}``: root(N) is a prefix of the
  newest head's tree, which the live log continues (its consistency proofs start there);
- one ``{"type": "event", ...}`` per leaf S..N-1 in leaf order (event documents with
  ``leaf_index``), streamed last so heads inside the segment are checked on the way.

Only the newest head needs a key of the JWKS; older heads are authenticated by the prev chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tqdm import tqdm

from agent_passport.audit import GENESIS, event_hash
from agent_passport.merkle import (
    CompactTree,
    head_id,
    leaf_hash,
    perfect_ranges,
    unhex,
    verify_consistency,
    verify_head,
)

SEGMENT_VERSION = 1


class SegmentError(ValueError):
    """The file is not a segment (unreadable line, missing header)."""


@dataclass
class SegmentReport:
    start: int = 0
    end: int = 0
    root: str = ""
    start_root: str = ""  # root of the first ``start`` leaves: the previous segment's root
    events: int = 0
    heads: int = 0
    newest_head: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"leaves {self.start}..{self.end} ({self.events} event(s), {self.heads} head(s)), "
            f"consistent with the head of size {self.newest_head}"
        )


def read_records(lines: Iterable[str], name: str = "segment") -> Iterable[dict[str, Any]]:
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise SegmentError(f"{name}:{number} is not JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise SegmentError(f"{name}:{number} is not a JSON object")
        yield record


class _Checker:
    """Streams the events of a segment into the tree, checking the heads' roots on the way."""

    def __init__(
        self, header: Mapping[str, Any], heads: list[Mapping[str, Any]], report: SegmentReport
    ) -> None:
        self.report = report
        start, end = header.get("start"), header.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
            raise SegmentError("the segment header has no valid start/end")
        report.start, report.end, report.root = start, end, str(header.get("root"))
        try:
            edge = unhex(header.get("edge") or [])
        except ValueError as exc:
            raise SegmentError(f"the segment header's edge is malformed ({exc})") from exc
        if len(edge) != len(perfect_ranges(0, start)):
            raise SegmentError(f"the segment header's edge does not fit {start} leaves")
        self.tree = CompactTree.from_edge(start, edge)
        report.start_root = self.tree.root().hex() if start else ""
        self.heads: dict[int, list[str]] = {}  # size -> roots the heads of that size name
        for head in heads:
            size = head.get("tree_size")
            if isinstance(size, int) and start < size <= end:
                self.heads.setdefault(size, []).append(str(head.get("root")))
        self.chains: dict[str, tuple[int, str]] = {}  # agent -> (seq, hash) of its last event

    def problem(self, text: str) -> None:
        if len(self.report.problems) < 20:
            self.report.problems.append(text)

    def event(self, event: Mapping[str, Any]) -> None:
        index = self.tree.size
        name = f"leaf {index}: event {event.get('id')}"
        if event.get("leaf_index") != index:
            self.problem(f"{name} has leaf_index {event.get('leaf_index')!r}")
        try:
            recomputed = event_hash(event)
        except (KeyError, TypeError, ValueError) as exc:
            self.problem(f"{name} is malformed ({exc})")
            recomputed = ""
        if recomputed != event.get("hash"):
            self.problem(f"{name} was edited: its content no longer matches its hash")
        agent, seq = str(event.get("agent")), event.get("seq")
        previous = self.chains.get(agent)
        if previous is not None and (seq != previous[0] + 1 or event.get("prev") != previous[1]):
            self.problem(f"{name} does not follow its agent's previous event")
        elif previous is None and seq == 1 and event.get("prev") != GENESIS:
            self.problem(f"{name} starts its agent's chain but does not name GENESIS")
        self.chains[agent] = (seq if isinstance(seq, int) else -1, str(event.get("hash")))
        self.tree.append(leaf_hash(str(event.get("hash"))))
        self.report.events += 1
        roots = self.heads.get(self.tree.size)
        if roots and any(value != self.tree.root().hex() for value in roots):
            self.problem(f"the signed head of size {self.tree.size} does not match the events")


def verify_segment(
    records: Iterable[Mapping[str, Any]],
    keys: Mapping[str, Ed25519PublicKey],
    *,
    progress: bool = False,
) -> SegmentReport:
    """Recompute every event hash and the tree of the segment; check the heads (chain,
    signatures, the roots of those inside the segment) and the consistency proof from the
    segment's root to the newest head."""
    report = SegmentReport()
    records = iter(records)
    header = next(records, None)
    if header is None or header.get("type") != "segment":
        raise SegmentError("the file does not start with a segment header")
    if header.get("version") != SEGMENT_VERSION:
        raise SegmentError(f"unknown segment version {header.get('version')!r}")
    heads: list[Mapping[str, Any]] = []
    consistency: Mapping[str, Any] | None = None
    checker: _Checker | None = None
    bar: tqdm[Any] | None = None
    for record in records:
        kind = record.get("type")
        if kind == "head" and checker is None:
            heads.append(record)
        elif kind == "consistency" and checker is None:
            consistency = record
        elif kind == "event":
            if checker is None:
                checker = _Checker(header, heads, report)
                bar = tqdm(total=report.end - report.start, unit="event", disable=not progress)
            checker.event(record)
            if bar is not None:
                bar.update()
        else:
            raise SegmentError(f"unexpected {kind!r} record in the segment")
    if bar is not None:
        bar.close()
    if checker is None:
        checker = _Checker(header, heads, report)
    if checker.tree.size != report.end:
        checker.problem(f"the segment ends at leaf {checker.tree.size}, not {report.end}")
    elif checker.tree.root().hex() != report.root:
        checker.problem("the events do not hash to the segment's root")
    _check_heads(heads, keys, checker)
    _check_consistency(consistency, heads, checker)
    return report


def _check_heads(
    heads: list[Mapping[str, Any]], keys: Mapping[str, Ed25519PublicKey], checker: _Checker
) -> None:
    """The newest head must verify with the JWKS; older ones are authenticated by the prev
    chain (a known key with a bad signature is still a problem)."""
    report = checker.report
    report.heads = len(heads)
    if not heads:
        checker.problem("the segment has no signed tree head")
        return
    previous: Mapping[str, Any] | None = None
    for position, head in enumerate(heads):
        size = head.get("tree_size")
        newest = position == len(heads) - 1
        if newest or head.get("kid") in keys:
            problem = verify_head(head, keys)
            if problem:
                checker.problem(problem)
        if previous is None:
            if report.start == 0 and head.get("prev") != GENESIS:
                checker.problem(f"the first tree head (size {size}) does not start the log")
        elif head.get("prev") != head_id(previous):
            checker.problem(
                f"tree head of size {size} does not follow head {previous.get('tree_size')} "
                "(a head was deleted, inserted or rewritten)"
            )
        previous = head
    report.newest_head = int(heads[-1].get("tree_size") or 0)


def _check_consistency(
    consistency: Mapping[str, Any] | None, heads: list[Mapping[str, Any]], checker: _Checker
) -> None:
    report = checker.report
    if consistency is None or not heads:
        checker.problem("the segment has no consistency proof to a signed head")
        return
    newest = heads[-1]
    if consistency.get("from") != report.end or consistency.get("to") != newest.get("tree_size"):
        checker.problem("the consistency proof does not link the segment to its newest head")
        return
    try:
        proof = unhex(consistency.get("proof") or [])
        linked = verify_consistency(
            report.end,
            int(newest["tree_size"]),
            bytes.fromhex(report.root),
            bytes.fromhex(newest["root"]),
            proof,
        )
    except (KeyError, TypeError, ValueError):
        linked = False
    if not linked:
        checker.problem(
            f"the segment's root is not a prefix of the head of size {newest.get('tree_size')}"
        )
