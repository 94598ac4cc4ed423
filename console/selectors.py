"""Read models for the console: one per page (what its view renders), and the parts they share.

Lookups (by id, or of the kill page's target) raise Http404: the console's views are their only
callers.
"""

import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone

from actions import audit, transparency, witnesses
from actions import selectors as action_selectors
from actions.models import ActionEvent, SignedTreeHead
from actions.selectors import RUNNING_WITHIN, CopyStatus, TreeStop
from agent_passport.audit import ChainReport, event_hash
from agent_passport.merkle import leaf_hash, verify_head, verify_inclusion
from agent_passport.revocations import describe_target
from console.times import moment
from killswitch import selectors as kill_selectors
from killswitch import services as killswitch
from killswitch.models import KillRule, Revocation, RuleMatch
from killswitch.selectors import current_epoch, runnable_agents
from passports import selectors as passport_selectors
from passports import signing
from passports.models import Agent, Passport, SigningKey
from passports.services import RunStatus, agent_run_status, effective_status
from registry.errors import RequestRejected
from signals.selectors import (
    ActionItem,
    LiftItem,
    RevocationItem,
    RuleMatchItem,
    SignalItem,
    TimelineItem,
    agent_timeline,
)

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


def processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def copy_tree(*, supervised: bool, state: str, count: int | None, stopped: TreeStop | None) -> str:
    """What a copy's process tree came to, for people: ``process tree stopped: 50 processes``."""
    if not supervised:
        return "in-process SDK (no process tree)"
    if stopped is not None:
        killed = f", {stopped.sigkilled} after SIGKILL" if stopped.sigkilled else ""
        return f"process tree stopped: {processes(stopped.processes)}{killed}"
    return f"process tree {state}: {processes(count or 0)}"


def _copy_row(copy: kill_selectors.CopyAcknowledgement) -> dict[str, Any]:
    kind = f"supervisor ({copy.mechanism})" if copy.supervised else "in-process"
    return {
        **asdict(copy),
        "last_seen": moment(copy.last_seen),
        "stopped": copy.stopped and {**asdict(copy.stopped), "at": moment(copy.stopped.at)},
        "kind": kind,
        "tree": copy_tree(
            supervised=copy.supervised,
            state=copy.tree_state,
            count=copy.processes,
            stopped=copy.stopped,
        ),
    }


def acknowledgements(revocation: Revocation) -> dict[str, Any]:
    """The kill switch's acknowledgements, with times in the console's one format and each
    copy's process tree in words (the page and its live updates render the same)."""
    acks = kill_selectors.acknowledgements(revocation)
    rows = [
        {
            **asdict(row),
            "last_seen": moment(row.last_seen),
            "copies": [_copy_row(copy) for copy in row.copies],
        }
        for row in acks.agents
    ]
    return {**asdict(acks), "agents": rows}


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


def revoked_records(revocation: Revocation) -> tuple[Agent | None, Passport | None]:
    """The agent or passport a revocation names, to link to (neither for fleets and everyone)."""
    if revocation.target_type == Revocation.TargetType.AGENT:
        return Agent.objects.filter(pk=revocation.target_value).first(), None
    if revocation.target_type == Revocation.TargetType.PASSPORT:
        passport = Passport.objects.select_related("agent").filter(jti=revocation.target_value)
        return None, passport.first()
    return None, None


def _stopped(item: RevocationItem | LiftItem, agent: Agent) -> str:
    """What a timeline revocation or lift targets, in the SDK's wording (this agent by name)."""
    ((kind, value),) = item.target.items()
    if kind == Revocation.TargetType.ALL:
        return describe_target(kind, "*")
    return describe_target(kind, agent.name if kind == Revocation.TargetType.AGENT else str(value))


def _describe(item: TimelineItem, agent: Agent) -> tuple[str, str]:
    """What happened and its decision/detail, as one line each."""
    if isinstance(item, ActionItem):
        resource = f":{item.resource}" if item.resource else ""
        return f"{item.action}{resource}", f"{item.decision} — {item.reason}"
    if isinstance(item, SignalItem):
        source = item.source_ip or item.source_host
        return f"{item.category} from {source} → {item.destination}", "external signal"
    if isinstance(item, RuleMatchItem):
        return f"rule {item.rule['name']}: {item.trigger}", item.outcome
    detail = f"revocation #{item.id} (epoch {item.epoch})"
    if isinstance(item, LiftItem) and Revocation.TargetType.PASSPORT in item.target:
        # Only retirement lifts a passport's revocation: the passport stays stopped.
        return f"{_stopped(item, agent)}: {item.reason}", detail
    if isinstance(item, LiftItem):
        return f"{_stopped(item, agent)} reinstated: {item.reason or 'no reason given'}", detail
    if item.before_registration:
        detail += ", already in force when this agent was registered"
    return f"{_stopped(item, agent)} stopped: {item.reason}", detail


