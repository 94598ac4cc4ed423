"""Read queries for agents and passports, with validated filters."""

from django.db.models import QuerySet
from django.utils import timezone

from passports.models import Agent, Passport
from registry.params import agent_id, choice


def agents(*, fleet: str | None = None, status: str | None = None) -> QuerySet[Agent]:
    queryset = Agent.objects.select_related("owner")
    if fleet:
        queryset = queryset.filter(fleet=fleet)
    if status := choice(status, Agent.Status.values, "status"):
        queryset = queryset.filter(status=status)
    return queryset


def passports(
    *, agent: str | None = None, fleet: str | None = None, status: str | None = None
) -> QuerySet[Passport]:
    queryset = Passport.objects.select_related("agent", "issued_by", "revoked_by")
    if agent:
        queryset = queryset.filter(agent_id=agent_id(agent))
    if fleet:
        queryset = queryset.filter(agent__fleet=fleet)
    now = timezone.now()
    status = choice(status, Passport.Status.values, "status")
    if status == Passport.Status.ACTIVE:
        queryset = queryset.filter(status=status, expires_at__gt=now)
    elif status == Passport.Status.EXPIRED:
        queryset = queryset.filter(status__in=[status, Passport.Status.ACTIVE], expires_at__lte=now)
    elif status:
        queryset = queryset.filter(status=status)
    return queryset
