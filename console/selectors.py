"""Read models for the console: dashboard figures, kill acknowledgements, timeline rows."""

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from actions import selectors as action_selectors
from actions.models import ActionEvent
from agent_passport.revocations import describe_target
from console.times import moment
from killswitch import selectors as kill_selectors
from killswitch.models import Revocation
from killswitch.selectors import RUNNING_WITHIN, current_epoch, runnable_agents
from passports.models import Agent, Passport
from signals.selectors import agent_timeline

EXPIRING_WITHIN = timedelta(hours=1)


def dashboard() -> dict[str, Any]:
    now = timezone.now()
    hour_ago = now - timedelta(hours=1)
    agents = dict(Agent.objects.values_list("status").annotate(n=Count("pk")))
    runnable = runnable_agents()
    free_to_run = runnable.count()
    live = Passport.objects.filter(
        status=Passport.Status.ACTIVE, expires_at__gt=now, agent__in=runnable
    )
    actions = ActionEvent.objects.filter(occurred_at__gte=hour_ago).aggregate(
        total=Count("pk"), denied=Count("pk", filter=Q(decision=ActionEvent.Decision.DENY))
    )
    return {
        "agents": {
            **{status: agents.get(status, 0) for status in Agent.Status.values},
            # Active agents a fleet or global kill stops are "stopped", not "active".
            "active": free_to_run,
            "stopped": agents.get(Agent.Status.ACTIVE, 0) - free_to_run,
        },
        "running": Agent.objects.filter(last_seen_at__gte=now - RUNNING_WITHIN).count(),
        "passports_active": live.count(),
        "passports_expiring": live.filter(expires_at__lte=now + EXPIRING_WITHIN).count(),
        "actions_last_hour": actions["total"],
        "denies_last_hour": actions["denied"],
        "automatic_kills_24h": Revocation.objects.filter(
            source=Revocation.Source.RULE, created_at__gte=now - timedelta(days=1)
        ).count(),
        "epoch": current_epoch(),
    }


def recent_revocations(limit: int = 10) -> list[Revocation]:
    return list(Revocation.objects.select_related("actor", "lifted_by").order_by("-epoch")[:limit])


def stopped_by_group_kill(agents: Iterable[Agent]) -> set[uuid.UUID]:
    """Which of these agents a fleet or global kill stops although their status reads active."""
    active = {agent.pk for agent in agents if agent.status == Agent.Status.ACTIVE}
    return active - set(runnable_agents().filter(pk__in=active).values_list("pk", flat=True))


def acknowledgements(revocation: Revocation) -> dict[str, Any]:
    """The kill switch's acknowledgements, with times in the console's one format."""
    acks = kill_selectors.acknowledgements(revocation)
    rows = [{**row, "last_seen": moment(row["last_seen"])} for row in acks["agents"]]
    return {**acks, "agents": rows}


def target_labels(revocations: list[Revocation]) -> dict[int, str]:
    """What each revocation stopped, for people: agents by name (one query for all)."""
    agent = Revocation.TargetType.AGENT
    agent_ids = [r.target_value for r in revocations if r.target_type == agent]
    names = {
        str(pk): name
        for pk, name in Agent.objects.filter(pk__in=agent_ids).values_list("pk", "name")
    }
    return {
        r.pk: describe_target(r.target_type, names.get(r.target_value, r.target_value))
        for r in revocations
    }


def revoked_records(revocation: Revocation) -> dict[str, Agent | Passport | None]:
    """The agent or passport a revocation names, to link to (none for fleets and everyone)."""
    if revocation.target_type == Revocation.TargetType.AGENT:
        return {"target_agent": Agent.objects.filter(pk=revocation.target_value).first()}
    if revocation.target_type == Revocation.TargetType.PASSPORT:
        passport = Passport.objects.select_related("agent").filter(jti=revocation.target_value)
        return {"target_passport": passport.first()}
    return {}


def _stopped(item: dict[str, Any], agent: Agent) -> str:
    """What a timeline revocation or lift targets, in the SDK's wording (this agent by name)."""
    ((kind, value),) = item["target"].items()
    if kind == Revocation.TargetType.ALL:
        return describe_target(kind, "*")
    return describe_target(kind, agent.name if kind == Revocation.TargetType.AGENT else value)


def _describe(item: dict[str, Any], agent: Agent) -> tuple[str, str]:
    """What happened and its decision/detail, as one line each."""
    kind = item["type"]
    if kind == "action":
        resource = f":{item['resource']}" if item["resource"] else ""
        return f"{item['action']}{resource}", f"{item['decision']} — {item['reason']}"
    if kind == "signal":
        source = item["source_ip"] or item["source_host"]
        return f"{item['category']} from {source} → {item['destination']}", "external signal"
    if kind == "rule_match":
        return f"rule {item['rule']['name']}: {item['trigger']}", item["outcome"]
    detail = f"revocation #{item['id']} (epoch {item['epoch']})"
    if kind == "lift" and Revocation.TargetType.PASSPORT in item["target"]:
        # Only retirement lifts a passport's revocation: the passport stays stopped.
        return f"{_stopped(item, agent)}: {item['reason']}", detail
    if kind == "lift":
        return f"{_stopped(item, agent)} reinstated: {item['reason'] or 'no reason given'}", detail
    if item["before_registration"]:
        detail += ", already in force when this agent was registered"
    return f"{_stopped(item, agent)} stopped: {item['reason']}", detail


def timeline_rows(agent: Agent, limit: int = 100) -> list[dict[str, Any]]:
    """The agent's timeline, newest first, ready to display (the page and its live updates)."""
    rows = []
    for item in reversed(agent_timeline(agent=agent, limit=limit)["items"]):
        what, detail = _describe(item, agent)
        css = [item["decision"] if item["type"] == "action" else item["type"]]
        if item.get("highlight"):
            css.append("hl")
        if item["type"] == "revocation":
            css.append("kill")
        rows.append(
            {
                "at": moment(item["at"]),
                "type": item["type"],
                "what": what,
                "detail": detail,
                "css": " ".join(css),
            }
        )
    return rows


def action_log(*, agent: str | None = None, **filters: str | None) -> QuerySet[ActionEvent]:
    """The action log with the API's filters, except that ``agent`` may also be part of a name
    (case-insensitive); an agent id still selects exactly that agent."""
    try:
        uuid.UUID(agent or "")
    except ValueError:
        events = action_selectors.action_events(**filters)
        return events.filter(agent__name__icontains=agent) if agent else events
    return action_selectors.action_events(agent=agent, **filters)
