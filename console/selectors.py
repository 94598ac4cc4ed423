"""Read models for the console: dashboard figures and timelines."""

from datetime import UTC, timedelta
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from actions.models import ActionEvent
from killswitch.models import Revocation
from killswitch.selectors import RUNNING_WITHIN
from killswitch.services import current_epoch
from passports.models import Agent, Passport
from signals.selectors import agent_timeline

EXPIRING_WITHIN = timedelta(hours=1)


def dashboard() -> dict[str, Any]:
    now = timezone.now()
    hour_ago = now - timedelta(hours=1)
    agents = dict(Agent.objects.values_list("status").annotate(n=Count("pk")))
    live = Passport.objects.filter(status=Passport.Status.ACTIVE, expires_at__gt=now)
    actions = ActionEvent.objects.filter(occurred_at__gte=hour_ago).aggregate(
        total=Count("pk"), denied=Count("pk", filter=Q(decision=ActionEvent.Decision.DENY))
    )
    return {
        "agents": {status: agents.get(status, 0) for status in Agent.Status.values},
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


def _describe(item: dict[str, Any]) -> tuple[str, str]:
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
    return item["reason"] or "", f"{kind} (epoch {item['epoch']})"


def timeline_rows(agent: Agent, limit: int = 100) -> list[dict[str, Any]]:
    """The agent's timeline, newest first, ready to display (the page and its live updates)."""
    rows = []
    for item in reversed(agent_timeline(agent=agent, limit=limit)["items"]):
        what, detail = _describe(item)
        css = [item["decision"] if item["type"] == "action" else item["type"]]
        if item.get("highlight"):
            css.append("hl")
        if item["type"] == "revocation":
            css.append("kill")
        rows.append(
            {
                "at": item["at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                "type": item["type"],
                "what": what,
                "detail": detail,
                "css": " ".join(css),
            }
        )
    return rows
