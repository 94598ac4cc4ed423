"""Read queries for the action log, with validated filters."""

from django.db.models import F, QuerySet

from actions.lookups import GlobMatch
from actions.models import ActionEvent
from agent_passport.errors import RuleError
from agent_passport.rules import parse_rule
from passports.models import Agent
from registry.errors import RequestRejected
from registry.params import agent_id, moment


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
