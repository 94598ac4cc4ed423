"""Which revocations stop a passport or an agent right now."""

from django.db.models import Q, QuerySet

from agent_passport.revocations import describe_target
from killswitch.models import Revocation
from killswitch.services import ALL_AGENTS
from passports.models import Agent


def blocking_revocations(
    *, agent_id: str, fleet: str, jti: str | None = None
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
        queryset = queryset.filter(target_type=target_type)
    return queryset


def describe_revocation(revocation: Revocation) -> str:
    target = describe_target(revocation.target_type, revocation.target_value)
    return f"revoked: {target} (epoch {revocation.epoch}, {revocation.source}): {revocation.reason}"
