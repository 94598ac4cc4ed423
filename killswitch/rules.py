"""Automatic kill rules: define them, and evaluate them against new denies and signals.

A rule of kind

* ``deny_pattern`` fires on a denied action matching ``pattern`` (the scope-rule grammar of
  :mod:`agent_passport.rules`, e.g. ``net:tunnel:*`` or ``proc:exec:*miner*``);
* ``deny_rate`` fires when an agent is denied more than ``threshold`` times within
  ``window_seconds`` (of the agents' own clocks; optionally only denies matching ``pattern``).
  Denies counted by one match do not count again for the next;
* ``signal`` fires on an external signal of ``category`` matched to the agent.

A firing rule records a :class:`RuleMatch` (the operators' notification) and, unless it is a dry
run, kills the agent through :func:`killswitch.services.revoke` — the path the API takes, so the
kill reaches every running copy through Redis at once.
"""

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from actions.models import ActionEvent
from actions.selectors import matching_pattern
from agent_passport.errors import RuleError
from agent_passport.rules import Rule, parse_rule, split_action
from killswitch import notifications, services
from killswitch.models import KillRule, Revocation, RuleMatch
from passports.models import Agent
from passports.roles import Role, has_role
from registry.errors import RequestRejected, StateConflict
from registry.params import agent_id, boolean, database_id
from signals.models import Signal

logger = logging.getLogger(__name__)

MAX_THRESHOLD = 10_000
MAX_WINDOW_SECONDS = 86_400
MAX_REASON_LENGTH = 500  # Revocation.reason

_KIND_FIELDS = {
    KillRule.Kind.DENY_PATTERN: ({"pattern"}, set()),
    KillRule.Kind.DENY_RATE: ({"threshold", "window_seconds"}, {"pattern"}),
    KillRule.Kind.SIGNAL: ({"category"}, set()),
}
_EMPTY: dict[str, Any] = {"pattern": "", "threshold": None, "window_seconds": None, "category": ""}


# --- Defining rules ----------------------------------------------------------------------------


def parse_pattern(pattern: str) -> Rule:
    """Parse an action pattern with the scope-rule parser; RequestRejected names the pattern."""
    try:
        rule = parse_rule(pattern)
    except RuleError as exc:
        raise RequestRejected("pattern", str(exc)) from exc
    if rule.deny:
        raise RequestRejected(
            "pattern", f"invalid pattern {pattern!r}: it matches denied actions; leave out '!'"
        )
    return rule


def _check_webhook_url(url: str) -> str:
    url = url.strip()
    if not url:
        return ""
    message = "must be an http:// or https:// URL with a host"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a malformed port)
    except ValueError as exc:
        raise RequestRejected("webhook_url", message) from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise RequestRejected("webhook_url", message)
    return url


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    """Check a rule's fields against its kind; RequestRejected names the first bad field."""
    if "name" in fields and not str(fields["name"]).strip():
        raise RequestRejected("name", "a name is required")
    kind = fields["kind"]
    if kind not in KillRule.Kind.values:
        raise RequestRejected("kind", f"must be one of {', '.join(KillRule.Kind.values)}")
    required, optional = _KIND_FIELDS[KillRule.Kind(kind)]
    for name, empty in _EMPTY.items():
        given = fields.get(name, empty) not in (None, "")
        if name in required and not given:
            raise RequestRejected(name, f"is required for a {kind} rule")
        if given and name not in required | optional:
            raise RequestRejected(name, f"is not used by a {kind} rule")
    if fields.get("pattern"):
        parse_pattern(fields["pattern"])
    if kind == KillRule.Kind.DENY_RATE:
        if not 1 <= fields["threshold"] <= MAX_THRESHOLD:
            raise RequestRejected("threshold", f"must be between 1 and {MAX_THRESHOLD}")
        if not 1 <= fields["window_seconds"] <= MAX_WINDOW_SECONDS:
            raise RequestRejected("window_seconds", f"must be between 1 and {MAX_WINDOW_SECONDS}")
    if kind == KillRule.Kind.SIGNAL and fields["category"] not in Signal.Category.values:
        raise RequestRejected("category", f"must be one of {', '.join(Signal.Category.values)}")
    fields["webhook_url"] = _check_webhook_url(fields.get("webhook_url") or "")
    return {**_EMPTY, **fields}


def create_rule(
    *,
    name: str,
    kind: str,
    pattern: str = "",
    threshold: int | None = None,
    window_seconds: int | None = None,
    category: str = "",
    enabled: bool = True,
    dry_run: bool = False,
    webhook_url: str = "",
    created_by: User,
) -> KillRule:
    """Create a rule. Raises RequestRejected (bad input) or StateConflict (name taken)."""
    fields = _validated(
        {
            "name": name.strip(),
            "kind": kind,
            "pattern": pattern,
            "threshold": threshold,
            "window_seconds": window_seconds,
            "category": category,
            "webhook_url": webhook_url,
        }
    )
    try:
        with transaction.atomic():
            rule = KillRule.objects.create(
                **fields, enabled=enabled, dry_run=dry_run, created_by=created_by
            )
    except IntegrityError as exc:
        raise StateConflict("name", f"a rule named {name!r} already exists") from exc
    logger.warning("kill rule %r created by %s: %s", rule.name, created_by, _summary(rule))
    return rule


