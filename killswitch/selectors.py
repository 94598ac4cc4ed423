"""Which revocations stop a passport or an agent right now, and which agents applied them."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from django.db.models import Q, QuerySet
from django.utils import timezone

from agent_passport.revocations import describe_target, revocations_digest
from killswitch.models import ALL_AGENTS, EpochCounter, Revocation
from passports.models import Agent
from registry.errors import RequestRejected

RUNNING_WITHIN = timedelta(seconds=30)  # an agent that reported this recently counts as running
ACKNOWLEDGED, WAITING, MISMATCHED = "acknowledged", "waiting", "mismatched"


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


def acknowledgement(agent: Agent, epoch: int, expected: Callable[[int], str]) -> str:
    """Whether the agent's last heartbeat shows it applied ``epoch``: ACKNOWLEDGED (its epoch is
    at least that and its digest is what the database says was active at its epoch), WAITING
    (an older epoch, or no digest), or MISMATCHED (the epoch is reached but it holds something
    else: it skipped or lost revocations)."""
    seen = agent.last_seen_epoch
    if seen is None or seen < epoch or not agent.last_seen_digest:
        return WAITING
    return ACKNOWLEDGED if agent.last_seen_digest == expected(seen) else MISMATCHED


@dataclass(frozen=True)
class AgentAcknowledgement:
    id: uuid.UUID
    name: str
    fleet: str
    epoch_seen: int | None
    last_seen: datetime | None  # never None here: only agents that reported are listed
    state: str  # ACKNOWLEDGED, WAITING or MISMATCHED
    acknowledged: bool


@dataclass(frozen=True)
class Acknowledgements:
    revocation: int
    epoch: int
    active: bool
    running: int  # targeted agents that reported in the last RUNNING_WITHIN
    acknowledged: int
    mismatched: int
    agents: list[AgentAcknowledgement]


def acknowledgements(revocation: Revocation) -> Acknowledgements:
    """Which running targeted agents have applied this revocation (from SDK heartbeats)."""
    now = timezone.now()
    running = targeted_agents(revocation).filter(last_seen_at__gte=now - RUNNING_WITHIN)
    expected = cache(applied_digest)  # one query per distinct epoch reported
    rows = []
    for agent in running.order_by("name"):
        state = acknowledgement(agent, revocation.epoch, expected)
        rows.append(
            AgentAcknowledgement(
                id=agent.pk,
                name=agent.name,
                fleet=agent.fleet,
                epoch_seen=agent.last_seen_epoch,
                last_seen=agent.last_seen_at,
                state=state,
                acknowledged=state == ACKNOWLEDGED,
            )
        )
    return Acknowledgements(
        revocation=revocation.pk,
        epoch=revocation.epoch,
        active=revocation.is_active,
        running=len(rows),
        acknowledged=sum(row.state == ACKNOWLEDGED for row in rows),
        mismatched=sum(row.state == MISMATCHED for row in rows),
        agents=rows,
    )
