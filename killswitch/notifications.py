"""Telling operators that a kill rule fired.

The :class:`~killswitch.models.RuleMatch` row is the console notification (``GET
/api/v1/rules/matches``). A rule with a ``webhook_url`` also gets a JSON POST, delivered by the
Celery task :func:`notify_webhook` with bounded retries.
"""

import logging
from typing import Any

import requests
from celery import shared_task
from django.conf import settings
from django.utils import timezone

from killswitch.models import RuleMatch

logger = logging.getLogger(__name__)

USER_AGENT = "agent-passport-registry/1 (kill-rule webhook)"


class WebhookServerError(requests.HTTPError):
    """The receiver answered 5xx or 429: worth retrying."""


def notify(match: RuleMatch) -> None:
    """Called once a match is committed: log it and queue the webhook, if the rule has one."""
    logger.warning(
        "kill rule %r matched agent %s (match #%s%s)",
        match.rule.name,
        match.agent_id,
        match.pk,
        ", dry run" if match.dry_run else "",
    )
    if not match.rule.webhook_url:
        return
    try:
        notify_webhook.delay(match.pk)
    except Exception as exc:  # the broker (Redis) may be down; the match row is still there
        logger.error(
            "could not queue the webhook for rule match #%s (%s)", match.pk, exc.__class__.__name__
        )


def outcome(match: RuleMatch) -> str:
    if match.dry_run:
        return "dry_run"
    return "revoked" if match.revocation_id else "already_killed"


def webhook_payload(match: RuleMatch) -> dict[str, Any]:
    rule, agent, revocation = match.rule, match.agent, match.revocation
    return {
        "type": "kill_rule_match",
        "match": match.pk,
        "matched_at": match.matched_at.isoformat(),
        "rule": {"id": rule.pk, "name": rule.name, "kind": rule.kind},
        "agent": {"id": str(agent.pk), "name": agent.name, "fleet": agent.fleet},
        "dry_run": match.dry_run,
        "outcome": outcome(match),
        "trigger": match.trigger,
        "event_ids": match.event_ids,
        "signal": match.signal_id,
        "revocation": revocation.pk if revocation else None,
        "revocation_epoch": revocation.epoch if revocation else None,
    }


def deliver_webhook(*, match_id: int) -> bool:
    """POST the match to its rule's webhook once. True if delivered (now or before).

    Raises requests.RequestException for what is worth retrying (network errors, 5xx, 429);
    any other answer is logged and given up on.
    """
    match = (
        RuleMatch.objects.select_related("rule", "agent", "revocation").filter(pk=match_id).first()
    )
    if match is None or not match.rule.webhook_url:
        return False
    if match.notified_at is not None:  # a redelivered task (acks_late)
        return True
    response = requests.post(
        match.rule.webhook_url,
        json=webhook_payload(match),
        headers={"User-Agent": USER_AGENT},
        timeout=settings.KILL_RULE_WEBHOOK_TIMEOUT_SECONDS,
        allow_redirects=False,
    )
    if response.status_code >= 500 or response.status_code == 429:
        raise WebhookServerError(
            f"webhook answered {response.status_code}; will retry", response=response
        )
    if not 200 <= response.status_code < 300:
        logger.error(
            "webhook for rule match #%s answered %s; not retrying",
            match_id,
            response.status_code,
        )
        return False
    RuleMatch.objects.filter(pk=match_id, notified_at__isnull=True).update(
        notified_at=timezone.now()
    )
    return True


@shared_task(
    name="killswitch.tasks.notify_webhook",  # the established name, which queued messages carry
    acks_late=True,
    autoretry_for=(requests.RequestException,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def notify_webhook(match_id: int) -> bool:
    """POST a kill-rule match to its rule's webhook; retried on network errors and 5xx."""
    return deliver_webhook(match_id=match_id)