@transaction.atomic
def update_rule(*, rule: KillRule, changes: dict[str, Any]) -> KillRule:
    """Change a rule's switches or parameters; the result is validated as a whole."""
    rule = KillRule.objects.select_for_update().get(pk=rule.pk)
    allowed = {"enabled", "dry_run", "webhook_url", *_EMPTY}
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise RequestRejected(unknown[0], "cannot be changed")
    current = {name: getattr(rule, name) for name in ("kind", *_EMPTY, "webhook_url")}
    fields = _validated({**current, **changes})
    for name in (*_EMPTY, "webhook_url"):
        setattr(rule, name, fields[name])
    for name in ("enabled", "dry_run"):
        if name in changes:
            setattr(rule, name, changes[name])
    rule.save()
    logger.warning("kill rule %r changed (%s): %s", rule.name, sorted(changes), _summary(rule))
    return rule


# The only changes an operator (not an admin) may make: ones that stop a rule from killing.
DEFUSING_CHANGES = {"enabled": False, "dry_run": True}


def may_change(user: User, changes: dict[str, Any]) -> bool:
    """Admins change anything; an operator may only disable a rule or put it in dry run."""
    defusing = all(DEFUSING_CHANGES.get(name, object()) == value for name, value in changes.items())
    return has_role(user, Role.ADMIN) or (defusing and has_role(user, Role.OPERATOR))


SWITCHES = ("enabled", "dry_run")


def toggle_rule(*, rule: KillRule, switch: str, actor: User) -> KillRule:
    """Flip a rule's ``enabled`` or ``dry_run`` switch, with the API's permissions (see
    :func:`may_change`). Raises RequestRejected (not a switch) or PermissionDenied."""
    if switch not in SWITCHES:
        raise RequestRejected("field", f"must be one of {', '.join(SWITCHES)}")
    changes = {switch: not getattr(rule, switch)}
    if not may_change(actor, changes):
        raise PermissionDenied("only an admin may enable or arm a rule")
    return update_rule(rule=rule, changes=changes)


def _summary(rule: KillRule) -> str:
    what = rule.pattern or rule.category
    state = ("enabled" if rule.enabled else "disabled") + (", dry run" if rule.dry_run else "")
    return f"{rule.kind} {what} ({state})" if what else f"{rule.kind} ({state})"


# --- Evaluating rules --------------------------------------------------------------------------


@dataclass
class Trigger:
    """What made a rule fire, in words and by reference."""

    description: str
    at: datetime | None
    event_ids: list[str] = field(default_factory=list)
    signal: Signal | None = None


def action_matches(pattern: Rule, action: str, resource: str = "") -> bool:
    """Does a (stored) action with its resource match an action pattern?"""
    try:
        domain, verb, resource = split_action(action, resource or None)
    except ValueError:
        return False
    return (
        pattern.domain in ("*", domain)
        and pattern.action in ("*", verb)
        and pattern.matches_resource(resource)
    )


def _described(action: str, resource: str) -> str:
    return f"{action}:{resource}" if resource else action


def _pattern_trigger(rule: KillRule, denies: Sequence[ActionEvent]) -> Trigger | None:
    pattern = parse_rule(rule.pattern)
    matched = [e for e in denies if action_matches(pattern, e.action, e.resource)]
    if not matched:
        return None
    first = matched[0]
    described = f"denied {_described(first.action, first.resource)} (event {first.id})"
    if len(matched) > 1:
        described = f"{len(matched)} denies matching {rule.pattern!r}, first {described}"
    return Trigger(
        description=described,
        at=max(e.occurred_at for e in matched),
        event_ids=[str(e.id) for e in matched],
    )


def _rate_trigger(rule: KillRule, agent: Agent, denies: Sequence[ActionEvent]) -> Trigger | None:
    # kill_rule_kind_has_its_fields: a deny_rate row has both
    assert rule.threshold is not None and rule.window_seconds is not None
    pattern = parse_rule(rule.pattern) if rule.pattern else None
    fresh = {
        e.id: e.occurred_at
        for e in denies
        if pattern is None or action_matches(pattern, e.action, e.resource)
    }
    if not fresh:
        return None
    window = timedelta(seconds=rule.window_seconds)
    rows = ActionEvent.objects.filter(
        agent=agent,
        decision=ActionEvent.Decision.DENY,
        occurred_at__gte=min(fresh.values()) - window,
        occurred_at__lte=max(fresh.values()) + window,
    )
    counted_until = RuleMatch.objects.filter(rule=rule, agent=agent).aggregate(
        last=Max("trigger_at")
    )["last"]
    if counted_until is not None:  # denies a previous match counted do not count again
        rows = rows.filter(occurred_at__gt=counted_until)
    if rule.pattern:  # let the database skip the denies the pattern does not cover
        rows = matching_pattern(rows, rule.pattern)
    in_window: deque[tuple[Any, datetime, str, str]] = deque()
    fresh_in_window = 0
    ordered = rows.order_by("occurred_at", "seq").values_list(
        "id", "occurred_at", "action", "resource"
    )
    for row in ordered.iterator(chunk_size=2000):
        if pattern is not None and not action_matches(pattern, row[2], row[3]):
            continue
        in_window.append(row)
        fresh_in_window += row[0] in fresh
        while row[1] - in_window[0][1] > window:
            fresh_in_window -= in_window.popleft()[0] in fresh
        if len(in_window) > rule.threshold and fresh_in_window:
            scope = f" matching {rule.pattern!r}" if rule.pattern else ""
            return Trigger(
                description=(
                    f"{len(in_window)} denies{scope} within {rule.window_seconds} s (more than "
                    f"{rule.threshold}), latest {_described(row[2], row[3])} (event {row[0]})"
                ),
                at=row[1],
                event_ids=[str(r[0]) for r in in_window],
            )
    return None


