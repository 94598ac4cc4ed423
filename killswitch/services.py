"""Revoking and reinstating: one passport, one agent, a fleet, or everything.

The database is the source of truth. Each revoke and each lift takes the next epoch and, once
committed, is pushed to Redis (see :mod:`killswitch.publisher`); if Redis is down the push is
retried by Celery and the periodic reconciliation heals whatever is still missing.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from killswitch import publisher
from killswitch.models import ALL_AGENTS, EpochCounter, Revocation
from passports.models import Agent, Passport
from registry.errors import RequestRejected, StateConflict

logger = logging.getLogger(__name__)

RETIRE_BATCH = 1000  # passport revocations retired per run (the next run takes the rest)


@dataclass(frozen=True)
class Target:
    type: str
    value: str


def next_epoch() -> int:
    """Take the next epoch; must run inside the transaction that records the change."""
    counter, _ = EpochCounter.objects.select_for_update().get_or_create(pk=1)
    counter.value += 1
    counter.save(update_fields=["value"])
    return counter.value


def _parse_uuid(value: object, field: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise RequestRejected("target", f"{field} must be a UUID") from exc


def parse_target(data: object) -> Target:
    """Parse ``{"passport": jti}``, ``{"agent": id}``, ``{"fleet": name}`` or ``{"all": true}``."""
    if not isinstance(data, dict) or len(data) != 1:
        raise RequestRejected(
            "target",
            'must be one of {"passport": jti}, {"agent": id}, {"fleet": name}, {"all": true}',
        )
    ((kind, value),) = data.items()
    if kind == "passport":
        jti = _parse_uuid(value, "passport")
        if not Passport.objects.filter(jti=jti).exists():
            raise RequestRejected("target", f"no passport with jti {jti}")
        return Target(Revocation.TargetType.PASSPORT, jti)
    if kind == "agent":
        agent_id = _parse_uuid(value, "agent")
        if not Agent.objects.filter(pk=agent_id).exists():
            raise RequestRejected("target", f"no agent with id {agent_id}")
        return Target(Revocation.TargetType.AGENT, agent_id)
    if kind == "fleet":
        if not isinstance(value, str) or not value:
            raise RequestRejected("target", "fleet must be a non-empty fleet label")
        if not Agent.objects.filter(fleet=value).exists():
            raise RequestRejected("target", f"no agent belongs to fleet {value!r}")
        return Target(Revocation.TargetType.FLEET, value)
    if kind == "all":
        if value is not True:
            raise RequestRejected("target", 'use {"all": true} to stop every agent')
        return Target(Revocation.TargetType.ALL, ALL_AGENTS)
    raise RequestRejected("target", f"unknown target {kind!r}: use passport, agent, fleet or all")


def _after_commit_push() -> None:
    transaction.on_commit(publisher.push_pending_or_schedule)


def revoke(
    *,
    target: Target,
    reason: str,
    actor: User | None,
    source: str,
    suspend: bool = False,
) -> Revocation:
    """Record a revocation and, after commit, push it to agents.

    ``suspend`` (agent targets only) records the agent as suspended rather than killed: both
    stop it at once; the difference is what operators intend (investigate vs. retire).
    Raises RequestRejected (bad input) or StateConflict (already revoked).
    """
    reason = (reason or "").strip()
    if not reason:
        raise RequestRejected("reason", "a reason is required")
    if source not in Revocation.Source.values:
        raise RequestRejected("source", f"must be one of {', '.join(Revocation.Source.values)}")
    try:
        with transaction.atomic():
            epoch = next_epoch()
            now = timezone.now()
            if target.type == Revocation.TargetType.PASSPORT:
                passport = Passport.objects.select_for_update().get(jti=target.value)
                if passport.revoked_at is not None:
                    raise StateConflict("target", "passport is already revoked")
                if passport.status != Passport.Status.SUPERSEDED:  # superseded stays as it is
                    passport.status = Passport.Status.REVOKED
                passport.revoked_at, passport.revoked_by, passport.revoked_reason = (
                    now,
                    actor,
                    reason,
                )
                passport.save(
                    update_fields=["status", "revoked_at", "revoked_by", "revoked_reason"]
                )
            elif target.type == Revocation.TargetType.AGENT:
                agent = Agent.objects.select_for_update().get(pk=target.value)
                if agent.status != Agent.Status.ACTIVE:
                    raise StateConflict("target", f"agent is already {agent.status}")
                agent.status = Agent.Status.SUSPENDED if suspend else Agent.Status.KILLED
                agent.save(update_fields=["status"])
            revocation = Revocation.objects.create(
                epoch=epoch,
                target_type=target.type,
                target_value=target.value,
                reason=reason,
                source=source,
                actor=actor,
            )
            _after_commit_push()
    except IntegrityError as exc:
        raise StateConflict("target", f"{target.type} {target.value} is already revoked") from exc
    logger.warning("revoked %s %s (epoch %s, source %s)", target.type, target.value, epoch, source)
    return revocation


def lift(*, revocation: Revocation, actor: User | None, reason: str = "") -> Revocation:
    """Reinstate what a revocation stopped. Passport revocations are permanent."""
    with transaction.atomic():
        revocation = Revocation.objects.select_for_update().get(pk=revocation.pk)
        if revocation.target_type == Revocation.TargetType.PASSPORT:
            raise StateConflict("id", "a revoked passport stays revoked; issue a new passport")
        if revocation.lifted_at is not None:
            raise StateConflict("id", f"revocation #{revocation.pk} was already lifted")
        revocation.lift_epoch = next_epoch()
        revocation.lifted_at = timezone.now()
        revocation.lifted_by = actor
        revocation.lift_reason = (reason or "").strip()
        revocation.save(update_fields=["lift_epoch", "lifted_at", "lifted_by", "lift_reason"])
        if revocation.target_type == Revocation.TargetType.AGENT:
            Agent.objects.filter(pk=revocation.target_value).exclude(
                status=Agent.Status.ACTIVE
            ).update(status=Agent.Status.ACTIVE)
        _after_commit_push()
    logger.warning("lifted revocation #%s (epoch %s)", revocation.pk, revocation.lift_epoch)
    return revocation


def retire_expired_passport_revocations(*, now: datetime | None = None) -> int:
    """Take revocations of long-expired passports off the channel, as lifts at new epochs.

    Every renewal revokes the old passport, so without this each agent's snapshot would grow by
    one entry per renewal for good. A passport ``PASSPORT_REVOCATION_RETENTION_SECONDS`` past its
    expiry is refused by its expiry alone; its record stays revoked (introspection still says
    so), only the channel entry goes. Returns how many were retired.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.PASSPORT_REVOCATION_RETENTION_SECONDS)
    active = Revocation.objects.filter(
        target_type=Revocation.TargetType.PASSPORT, lifted_at__isnull=True
    )
    expired = {
        str(jti)
        for jti in Passport.objects.filter(
            jti__in=list(active.values_list("target_value", flat=True)), expires_at__lte=cutoff
        ).values_list("jti", flat=True)[:RETIRE_BATCH]
    }
    if not expired:
        return 0
    retired = 0
    with transaction.atomic():
        retiring = active.select_for_update().filter(target_value__in=expired).order_by("pk")
        for revocation in retiring:
            retired += 1
            revocation.lift_epoch = next_epoch()
            revocation.lifted_at = now
            revocation.lift_reason = "retired from the channel: the passport has expired"
            revocation.save(update_fields=["lift_epoch", "lifted_at", "lift_reason"])
        _after_commit_push()
    logger.info("retired %s revocations of expired passports from the channel", retired)
    return retired
