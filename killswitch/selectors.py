"""Which revocations stop a passport or an agent right now, and which agents applied them."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from django.db.models import Q, QuerySet
from django.utils import timezone

from actions.models import AgentCopy
from actions.selectors import RUNNING_WITHIN, TreeStop, tree_stop
from agent_passport.revocations import describe_target, revocations_digest
from killswitch.models import ALL_AGENTS, EpochCounter, Revocation
from passports.models import Agent
from registry.errors import RequestRejected

ACKNOWLEDGED, WAITING, MISMATCHED = "acknowledged", "waiting", "mismatched"
STOPPING = "stopping"  # a supervised copy applied the epoch; its process tree is not yet stopped


def current_epoch() -> int:
    """The epoch of the latest revoke or lift committed (0 before the first)."""
    return EpochCounter.objects.filter(pk=1).values_list("value", flat=True).first() or 0


def blocking_revocations(
    *, agent_id: uuid.UUID | str, fleet: str, jti: uuid.UUID | str | None = None
) -> QuerySet[Revocation]:
    """Active revocations that stop this agent (or this one passport of it), most specific first."""
    match = Q(target_type=Revocation.TargetType.AGENT, target_value=str(agent_id)) | Q(
        target_type=Revocation.TargetType.ALL, target_value=ALL_AGENTS
    )
    if fleet:
        match |= Q(target_type=Revocation.TargetType.FLEET, target_value=fleet)
    if jti:
        match |= Q(target_type=Revocation.TargetType.PASSPORT, target_value=str(jti))
    return Revocation.objects.filter(match, lifted_at__isnull=True).order_by("epoch")


def runnable_agents() -> QuerySet[Agent]:
    """Agents no active revocation stops: an agent kill or suspension sets the agent's own
    status; a fleet or global kill leaves it and stops the agent all the same."""
    active = Revocation.objects.filter(lifted_at__isnull=True)
    if active.filter(target_type=Revocation.TargetType.ALL).exists():
        return Agent.objects.none()
    stopped_fleets = active.filter(target_type=Revocation.TargetType.FLEET).values("target_value")
    return Agent.objects.filter(status=Agent.Status.ACTIVE).exclude(fleet__in=stopped_fleets)


def standing_group_kills() -> list[Revocation]:
    """Active kills of all agents or of a fleet (the console's banner), all agents first."""
    group = [Revocation.TargetType.ALL, Revocation.TargetType.FLEET]
    active = Revocation.objects.filter(lifted_at__isnull=True, target_type__in=group)
    return sorted(active, key=lambda r: (r.target_type != Revocation.TargetType.ALL, r.epoch))


def revocations(
    *, active: bool | None = None, target_type: str | None = None
) -> QuerySet[Revocation]:
    queryset = Revocation.objects.select_related("actor", "lifted_by")
    if active is not None:
        queryset = queryset.filter(lifted_at__isnull=active)
    if target_type:
        if target_type not in Revocation.TargetType.values:
            raise RequestRejected("target_type", "must be passport, agent, fleet or all")
        queryset = queryset.filter(target_type=target_type)
    return queryset


def describe_revocation(revocation: Revocation) -> str:
    target = describe_target(revocation.target_type, revocation.target_value)
    return f"revoked: {target} (epoch {revocation.epoch}, {revocation.source}): {revocation.reason}"


def targeted_agents(revocation: Revocation) -> QuerySet[Agent]:
    """The agents a revocation stops."""
    agents = Agent.objects.all()
    if revocation.target_type == Revocation.TargetType.AGENT:
        return agents.filter(pk=revocation.target_value)
    if revocation.target_type == Revocation.TargetType.FLEET:
        return agents.filter(fleet=revocation.target_value)
    if revocation.target_type == Revocation.TargetType.PASSPORT:
        return agents.filter(passports__jti=revocation.target_value)
    return agents


def applied_digest(epoch: int) -> str:
    """The revocations_digest an agent holds once it has applied every epoch up to ``epoch``."""
    active = Revocation.objects.filter(epoch__lte=epoch).exclude(lift_epoch__lte=epoch)
    return revocations_digest(active.values_list("pk", flat=True))


def acknowledgement(
    seen: int | None, digest: str, epoch: int, expected: Callable[[int], str]
) -> str:
    """Whether a heartbeat (``seen`` epoch, revocations ``digest``) shows ``epoch`` applied:
    ACKNOWLEDGED (its epoch is at least that and its digest is what the database says was active
    at its epoch), WAITING (an older epoch, or no digest), or MISMATCHED (the epoch is reached
    but it holds something else: it skipped or lost revocations)."""
    if seen is None or seen < epoch or not digest:
        return WAITING
    return ACKNOWLEDGED if digest == expected(seen) else MISMATCHED


def copy_acknowledgement(copy: AgentCopy, epoch: int, expected: Callable[[int], str]) -> str:
    """A copy's acknowledgement of ``epoch``. A supervised copy has acknowledged only once it
    also reported its process tree stopped for that epoch or a later one (STOPPING until then)."""
    state = acknowledgement(copy.last_seen_epoch, copy.last_seen_digest, epoch, expected)
    if state == ACKNOWLEDGED and copy.supervised and not stopped_for(copy, epoch):
        return STOPPING
    return state


def stopped_for(copy: AgentCopy, epoch: int) -> bool:
    """The copy's supervisor stopped its tree for a revocation of ``epoch`` or later."""
    return copy.stopped_at is not None and (copy.stopped_epoch or -1) >= epoch


# The agent's state is its least advanced copy's.
_LEAST_ADVANCED_FIRST = (MISMATCHED, WAITING, STOPPING, ACKNOWLEDGED)


@dataclass(frozen=True)
class CopyAcknowledgement:
    host: str
    pid: int
    supervised: bool
    mechanism: str  # cgroup or subreaper ("" in-process)
    epoch_seen: int | None
    last_seen: datetime
    state: str  # ACKNOWLEDGED, WAITING, MISMATCHED or STOPPING
    acknowledged: bool
    tree_state: str  # the supervisor's tree: running, paused, stopped, exited ("" in-process)
    processes: int | None  # in the tree at the last heartbeat
    stopped: TreeStop | None  # the supervisor's stop, if it was for this revocation (or later)


@dataclass(frozen=True)
class AgentAcknowledgement:
    id: uuid.UUID
    name: str
    fleet: str
    epoch_seen: int | None
    last_seen: datetime | None  # never None here: only agents that reported are listed
    state: str  # ACKNOWLEDGED, WAITING, MISMATCHED or STOPPING
    acknowledged: bool
    copies: list[CopyAcknowledgement]


@dataclass(frozen=True)
class Acknowledgements:
    revocation: int
    epoch: int
    active: bool
    running: int  # targeted agents that reported in the last RUNNING_WITHIN
    acknowledged: int
    mismatched: int
    copies: int  # copies listed (running, or stopped by a supervisor for this revocation)
    copies_acknowledged: int
    processes_stopped: int  # by supervisors, for this revocation (or a later one)
    agents: list[AgentAcknowledgement]


def targeted_copies(revocation: Revocation, *, now: datetime) -> QuerySet[AgentCopy]:
    """Copies a revocation stops that are running, or whose supervisor reported their tree
    stopped for it (or a later revocation): those stay listed after they stop reporting."""
    copies = AgentCopy.objects.filter(agent__in=targeted_agents(revocation))
    if revocation.target_type == Revocation.TargetType.PASSPORT:
        copies = copies.filter(passport_id=revocation.target_value)
    listed = Q(last_seen_at__gte=now - RUNNING_WITHIN) | Q(
        stopped_at__isnull=False, stopped_epoch__gte=revocation.epoch
    )
    return copies.filter(listed).order_by("host", "pid")


def _copy_row(copy: AgentCopy, epoch: int, expected: Callable[[int], str]) -> CopyAcknowledgement:
    state = copy_acknowledgement(copy, epoch, expected)
    return CopyAcknowledgement(
        host=copy.host,
        pid=copy.pid,
        supervised=copy.supervised,
        mechanism=copy.mechanism,
        epoch_seen=copy.last_seen_epoch,
        last_seen=copy.last_seen_at,
        state=state,
        acknowledged=state == ACKNOWLEDGED,
        tree_state=copy.state,
        processes=copy.processes,
        stopped=tree_stop(copy) if stopped_for(copy, epoch) else None,
    )


def acknowledgements(revocation: Revocation) -> Acknowledgements:
    """Which running targeted agents, and which of their copies, have applied this revocation
    (from their heartbeats); for supervised copies, whether the process tree is stopped.

    An agent whose heartbeats name no copy (no host or pid) is judged by its own last heartbeat.
    """
    now = timezone.now()
    epoch = revocation.epoch
    expected = cache(applied_digest)  # one query per distinct epoch reported
    copies: dict[uuid.UUID, list[CopyAcknowledgement]] = {}
    for copy in targeted_copies(revocation, now=now):
        copies.setdefault(copy.agent_id, []).append(_copy_row(copy, epoch, expected))
    running = targeted_agents(revocation).filter(
        Q(last_seen_at__gte=now - RUNNING_WITHIN) | Q(pk__in=list(copies))
    )
    rows = []
    for agent in running.order_by("name"):
        own = copies.get(agent.pk, [])
        states = {row.state for row in own} or {
            acknowledgement(agent.last_seen_epoch, agent.last_seen_digest, epoch, expected)
        }
        state = next(s for s in _LEAST_ADVANCED_FIRST if s in states)
        rows.append(
            AgentAcknowledgement(
                id=agent.pk,
                name=agent.name,
                fleet=agent.fleet,
                epoch_seen=agent.last_seen_epoch,
                last_seen=agent.last_seen_at,
                state=state,
                acknowledged=state == ACKNOWLEDGED,
                copies=own,
            )
        )
    listed = [copy for row in rows for copy in row.copies]
    return Acknowledgements(
        revocation=revocation.pk,
        epoch=epoch,
        active=revocation.is_active,
        running=len(rows),
        acknowledged=sum(row.state == ACKNOWLEDGED for row in rows),
        mismatched=sum(row.state == MISMATCHED for row in rows),
        copies=len(listed),
        copies_acknowledged=sum(copy.acknowledged for copy in listed),
        processes_stopped=sum(copy.stopped.processes for copy in listed if copy.stopped),
        agents=rows,
    )