def _reason(rule: KillRule, trigger: Trigger) -> str:
    reason = f"rule '{rule.name}': {trigger.description}"
    return reason if len(reason) <= MAX_REASON_LENGTH else reason[: MAX_REASON_LENGTH - 1] + "…"


def _fire(rule: KillRule, agent: Agent, trigger: Trigger) -> RuleMatch:
    """Record the match and, unless the rule is a dry run, kill the agent."""
    detected_at = timezone.now()
    with transaction.atomic():
        revocation = None
        if not rule.dry_run:
            try:
                revocation = services.revoke(
                    target=services.Target(Revocation.TargetType.AGENT, str(agent.pk)),
                    reason=_reason(rule, trigger),
                    actor=None,
                    source=Revocation.Source.RULE,
                )
            except StateConflict:
                logger.info(
                    "rule %r matched agent %s, which is already killed", rule.name, agent.pk
                )
        match = RuleMatch.objects.create(
            rule=rule,
            agent=agent,
            matched_at=detected_at,
            dry_run=rule.dry_run,
            trigger=trigger.description,
            trigger_at=trigger.at,
            event_ids=trigger.event_ids,
            signal=trigger.signal,
            revocation=revocation,
        )
        transaction.on_commit(lambda: notifications.notify(match), robust=True)
    logger.warning(
        "kill rule %r %s agent %s: %s",
        rule.name,
        "would kill (dry run)" if rule.dry_run else "killed" if revocation else "matched",
        agent.pk,
        trigger.description,
    )
    return match


def _evaluate(rules: Sequence[KillRule], agent: Agent, check) -> list[RuleMatch]:
    matches = []
    for rule in rules:
        try:
            trigger = check(rule)
            if trigger is not None:
                matches.append(_fire(rule, agent, trigger))
        except Exception:  # one broken rule must not stop the others
            logger.exception("kill rule %r failed for agent %s", rule.name, agent.pk)
    return matches


def evaluate_events(*, agent: Agent, events: Sequence[ActionEvent]) -> list[RuleMatch]:
    """Run the deny rules over a batch of action events just committed for ``agent``."""
    denies = [e for e in events if e.decision == ActionEvent.Decision.DENY]
    if not denies:
        return []
    rules = list(
        KillRule.objects.filter(
            enabled=True, kind__in=[KillRule.Kind.DENY_PATTERN, KillRule.Kind.DENY_RATE]
        )
    )

    def check(rule: KillRule) -> Trigger | None:
        if rule.kind == KillRule.Kind.DENY_PATTERN:
            return _pattern_trigger(rule, denies)
        return _rate_trigger(rule, agent, denies)

    return _evaluate(rules, agent, check)


def evaluate_signal(*, signal: Signal) -> list[RuleMatch]:
    """Run the signal rules for a signal just committed (nothing if it matched no agent)."""
    if signal.agent is None:
        return []
    rules = list(
        KillRule.objects.filter(enabled=True, kind=KillRule.Kind.SIGNAL, category=signal.category)
    )
    source = " ".join(
        part
        for part in (signal.source_host, f"({signal.source_ip})" if signal.source_ip else "")
        if part
    )
    description = f"signal #{signal.pk} {signal.category} from {source}"
    if signal.destination:
        description += f" to {signal.destination}"
    trigger = Trigger(description=description, at=signal.occurred_at, signal=signal)
    return _evaluate(rules, signal.agent, lambda rule: trigger)


# --- Reading -----------------------------------------------------------------------------------


def rule_matches(
    *, rule: str | None = None, agent: str | None = None, dry_run: str | None = None
) -> QuerySet[RuleMatch]:
    """Rule matches, newest first, filtered by rule id, agent id and dry run (query strings)."""
    queryset = RuleMatch.objects.select_related("rule", "revocation")
    if rule:
        queryset = queryset.filter(rule_id=database_id(rule, "rule"))
    if agent:
        queryset = queryset.filter(agent_id=agent_id(agent))
    if dry_run:
        queryset = queryset.filter(dry_run=boolean(dry_run, "dry_run"))
    return queryset
