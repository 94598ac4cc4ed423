"""Read queries for the action log, with validated filters, and of the copies of an agent."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, QuerySet
from django.utils import timezone
from rest_framework.exceptions import NotFound

from actions import audit, transparency
from actions.lookups import GlobMatch
from actions.models import ActionEvent, AgentCopy, ArchivedSegment, SignedTreeHead
from agent_passport.errors import RuleError
from agent_passport.rules import parse_rule
from passports.models import Agent
from registry.errors import RequestRejected, StateConflict
from registry.params import MAX_DATABASE_ID, agent_id, moment

# An agent that posted a heartbeat this recently counts as running.
RUNNING_WITHIN = timedelta(seconds=30)
MAX_COPIES_LISTED = 100  # per agent, newest first


def matching_pattern(queryset: QuerySet[ActionEvent], pattern: str) -> QuerySet[ActionEvent]:
    """Filter by a pattern in the scope-rule grammar (``net:*``, ``proc:exec:*miner*``),
    matched in linear time (see :mod:`actions.lookups`)."""
    try:
        rule = parse_rule(pattern)
    except RuleError as exc:
        raise RequestRejected("action", str(exc)) from exc
    if rule.deny:
        raise RequestRejected("action", "a filter pattern cannot start with '!'")
    if rule.domain != "*":
        queryset = queryset.filter(action__startswith=f"{rule.domain}:")
    if rule.action != "*":
        queryset = queryset.filter(action__endswith=f":{rule.action}")
    if rule.resource is not None:
        queryset = queryset.filter(GlobMatch(F("resource"), rule.resource.text))
    return queryset


def action_events(
    *,
    agent: str | None = None,
    fleet: str | None = None,
    decision: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> QuerySet[ActionEvent]:
    queryset = ActionEvent.objects.all()
    if agent:
        queryset = queryset.filter(agent_id=agent_id(agent))
    if fleet:
        queryset = queryset.filter(fleet=fleet)
    if decision:
        if decision not in ActionEvent.Decision.values:
            raise RequestRejected("decision", "must be allow or deny")
        queryset = queryset.filter(decision=decision)
    if action:
        queryset = matching_pattern(queryset, action)
    if since:
        queryset = queryset.filter(occurred_at__gte=moment(since, "since"))
    if until:
        queryset = queryset.filter(occurred_at__lt=moment(until, "until"))
    return queryset


def agents_for_export(*, agent: str | None, fleet: str | None) -> QuerySet[Agent] | None:
    """Which agents' whole chains to export (None: everyone's)."""
    if not agent and not fleet:
        return None
    queryset = Agent.objects.all()
    if agent:
        queryset = queryset.filter(pk=agent_id(agent))
    if fleet:
        queryset = queryset.filter(fleet=fleet)
    return queryset


@dataclass(frozen=True)
class TreeStop:
    """How a supervisor stopped its process tree."""

    cause: str  # revoked, expired or stale
    epoch: int | None  # the revocation epoch that caused it (None: expiry or stale state)
    processes: int  # processes it stopped
    sigkilled: int  # of those, how many needed SIGKILL after the grace period
    at: datetime  # when the last one was gone


@dataclass(frozen=True)
class CopyStatus:
    """One copy of an agent (a process that posts heartbeats), as its last heartbeats left it."""

    host: str
    pid: int
    last_seen_at: datetime
    running: bool  # reported within RUNNING_WITHIN and its tree (if supervised) not final
    epoch: int | None
    supervised: bool
    mechanism: str
    state: str  # the supervisor's tree: running, paused, stopped, exited ("" in-process)
    processes: int | None
    stopped: TreeStop | None


def tree_stop(copy: AgentCopy) -> TreeStop | None:
    if copy.stopped_at is None:
        return None
    return TreeStop(
        cause=copy.stopped_cause,
        epoch=copy.stopped_epoch,
        processes=copy.stopped_processes or 0,
        sigkilled=copy.stopped_sigkilled or 0,
        at=copy.stopped_at,
    )


def copy_status(copy: AgentCopy, *, now: datetime) -> CopyStatus:
    return CopyStatus(
        host=copy.host,
        pid=copy.pid,
        last_seen_at=copy.last_seen_at,
        running=copy.last_seen_at >= now - RUNNING_WITHIN
        and copy.state not in AgentCopy.FINAL_STATES,
        epoch=copy.last_seen_epoch,
        supervised=copy.supervised,
        mechanism=copy.mechanism,
        state=copy.state,
        processes=copy.processes,
        stopped=tree_stop(copy),
    )


def agent_copies(agent: Agent, *, limit: int = MAX_COPIES_LISTED) -> list[CopyStatus]:
    """The agent's copies still remembered (see AGENT_COPY_RETENTION_SECONDS), newest first."""
    now = timezone.now()
    copies = agent.copies.order_by("-last_seen_at", "host", "pid")
    return [copy_status(copy, now=now) for copy in copies[:limit]]


# -- the transparency log: heads and proofs (GET /api/v1/audit/..., /actions/{id}/proof) ---------
MAX_HEADS_LISTED = 1000
DEFAULT_HEADS_LISTED = 100


class NotYetCovered(StateConflict):
    """The event has a leaf but no signed head covers it yet: ask again after the next head."""


class Archived(RequestRejected):
    """The proof needs leaves that archive_audit moved out of the database."""

    status_code = 410
    reason = "archived"


