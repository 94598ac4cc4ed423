"""Read queries for the action log, with validated filters, and of the copies of an agent."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, QuerySet
from django.utils import timezone

from actions.lookups import GlobMatch
from actions.models import ActionEvent, AgentCopy
from agent_passport.errors import RuleError
from agent_passport.rules import parse_rule
from passports.models import Agent
from registry.errors import RequestRejected
from registry.params import agent_id, moment

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
