"""Verifying an action log in one streaming pass: on the registry (its database) and offline (an
export, with nothing but the registry's JWKS). Memory grows with the number of agents,
checkpoints and witness heads, never with the number of events.

What is checked:
- the global Merkle tree (:mod:`agent_passport.merkle`): leaves dense in leaf-index order, the
  root recomputed at every signed head's size and compared with it (an edit with recomputed
  hashes, an insert, a delete or a reorder changes the root), and at every witness head's size;
- the heads: each names the previous one (a deleted head breaks the chain of the next); the
  newest is signed by a key of the JWKS and vouches for the older ones through the chain (a bad
  signature by a known key is still a problem); two different heads for one size are a split
  view; a witness head the log does not have is named (deleted, or a rollback);
- the per-agent chains and their signed checkpoints (:mod:`agent_passport.audit`);
- a filtered export (some agents only) cannot recompute the tree: each of its events carries its
  inclusion proof in the export's newest head instead.
Events beyond the newest signed head are counted as not yet covered, never as verified.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_passport.audit import GENESIS, ChainReport, ChainWalk, verify_checkpoint
from agent_passport.merkle import (
    CompactTree,
    head_id,
    leaf_hash,
    unhex,
    verify_head,
    verify_inclusion,
)

PROBLEM_LIMIT = 100
BLOCK = 256  # leaves in the smallest subtree the registry stores (actions.transparency)
PROGRESS_STEP = 1000  # events between progress updates
Keys = Mapping[str, Ed25519PublicKey]


class Progress(Protocol):
    """What a progress bar needs to offer (tqdm does)."""

    total: float | None

    def update(self, n: float = 1) -> bool | None: ...

    def refresh(self) -> None: ...


def note(report: ChainReport, problem: str) -> None:
    """Record a problem (the first PROBLEM_LIMIT of them: a rewritten log has one per event)."""
    if len(report.problems) < PROBLEM_LIMIT:
        report.problems.append(problem)
    elif len(report.problems) == PROBLEM_LIMIT:
        report.problems.append("(more problems not listed)")


def head_shape(head: Any) -> str | None:
    """Why a head document is malformed, or None."""
    if not isinstance(head, Mapping):
        return "a tree head is not a JSON object"
    size = head.get("tree_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"tree head of size {size!r} is malformed (tree_size)"
    root = head.get("root")
    if not isinstance(root, str) or len(root) != 64 or not _is_hex(root):
        return f"tree head of size {size} is malformed (root)"
    for name in ("at", "prev", "kid", "signature"):
        if not isinstance(head.get(name), str):
            return f"tree head of size {size} is malformed ({name})"
    return None


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Expectation:
    """The root the tree must have at ``size`` leaves, and who says so."""

    size: int
    root: str
    source: str  # "signed head" or "witness head"


SIGNED = "signed head"
WITNESS = "witness head"


class HeadChain:
    """The log's signed tree heads, in the order they were signed."""

    def __init__(self, keys: Keys, report: ChainReport) -> None:
        self.keys, self.report = keys, report
        self.newest: Mapping[str, Any] | None = None

    def add(self, head: Mapping[str, Any]) -> bool:
        """Check one head against the one before; False if it is malformed (and skipped)."""
        self.report.heads += 1
        malformed = head_shape(head)
        if malformed:
            note(self.report, malformed)
            return False
        previous, size = self.newest, head["tree_size"]
        if head["prev"] != (GENESIS if previous is None else head_id(previous)):
            what = "the first head" if previous is None else f"head {previous['tree_size']}"
            note(
                self.report,
                f"tree head of size {size} does not follow {what} "
                "(a head was deleted, inserted or rewritten)",
            )
        if previous is not None and size < previous["tree_size"]:
            note(
                self.report,
                f"tree head of size {size} is smaller than the head of size "
                f"{previous['tree_size']} before it (the log was rolled back)",
            )
        if head["kid"] in self.keys:  # older keys may be gone: the chain vouches for those
            bad = verify_head(head, self.keys)
            if bad:
                note(self.report, bad)
        self.newest = head
        return True

    def finish(self) -> Mapping[str, Any] | None:
        """The newest head (it must be signed by a current key), or None if there is none."""
        newest = self.newest
        if newest is not None:
            if newest["kid"] not in self.keys:
                note(
                    self.report,
                    f"the newest tree head (size {newest['tree_size']}) is signed by unknown "
                    f"key {newest['kid']!r}: the heads cannot be authenticated",
                )
            self.report.signed_size = newest["tree_size"]
        return newest


