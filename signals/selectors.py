"""Read queries: signals with validated filters, and an agent's merged timeline."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal

from django.db.models import Q, QuerySet

from actions.models import ActionEvent
from killswitch.models import ALL_AGENTS, Revocation, RuleMatch
from killswitch.notifications import outcome
from passports.models import Agent
from registry.params import agent_id, choice
from signals.models import Signal

# Items of one instant, cause first: what the agent did, what was seen, the rule, the kill.
_TYPE_ORDER = {"action": 0, "signal": 1, "rule_match": 2, "revocation": 3, "lift": 4}


def signals(*, agent: str | None = None, category: str | None = None) -> QuerySet[Signal]:
    queryset = Signal.objects.select_related("reported_by")
    if agent:
        queryset = queryset.filter(agent_id=agent_id(agent))
    if category := choice(category, Signal.Category.values, "category"):
        queryset = queryset.filter(category=category)
    return queryset


def revocations_affecting(agent: Agent) -> Q:
    """Revocations that stop (or stopped) this agent during its life: of it, its fleet,
    everything, or one of its passports (revoked, or superseded by a renewal). One lifted before
    the agent was registered never applied to it; one still in force then did."""
    applied = Q(lifted_at__isnull=True) | Q(lifted_at__gt=agent.created_at)
    match = Q(target_type=Revocation.TargetType.AGENT, target_value=str(agent.pk)) | Q(
        target_type=Revocation.TargetType.ALL, target_value=ALL_AGENTS
    )
    if agent.fleet:
        match |= Q(target_type=Revocation.TargetType.FLEET, target_value=agent.fleet)
    revoked = agent.passports.filter(revoked_at__isnull=False).values_list("jti", flat=True)
    if jtis := [str(jti) for jti in revoked]:
        match |= Q(target_type=Revocation.TargetType.PASSPORT, target_value__in=jtis)
    return match & applied


@dataclass(frozen=True)
class ActionItem:
    at: datetime  # occurred_at, the agent's clock
    id: uuid.UUID
    seq: int
    action: str
    resource: str
    jurisdiction: str
    decision: str
    reason: str
    passport: uuid.UUID
    highlight: bool  # a deny
    type: Literal["action"] = "action"


@dataclass(frozen=True)
class SignalItem:
    at: datetime  # occurred_at, the reporter's clock
    id: int
    category: str
    source_host: str
    source_ip: str | None
    destination: str
    received_at: datetime
    highlight: bool = True
    type: Literal["signal"] = "signal"


@dataclass(frozen=True)
class RevocationItem:
    at: datetime
    id: int
    epoch: int
    target: dict[str, str | bool]  # {"agent": id}, {"fleet": name}, {"all": true}...
    reason: str
    source: str
    actor: str | None
    before_registration: bool  # already in force when the agent was registered
    highlight: bool = False
    type: Literal["revocation"] = "revocation"


@dataclass(frozen=True)
class LiftItem:
    at: datetime
    id: int  # the revocation lifted
    epoch: int  # the lift's epoch
    target: dict[str, str | bool]
    reason: str
    actor: str | None
    highlight: bool = False
    type: Literal["lift"] = "lift"


@dataclass(frozen=True)
class RuleMatchItem:
    at: datetime
    id: int
    rule: dict[str, int | str]  # id, name, kind
    dry_run: bool
    outcome: str
    trigger: str
    event_ids: list[str]
    signal: int | None
    revocation: int | None
    highlight: bool = False
    type: Literal["rule_match"] = "rule_match"


TimelineItem = ActionItem | SignalItem | RevocationItem | LiftItem | RuleMatchItem


@dataclass(frozen=True)
class Timeline:
    agent: uuid.UUID
    since: datetime | None
    until: datetime | None
    limit: int
    truncated: bool  # older items were left out
    items: list[TimelineItem]  # oldest first


def _action_item(event: ActionEvent) -> ActionItem:
    return ActionItem(
        at=event.occurred_at,
        id=event.id,
        seq=event.seq,
        action=event.action,
        resource=event.resource,
        jurisdiction=event.jurisdiction,
        decision=event.decision,
        reason=event.reason,
        passport=event.passport_id,
        highlight=event.decision == ActionEvent.Decision.DENY,
    )


def _signal_item(signal: Signal) -> SignalItem:
    return SignalItem(
        at=signal.occurred_at,
        id=signal.pk,
        category=signal.category,
        source_host=signal.source_host,
        source_ip=signal.source_ip,
        destination=signal.destination,
        received_at=signal.received_at,
    )


def _revocation_item(revocation: Revocation, agent: Agent) -> RevocationItem:
    return RevocationItem(
        at=revocation.created_at,
        id=revocation.pk,
        epoch=revocation.epoch,
        target=revocation.target,
        reason=revocation.reason,
        source=revocation.source,
        actor=revocation.actor.username if revocation.actor else None,
        before_registration=revocation.created_at < agent.created_at,
    )


def _lift_item(revocation: Revocation) -> LiftItem:
    # A lifted revocation has both (a constraint of the table).
    assert revocation.lifted_at is not None and revocation.lift_epoch is not None
    return LiftItem(
        at=revocation.lifted_at,
        id=revocation.pk,
        epoch=revocation.lift_epoch,
        target=revocation.target,
        reason=revocation.lift_reason,
        actor=revocation.lifted_by.username if revocation.lifted_by else None,
    )


def _rule_match_item(match: RuleMatch) -> RuleMatchItem:
    return RuleMatchItem(
        at=match.matched_at,
        id=match.pk,
        rule={"id": match.rule_id, "name": match.rule.name, "kind": match.rule.kind},
        dry_run=match.dry_run,
        outcome=outcome(match),
        trigger=match.trigger,
        event_ids=match.event_ids,
        signal=match.signal_id,
        revocation=match.revocation_id,
    )


def _newest(
    queryset: QuerySet, field: str, since: datetime | None, until: datetime | None, limit: int
) -> list:
    """The newest ``limit + 1`` rows in the window (one more than shown, to detect truncation)."""
    if since is not None:
        queryset = queryset.filter(**{f"{field}__gte": since})
    if until is not None:
        queryset = queryset.filter(**{f"{field}__lt": until})
    tiebreak = "-seq" if queryset.model is ActionEvent else "-pk"
    return list(queryset.order_by(f"-{field}", tiebreak)[: limit + 1])


def agent_timeline(
    *,
    agent: Agent,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
) -> Timeline:
    """The agent's action events, matched signals, revocations and lifts that affect it, and rule
    matches, oldest first: the newest ``limit`` items with ``since <= at < until``.

    Events and signals are placed at ``occurred_at`` (the reporter's clock), revocations at
    ``created_at`` (``before_registration`` marks one already in force when the agent was
    registered), lifts at ``lifted_at``, rule matches at ``matched_at``. ``truncated`` says
    that older items were left out (ask again with ``until`` = the first item's ``at``).
    """
    affecting = Revocation.objects.filter(revocations_affecting(agent))
    sources: list[tuple[list, Callable[[Any], TimelineItem]]] = [
        (
            _newest(agent.action_events.all(), "occurred_at", since, until, limit),
            _action_item,
        ),
        (_newest(agent.signals.all(), "occurred_at", since, until, limit), _signal_item),
        (
            _newest(affecting.select_related("actor"), "created_at", since, until, limit),
            partial(_revocation_item, agent=agent),
        ),
        (
            _newest(
                affecting.filter(lifted_at__isnull=False).select_related("lifted_by"),
                "lifted_at",
                since,
                until,
                limit,
            ),
            _lift_item,
        ),
        (
            _newest(agent.rule_matches.select_related("rule"), "matched_at", since, until, limit),
            _rule_match_item,
        ),
    ]
    items = [to_item(row) for rows, to_item in sources for row in rows]
    items.sort(key=_chronological)
    truncated = len(items) > limit  # each source gave up to limit + 1 rows
    return Timeline(
        agent=agent.pk,
        since=since,
        until=until,
        limit=limit,
        truncated=truncated,
        items=items[-limit:],
    )


def _chronological(item: TimelineItem) -> tuple[datetime, int, int]:
    tiebreak = item.seq if isinstance(item, ActionItem) else item.id
    return item.at, _TYPE_ORDER[item.type], tiebreak