class LogDamaged(RequestRejected):
    """A leaf or stored subtree a proof needs is missing (transparency.TreeDamaged): the log was
    tampered with. 503: the registry cannot answer; retrying does not help until it is repaired."""

    status_code = 503
    reason = "tree_damaged"


def size_param(
    value: str | None, field: str, *, default: int | None = None, minimum: int = 0
) -> int:
    """A non-negative integer query parameter (ASCII digits), or a 400 naming it."""
    if value is None or value == "":
        if default is None:
            raise RequestRejected(field, "is required")
        return default
    digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_DATABASE_ID))
    if not digits or int(value) > MAX_DATABASE_ID:
        raise RequestRejected(field, "must be a non-negative integer")
    if int(value) < minimum:
        raise RequestRejected(field, f"must be at least {minimum}")
    return int(value)


def latest_head() -> dict[str, Any]:
    head = transparency.latest_head()
    if head is None:
        raise NotFound("No signed tree head yet.")
    return head.document()


def heads(*, from_size: str | None, limit: str | None) -> dict[str, Any]:
    """Signed heads of ``from_size`` leaves or more, ascending. A page never splits the heads of
    one size (re-signed after a key rotation), so ``next_from_size`` loses none."""
    start = size_param(from_size, "from_size", default=0)
    size = size_param(limit, "limit", default=DEFAULT_HEADS_LISTED, minimum=1)
    if size > MAX_HEADS_LISTED:
        raise RequestRejected("limit", f"must be at most {MAX_HEADS_LISTED}")
    ordered = SignedTreeHead.objects.filter(tree_size__gte=start).order_by("tree_size", "id")
    page = list(ordered[: size + 1])
    more = len(page) > size
    page = page[:size]
    if more:
        last = page[-1]
        page += ordered.filter(tree_size=last.tree_size, id__gt=last.id)
    return {
        "heads": [head.document() for head in page],
        "next_from_size": page[-1].tree_size + 1 if more else None,
    }


def _signed_size(value: str | None, field: str) -> SignedTreeHead:
    """The newest head of the size given (a 400 naming ``field`` if none has it), or the latest
    head when no size is given (404 if there is none)."""
    if value is None or value == "":
        head = transparency.latest_head()
        if head is None:
            raise NotFound("No signed tree head yet.")
        return head
    head = transparency.head_for_size(size_param(value, field))
    if head is None:
        raise RequestRejected(field, "is not the size of a signed tree head")
    return head


def event_proof(
    event_id: str, *, tree_size: str | None, agent: uuid.UUID | None = None
) -> dict[str, Any]:
    """The event, its inclusion proof in the tree of a signed head, and that head. ``agent``:
    only that agent's events (an agent asking with its passport)."""
    try:
        key = uuid.UUID(event_id)
    except ValueError as exc:
        raise RequestRejected("id", "must be an event id (UUID)") from exc
    events = ActionEvent.objects.filter(pk=key)
    if agent is not None:
        events = events.filter(agent_id=agent)
    event = events.first()
    if event is None:
        raise NotFound("No such event.")
    head = _signed_size(tree_size, "tree_size")
    if event.leaf_index >= head.tree_size:
        if tree_size:
            raise RequestRejected(
                "tree_size",
                f"the event is leaf {event.leaf_index}, not in a tree of {head.tree_size}",
            )
        raise NotYetCovered(
            "id",
            f"the event is leaf {event.leaf_index}; the latest signed head covers "
            f"{head.tree_size} leaves. Ask again after the next head "
            f"(every {settings.AUDIT_CHECKPOINT_SECONDS:g} s).",
        )
    try:
        path = transparency.inclusion_proof(event.leaf_index, head.tree_size)
    except transparency.TreeDamaged as exc:
        raise LogDamaged("tree", f"the log is damaged: {exc}") from exc
    return {
        "event": {**audit.event_document(event), "leaf_index": event.leaf_index},
        "leaf_index": event.leaf_index,
        "tree_size": head.tree_size,
        "path": path,
        "head": head.document(),
    }


def consistency(*, first: str | None, second: str | None) -> dict[str, Any]:
    """Proof that the tree of ``first`` leaves is a prefix of a signed head's tree (``second``
    leaves, default the latest head), with both heads (``from_head`` None if none has that size)."""
    to_head = _signed_size(second, "to")
    start = size_param(first, "from", minimum=1)
    if start > to_head.tree_size:
        raise RequestRejected("from", f"is larger than to ({to_head.tree_size})")
    try:
        proof = transparency.consistency_proof(start, to_head.tree_size)
    except transparency.TreeDamaged as exc:
        archived = (
            ArchivedSegment.objects.order_by("-end_leaf").values_list("end_leaf", flat=True).first()
        )
        if archived is not None and start < archived:
            raise Archived(
                "from",
                f"leaves below {archived} are archived (archive_audit) and this proof needs some "
                f"of them: ask from {archived} or more, or verify the archived segment",
            ) from exc
        raise LogDamaged("tree", f"the log is damaged: {exc}") from exc
    from_head = transparency.head_for_size(start)
    return {
        "from": start,
        "to": to_head.tree_size,
        "proof": proof,
        "from_head": from_head.document() if from_head is not None else None,
        "to_head": to_head.document(),
    }