def timeline_rows(agent: Agent, limit: int = 100) -> list[dict[str, Any]]:
    """The agent's timeline, newest first, ready to display (the page and its live updates)."""
    rows = []
    for item in reversed(agent_timeline(agent=agent, limit=limit).items):
        what, detail = _describe(item, agent)
        css = [item.decision if isinstance(item, ActionItem) else item.type]
        if item.highlight:
            css.append("hl")
        if item.type == "revocation":
            css.append("kill")
        rows.append(
            {
                "at": moment(item.at),
                "type": item.type,
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


# --- Pages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DashboardPage:
    stats: dict[str, Any]
    revocations: list[tuple[Revocation, str]]  # the newest, each with what it stopped


def dashboard_page() -> DashboardPage:
    recent = recent_revocations()
    labels = target_labels(recent)
    return DashboardPage(stats=dashboard(), revocations=[(r, labels[r.pk]) for r in recent])


@dataclass(frozen=True)
class AgentsPage:
    page: Page
    stopped: set[uuid.UUID]
    status: str  # the status filter applied: "" when the one asked for is not a status
    fleets: list[str]


def agents_page(*, query: str, fleet: str, status: str, page: str | None) -> AgentsPage:
    """Agents by name, 50 a page, whose name contains ``query``, of ``fleet``, in ``status``."""
    try:
        found = passport_selectors.agents(fleet=fleet or None, status=status or None)
    except RequestRejected:
        found, status = passport_selectors.agents(fleet=fleet or None), ""
    if query:
        found = found.filter(name__icontains=query)
    listed = Paginator(found.order_by("name"), 50).get_page(page)
    fleets = Agent.objects.exclude(fleet="").order_by("fleet").values_list("fleet", flat=True)
    return AgentsPage(
        page=listed,
        stopped=stopped_by_group_kill(listed.object_list),
        status=status,
        fleets=list(fleets.distinct()),
    )


@dataclass(frozen=True)
class AgentNow:
    """What the agent page shows and refreshes while it is open."""

    agent: Agent
    run_status: RunStatus
    timeline: list[dict[str, Any]]


def agent_now(agent_id: uuid.UUID) -> AgentNow:
    agent = get_object_or_404(Agent, pk=agent_id)
    return AgentNow(agent=agent, run_status=agent_run_status(agent), timeline=timeline_rows(agent))


@dataclass(frozen=True)
class AgentPage(AgentNow):
    passports: list[tuple[Passport, str]]  # the 20 newest, each with its effective status
    copies: list[tuple[CopyStatus, str]]  # each with its process tree in words
    stopped: set[uuid.UUID]
    active_revocation: Revocation | None  # of the agent itself (not its fleet or everyone)


def agent_page(agent_id: uuid.UUID) -> AgentPage:
    now = agent_now(agent_id)
    agent = now.agent
    held = agent.passports.select_related("issued_by").order_by("-issued_at")[:20]
    return AgentPage(
        agent=agent,
        run_status=now.run_status,
        timeline=now.timeline,
        passports=[(p, effective_status(p)) for p in held],
        copies=[
            (
                copy,
                copy_tree(
                    supervised=copy.supervised,
                    state=copy.state,
                    count=copy.processes,
                    stopped=copy.stopped,
                ),
            )
            for copy in now.run_status.copies
        ],
        stopped=stopped_by_group_kill([agent]),
        active_revocation=Revocation.objects.filter(
            target_type=Revocation.TargetType.AGENT,
            target_value=str(agent.pk),
            lifted_at__isnull=True,
        ).first(),
    )


@dataclass(frozen=True)
class KillTarget:
    target: killswitch.Target
    label: str  # for people: "every agent", "fleet eu", "agent Copilot"
    affected: int  # agents it would stop


def kill_target(*, everything: bool, fleet: str, agent: str) -> KillTarget:
    """The target the kill page was asked for: all agents, else a fleet, else an agent."""
    try:
        if everything:
            target, label = killswitch.parse_target({"all": True}), "every agent"
        elif fleet:
            target, label = killswitch.parse_target({"fleet": fleet}), f"fleet {fleet}"
        elif agent:
            target = killswitch.parse_target({"agent": agent})
            label = f"agent {Agent.objects.get(pk=target.value).name}"
        else:
            raise Http404("choose an agent, a fleet or all agents")
    except RequestRejected as exc:
        raise Http404(exc.message) from exc
    stops = Revocation(target_type=target.type, target_value=target.value)
    return KillTarget(
        target=target, label=label, affected=kill_selectors.targeted_agents(stops).count()
    )


def revocation(revocation_id: int) -> Revocation:
    return get_object_or_404(Revocation, pk=revocation_id)


@dataclass(frozen=True)
class RevocationPage:
    revocation: Revocation
    label: str
    target_agent: Agent | None
    target_passport: Passport | None
    acks: dict[str, Any]


def revocation_page(revocation_id: int) -> RevocationPage:
    found = get_object_or_404(
        Revocation.objects.select_related("actor", "lifted_by"), pk=revocation_id
    )
    target_agent, target_passport = revoked_records(found)
    return RevocationPage(
        revocation=found,
        label=target_labels([found])[found.pk],
        target_agent=target_agent,
        target_passport=target_passport,
        acks=acknowledgements(found),
    )


@dataclass(frozen=True)
class HeadSummary:
    head: SignedTreeHead
    witnessed_by: list[str]  # sinks that took it; empty: not witnessed (yet)
    refused_by: dict[str, str]  # sinks that failed to take it: their latest error


def newest_head() -> HeadSummary | None:
    head = transparency.latest_head()
    if head is None:
        return None
    return HeadSummary(
        head=head, witnessed_by=witnesses.witnessed_by(head), refused_by=witnesses.refused_by(head)
    )


@dataclass(frozen=True)
class ActionLogPage:
    page: Page
    error: str | None  # a filter that was refused (the page then shows the whole log)
    report: ChainReport | None  # the audit verification, when asked for
    head: HeadSummary | None  # the newest signed tree head


def action_log_page(
    *, filters: dict[str, str | None], page: str | None, verify: bool
) -> ActionLogPage:
    """The action log, newest first, 100 a page; the audit chains verified if ``verify``."""
    error = None
    try:
        events = action_log(**filters)
    except RequestRejected as exc:
        error, events = f"{exc.field}: {exc.message}", action_log()
    ordered = events.select_related("agent").order_by("-occurred_at", "-seq")
    return ActionLogPage(
        page=Paginator(ordered, 100).get_page(page),
        error=error,
        report=audit.verify() if verify else None,
        head=newest_head(),
    )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class EventCheck:
    """ "Verify this event": its content against its logged hash, and its leaf against the
    newest signed head with an inclusion proof checked by the SDK's verifiers."""

    event: ActionEvent
    head: HeadSummary | None
    checks: list[Check]
    path: list[str]  # the inclusion proof (hex), when one could be computed

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def verdict(self) -> str:
        """What changed, named by the first check that failed (or that all passed)."""
        failed = [check for check in self.checks if not check.ok]
        if failed:
            return failed[0].detail
        head = self.checks[-1].detail
        return f"verified: {head}"


def _short(value: str) -> str:
    return f"{value[:12]}…"


def event_check(event_id: uuid.UUID) -> EventCheck:
    event = get_object_or_404(ActionEvent.objects.select_related("agent"), pk=event_id)
    content_hash = event_hash(audit.event_document(event))
    checks = [
        Check(
            "content",
            content_hash == event.hash,
            f"the content hashes to {_short(content_hash)} as logged"
            if content_hash == event.hash
            else f"content edited: the event now hashes to {_short(content_hash)}, but it was "
            f"logged with hash {_short(event.hash)} (hash mismatch)",
        )
    ]
    summary = newest_head()
    if summary is None or event.leaf_index >= summary.head.tree_size:
        covered = summary.head.tree_size if summary else 0
        checks.append(
            Check(
                "head",
                False,
                f"not yet covered by a signed head: the event is leaf {event.leaf_index}, the "
                f"newest head covers {covered} event(s); the next head will include it",
            )
        )
        return EventCheck(event=event, head=summary, checks=checks, path=[])
    head = summary.head
    document = head.document()
    problem = verify_head(document, signing.all_public_keys())
    checks.append(Check("head", problem is None, problem or f"head {head.tree_size} is signed"))
    try:
        path = transparency.inclusion_proof(event.leaf_index, head.tree_size)
    except transparency.TreeDamaged as exc:
        checks.append(Check("proof", False, f"proof fails against the head: {exc}"))
        return EventCheck(event=event, head=summary, checks=checks, path=[])
    included = verify_inclusion(
        leaf_hash(content_hash),
        event.leaf_index,
        head.tree_size,
        [bytes.fromhex(node) for node in path],
        bytes.fromhex(head.root_hash),
    )
    checks.append(
        Check(
            "proof",
            included,
            f"leaf {event.leaf_index} of the signed head of size {head.tree_size} "
            f"(root {_short(head.root_hash)}), {len(path)} proof hashes"
            if included
            else f"proof fails against the head: leaf {event.leaf_index} with this content is not "
            f"in the tree of size {head.tree_size} that the head signs "
            f"(root {_short(head.root_hash)})",
        )
    )
    return EventCheck(event=event, head=summary, checks=checks, path=path)


@dataclass(frozen=True)
class RulesPage:
    rules: list[KillRule]
    matches: list[RuleMatch]  # the 50 newest


def rules_page() -> RulesPage:
    matches = RuleMatch.objects.select_related("rule", "agent").order_by("-matched_at")
    return RulesPage(rules=list(KillRule.objects.order_by("name")), matches=list(matches[:50]))


def rule(rule_id: int) -> KillRule:
    return get_object_or_404(KillRule, pk=rule_id)


def signing_keys() -> list[tuple[SigningKey, int]]:
    """Every signing key, newest first, with how many active passports it signed."""
    signed = Passport.objects.filter(status=Passport.Status.ACTIVE).values_list("kid")
    counts = dict(signed.annotate(n=Count("pk")))
    return [(key, counts.get(key.kid, 0)) for key in SigningKey.objects.order_by("-created_at")]