class TreeCheck:
    """Recomputes the tree from leaves given in leaf-index order and compares its root with
    every expectation (sorted by size) when it reaches that size."""

    def __init__(
        self,
        report: ChainReport,
        expectations: Iterable[Expectation],
        *,
        start: int = 0,
        edge: Sequence[bytes] = (),
        blocks: Iterable[tuple[int, str]] = (),
    ) -> None:
        """``blocks``: ``(index, hash)`` of stored subtrees of ``BLOCK`` leaves, ascending (the
        registry's, written when the leaves were added): a rewrite is then named to the block."""
        self.report = report
        self.tree = CompactTree.from_edge(start, edge) if start else CompactTree()
        self.start = start
        self.matched = start  # the largest size whose root matched
        self.gap = False  # a leaf is missing or out of place: the tree cannot be recomputed
        self.diverged = False  # a root did not match: later roots cannot match either
        self._pending: Iterator[Expectation] = iter(expectations)
        self._next = next(self._pending, None)
        self._last_signed: Expectation | None = None
        self._blocks: Iterator[tuple[int, str]] = iter(blocks)
        self._block = next(self._blocks, None)
        self._block_tree = CompactTree()
        self._settle()

    def add(self, event: Mapping[str, Any]) -> None:
        if self.gap:
            return
        index, size, name = event.get("leaf_index"), self.tree.size, event.get("id")
        if not isinstance(index, int) or isinstance(index, bool):
            note(self.report, f"event {name} has no leaf index")
        elif index > size:
            note(self.report, f"leaf {size} is missing (its event was deleted) before event {name}")
        elif index < size:
            note(
                self.report,
                f"event {name} has leaf index {index} where {size} was expected "
                "(inserted or reordered)",
            )
        else:
            try:
                leaf = leaf_hash(event.get("hash"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                note(self.report, f"event {name} (leaf {index}) has a malformed hash")
            else:
                self.tree.append(leaf)
                if self._block is not None:
                    self._check_block(leaf)
                self._settle()
                return
        self.gap = True

    def _check_block(self, leaf: bytes) -> None:
        """Compare each completed block of leaves with its stored subtree (the first difference
        only: the heads tell the rest)."""
        self._block_tree.append(leaf)
        if self._block_tree.size < BLOCK:
            return
        block, root = (self.tree.size - 1) // BLOCK, self._block_tree.root().hex()
        self._block_tree = CompactTree()
        while self._block is not None and self._block[0] < block:
            self._block = next(self._blocks, None)
        if self._block is None or self._block[0] != block:
            return
        if root != self._block[1]:
            first = block * BLOCK
            note(
                self.report,
                f"leaves {first}..{first + BLOCK - 1} differ from the subtree stored when they "
                "were added (among them an event was edited with a recomputed hash, inserted, "
                "deleted or reordered)",
            )
            self._block = None

    def _settle(self) -> None:
        while self._next is not None and self._next.size <= self.tree.size:
            self._check(self._next)
            self._next = next(self._pending, None)

    def _split_view(self, expected: Expectation) -> None:
        if expected.source != SIGNED:
            return
        last = self._last_signed
        if last is not None and last.size == expected.size and last.root != expected.root:
            note(
                self.report,
                f"two different signed heads for size {expected.size} (split view): roots "
                f"{last.root[:16]}… and {expected.root[:16]}…",
            )
        self._last_signed = expected

    def _check(self, expected: Expectation) -> None:
        self._split_view(expected)
        size = expected.size
        if size < self.start or self.diverged or size != self.tree.size:
            return  # archived (checked with its segment), or already reported
        if self.tree.root().hex() == expected.root:
            self.matched = size
            return
        self.diverged = True
        if size == self.start:
            note(
                self.report,
                f"the stored subtrees of the archived leaves 0..{size - 1} do not match the "
                f"{expected.source} of size {size}",
            )
            return
        note(
            self.report,
            f"the first {size} leaves do not match the {expected.source} of size {size} "
            f"(among leaves {self.matched}..{size - 1} an event was edited with a recomputed "
            "hash, inserted, deleted or reordered)",
        )

    def finish(self) -> None:
        """Expectations beyond the leaves there are: the log's tail was cut."""
        size, told = self.tree.size, self.gap or self.diverged
        while self._next is not None:
            expected = self._next
            self._split_view(expected)
            if not told:
                note(
                    self.report,
                    f"the {expected.source} of size {expected.size} covers {expected.size} "
                    f"leaves but the log has only {size} (leaf {size} and later were deleted: "
                    "truncation)",
                )
                told = True
            self._next = next(self._pending, None)
        self.report.tree_size = size


class _Chain:
    def __init__(self, walk: ChainWalk, mark: Mapping[str, Any] | None) -> None:
        self.walk = walk
        self.mark = mark  # the newest checkpoint, until the chain reaches it
        self.rewritten = False


class Checkpoints:
    """Every checkpoint's signature checked; each agent's newest one kept, to be compared with
    its chain (the hash at its count commits to every event before it, so older checkpoints
    could add nothing): memory per agent, not per checkpoint."""

    def __init__(self, keys: Keys, report: ChainReport) -> None:
        self.keys, self.report = keys, report
        self.newest: dict[str, Mapping[str, Any]] = {}

    def add(self, checkpoint: Mapping[str, Any]) -> None:
        self.report.checkpoints += 1
        bad = verify_checkpoint(checkpoint, self.keys)
        count = checkpoint.get("count")
        if bad is None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            bad = f"checkpoint {checkpoint.get('agent')}#{count} is malformed (count)"
        if bad:
            note(self.report, bad)
            return
        agent = str(checkpoint.get("agent"))
        newest = self.newest.get(agent)
        if newest is None or checkpoint["count"] >= newest["count"]:
            self.newest[agent] = checkpoint


class LogVerifier:
    """Events in leaf-index order, checked against each agent's newest checkpoint and against
    the tree (``tree``) or, for a filtered log, against inclusion proofs in ``included_in``."""

    def __init__(
        self,
        report: ChainReport,
        checkpoints: Checkpoints,
        *,
        tree: TreeCheck | None = None,
        included_in: Mapping[str, Any] | None = None,
        resume: bool = False,
    ) -> None:
        self.report, self.tree = report, tree
        self.included_in = included_in
        self.resume = resume  # older events were archived: chains may start mid-way
        self.chains: dict[str, _Chain] = {}
        self.marks = dict(checkpoints.newest)

    def event(self, event: Mapping[str, Any]) -> None:
        self.report.events += 1
        agent = str(event.get("agent"))
        chain = self.chains.get(agent)
        if chain is None:
            chain = self.chains[agent] = self._start(agent, event)
        problem = chain.walk.step(event)
        if problem:
            note(self.report, problem)
        elif chain.walk.problem is None:
            self._reached(chain)
        if self.tree is not None:
            self.tree.add(event)
        else:
            self._prove(event)

    def _start(self, agent: str, event: Mapping[str, Any]) -> _Chain:
        seq, prev = event.get("seq"), event.get("prev")
        if self.resume and isinstance(seq, int) and seq > 1 and isinstance(prev, str):
            walk = ChainWalk(agent, seq, prev)  # its start is vouched for by the tree
        else:
            walk = ChainWalk(agent)
        chain = _Chain(walk, self.marks.pop(agent, None))
        self._reached(chain)
        return chain

    def _reached(self, chain: _Chain) -> None:
        """Compare the newest checkpoint with the chain's head once the chain reaches it."""
        walk, mark = chain.walk, chain.mark
        if mark is None or mark["count"] > walk.last_seq:
            return
        chain.mark = None
        if mark["count"] == walk.last_seq and mark["count"] and mark["head"] != walk.head:
            chain.rewritten = True
            note(
                self.report,
                f"agent {walk.agent}: the chain up to seq {walk.last_seq} differs from the "
                "signed checkpoint (events were rewritten)",
            )

    def _prove(self, event: Mapping[str, Any]) -> None:
        index, name, head = event.get("leaf_index"), event.get("id"), self.included_in
        if not isinstance(index, int) or isinstance(index, bool):
            note(self.report, f"event {name} has no leaf index")
            return
        if head is None or index >= head["tree_size"]:
            self.report.unsigned_events += 1
            return
        try:
            proof = event.get("proof")
            if not isinstance(proof, list):
                raise ValueError("no proof")
            included = verify_inclusion(
                leaf_hash(event.get("hash")),  # type: ignore[arg-type]
                index,
                head["tree_size"],
                unhex(proof),
                bytes.fromhex(head["root"]),
            )
        except (TypeError, ValueError):
            note(self.report, f"event {name} (leaf {index}) carries no valid inclusion proof")
            return
        if included:
            self.report.proven += 1
        else:
            note(
                self.report,
                f"event {name} (leaf {index}) is not in the signed head of size "
                f"{head['tree_size']}: its inclusion proof fails (edited, or not in the log)",
            )

    def finish(self) -> ChainReport:
        report = self.report
        for agent, newest in self.marks.items():  # chains with checkpoints, no events left
            self.chains[agent] = _Chain(ChainWalk(agent), newest)
        report.chains = len(self.chains)
        for chain in self.chains.values():
            walk, mark = chain.walk, chain.mark
            if mark is None or walk.problem or (self.resume and not walk.count):
                continue  # reached, broken before it, or the whole chain was archived
            note(
                report,
                f"agent {walk.agent}: checkpoint says {mark['count']} events but only "
                f"{walk.last_seq} remain (event seq {walk.last_seq + 1} and later were deleted)",
            )
        if self.tree is not None:
            self.tree.finish()
            report.unsigned_events = max(0, report.tree_size - report.signed_size)
        return report


class WitnessCheck:
    """Heads a witness holds outside the log, against the log's own heads (fed with
    :meth:`see` as the log's heads go by): each must be authentic and in the log; the log's
    tree must have the witness head's root at its size (see :meth:`expectations`).

    ``as_of``: when the log was read (an export's ``exported_at``); witness heads signed later
    cannot be in it and are left out (same ISO format: the strings compare as times)."""

    def __init__(
        self,
        heads: Sequence[Mapping[str, Any]],
        keys: Keys,
        report: ChainReport,
        *,
        as_of: str | None = None,
    ) -> None:
        heads = [head for head in heads if as_of is None or head["at"] <= as_of]
        self.heads = sorted(heads, key=lambda head: head["tree_size"])
        self.keys, self.report = keys, report
        self.ids = {head_id(head) for head in self.heads}
        self.sizes = {head["tree_size"] for head in self.heads}
        self.in_log: set[str] = set()
        self.log_roots: dict[int, set[str]] = defaultdict(set)
        self.newest_size = 0

    def see(self, head: Mapping[str, Any]) -> None:
        """One of the log's heads."""
        identity = head_id(head)
        if identity in self.ids:
            self.in_log.add(identity)
        if head["tree_size"] in self.sizes:
            self.log_roots[head["tree_size"]].add(head["root"])

    def finish(self, newest: Mapping[str, Any] | None) -> None:
        self.report.witnessed = len(self.heads)
        self.newest_size = newest["tree_size"] if newest is not None else 0
        vouched: set[str] = set()  # named as prev by an authentic witness head
        for head in reversed(self.heads):
            identity = head_id(head)
            bad = verify_head(head, self.keys)
            if bad and (head["kid"] in self.keys or identity not in self.in_log | vouched):
                note(self.report, f"witness: {bad}")
                continue
            vouched.add(head["prev"])
        for head in self.heads:
            size, root = head["tree_size"], head["root"]
            if head_id(head) in self.in_log:
                continue
            roots = self.log_roots.get(size)
            if roots and root not in roots:
                note(
                    self.report,
                    f"split view: the witness holds a head of size {size} with root "
                    f"{root[:16]}…, the log's head of that size has root "
                    f"{sorted(roots)[0][:16]}…",
                )
            elif size > self.newest_size:
                note(
                    self.report,
                    f"rollback/truncation to an older head: the witness holds a head of size "
                    f"{size} (at {head['at']}), the log's newest head is of size "
                    f"{self.newest_size}",
                )
            else:
                note(
                    self.report,
                    f"the witness head of size {size} (at {head['at']}) is missing from the "
                    "log's chain of heads (a head was deleted or replaced)",
                )

    def expectations(self) -> list[Expectation]:
        """Witness roots the log's tree must have (up to the log's newest head)."""
        return [
            Expectation(head["tree_size"], head["root"], WITNESS)
            for head in self.heads
            if head["tree_size"] <= self.newest_size
        ]


def read_heads(lines: Iterable[str], where: str) -> list[dict[str, Any]]:
    """A witness file: one head document per line. ValueError names a line that is not one."""
    heads = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            head = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{where}:{number} is not JSON ({exc})") from exc
        malformed = head_shape(head)
        if malformed:
            raise ValueError(f"{where}:{number}: {malformed}")
        heads.append(head)
    return heads


# -- exports (GET /api/v1/actions/export?format=jsonl) ---------------------------------------
EVENT_PREFIX = '{"type": "event"'  # how the registry writes event lines (parsed once, in pass 2)


class ExportError(ValueError):
    """An export file that cannot be read; the message is for the user."""


@dataclass
class Export:
    """An export's header, heads and event count (a first pass; events stream later)."""

    header: dict[str, Any]
    heads: list[dict[str, Any]]
    events: int


def _records(path: str) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as lines:
            yield from enumerate(lines, 1)
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path} is not UTF-8 text ({exc.reason})") from exc


def _parse(path: str, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise ExportError(f"{path}:{number} is not JSON ({exc})") from exc


def _kind(record: Any) -> Any:
    return record.pop("type", None) if isinstance(record, dict) else None


def scan_export(path: str, checkpoints: Checkpoints) -> Export:
    """First pass: the header, the heads, how many events there are; checkpoints go to
    ``checkpoints``."""
    export = Export(header={}, heads=[], events=0)
    for number, line in _records(path):
        if line.startswith(EVENT_PREFIX):
            export.events += 1
            continue
        if not line.strip():
            continue
        record = _parse(path, number, line)
        kind = _kind(record)
        if kind == "event":
            export.events += 1
        elif kind == "head":
            export.heads.append(record)
        elif kind == "checkpoint":
            checkpoints.add(record)
        elif kind == "export":
            export.header = record
    return export


def export_events(path: str) -> Iterator[dict[str, Any]]:
    """Second pass: the events, in file order."""
    for number, line in _records(path):
        if line.strip():
            record = _parse(path, number, line)
            if _kind(record) == "event":
                yield record


def _live_start(header: Mapping[str, Any], report: ChainReport) -> tuple[int, list[bytes]]:
    """Where the export's events begin (leaves before it were archived: chains resume there)
    and the subtrees to resume the tree from; the signed heads vouch for them (a wrong edge
    changes the root)."""
    start, edge = header.get("start", 0), header.get("edge", [])
    try:
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise ValueError("start")
        if not isinstance(edge, list):
            raise ValueError("edge")
        nodes = unhex(edge)
        CompactTree.from_edge(start, nodes)
    except ValueError:
        note(report, "the export's header is malformed (start, edge)")
        return 0, []
    return start, nodes


def verify_export(
    path: str,
    keys: Keys,
    *,
    witness: Sequence[Mapping[str, Any]] = (),
    progress: Progress | None = None,
) -> ChainReport:
    """Verify an export offline. A full export recomputes the tree and checks it against every
    head; a filtered one checks each event's inclusion proof in the newest head."""
    report = ChainReport()
    checkpoints = Checkpoints(keys, report)
    export = scan_export(path, checkpoints)
    chain = HeadChain(keys, report)
    exported_at = export.header.get("exported_at")
    as_of = exported_at if isinstance(exported_at, str) else None
    witnesses = WitnessCheck(witness, keys, report, as_of=as_of)
    signed = []
    for head in export.heads:
        if chain.add(head):
            witnesses.see(head)
            signed.append(Expectation(head["tree_size"], head["root"], SIGNED))
    newest = chain.finish()
    witnesses.finish(newest)
    start, edge = _live_start(export.header, report)
    tree = None
    if export.header.get("scope") != "filtered":
        signed.sort(key=lambda expected: expected.size)
        expectations = heapq.merge(signed, witnesses.expectations(), key=lambda e: e.size)
        tree = TreeCheck(report, expectations, start=start, edge=edge)
    verifier = LogVerifier(report, checkpoints, tree=tree, included_in=newest, resume=start > 0)
    feed(verifier, export_events(path), export.events, progress)
    return verifier.finish()


def feed(
    verifier: LogVerifier,
    events: Iterable[Mapping[str, Any]],
    total: int,
    progress: Progress | None,
) -> None:
    """Events into the verifier, advancing the progress bar (if any) every PROGRESS_STEP."""
    if progress is not None:
        progress.total = total
        progress.refresh()
    done = 0
    for done, event in enumerate(events, 1):
        verifier.event(event)
        if progress is not None and not done % PROGRESS_STEP:
            progress.update(PROGRESS_STEP)
    if progress is not None:
        progress.update(done % PROGRESS_STEP)
