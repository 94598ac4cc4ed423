"""Passport workflows: register agents, issue, renew, revoke, introspect, expire."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from actions.selectors import CopyStatus, agent_copies
from agent_passport.errors import PassportError, RuleError
from agent_passport.protocol import MAX_TOKEN_BYTES
from agent_passport.rules import parse_jurisdiction, parse_scope
from agent_passport.tokens import verify_token
from killswitch.models import Revocation
from killswitch.publisher import revocation_channel
from killswitch.selectors import blocking_revocations, current_epoch, describe_revocation
from killswitch.services import Target, revoke
from passports import signing
from passports.models import Agent, Passport
from registry.errors import RequestRejected, StateConflict


@dataclass(frozen=True)
class IssuedPassport:
    passport: Passport
    token: str
    claims: dict[str, Any]


def register_agent(
    *, name: str, fleet: str = "", description: str = "", host: str = "", owner: User
) -> Agent:
    return Agent.objects.create(
        name=name, fleet=fleet, description=description, host=host, owner=owner
    )


def _validated_ttl(ttl_seconds: int | None) -> int:
    ttl = settings.PASSPORT_DEFAULT_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    if ttl < 1 or ttl > settings.PASSPORT_MAX_TTL_SECONDS:
        raise RequestRejected(
            "ttl_seconds", f"must be between 1 and {settings.PASSPORT_MAX_TTL_SECONDS} seconds"
        )
    return ttl


def _require_issuable(agent: Agent) -> None:
    """Refuse a passport that would be dead on arrival: the agent is killed or suspended, or a
    fleet or global revocation stops it (lift that first)."""
    if agent.status != Agent.Status.ACTIVE:
        raise RequestRejected(
            "agent", f"agent {agent.id} is {agent.status}; no passport can be issued"
        )
    blocking = blocking_revocations(agent_id=agent.pk, fleet=agent.fleet).first()
    if blocking is not None:
        raise RequestRejected(
            "agent",
            f"agent {agent.id} is stopped by revocation #{blocking.pk} "
            f"({describe_revocation(blocking)}); no passport can be issued until it is lifted",
        )


@transaction.atomic
def issue_passport(
    *,
    agent: Agent,
    scope: list[str],
    jurisdiction: list[str],
    ttl_seconds: int | None,
    issued_by: User,
    agent_may_renew: bool = False,
    renewed_from: Passport | None = None,
    renewed_by_agent: bool = False,
) -> IssuedPassport:
    """Validate the rules, sign a token and record the passport. Raises RequestRejected.

    ``agent_may_renew`` lets the agent renew it itself (:func:`self_renew_passport`)."""
    agent = Agent.objects.select_for_update().get(pk=agent.pk)
    _require_issuable(agent)
    try:
        parse_scope(scope)
    except RuleError as exc:
        raise RequestRejected("scope", str(exc)) from exc
    if not scope:
        raise RequestRejected("scope", "at least one scope rule is required")
    try:
        jurisdiction = list(parse_jurisdiction(jurisdiction))
    except RuleError as exc:
        raise RequestRejected("jurisdiction", str(exc)) from exc
    ttl = _validated_ttl(ttl_seconds)

    now = timezone.now().replace(microsecond=0)
    expires_at = now + timedelta(seconds=ttl)
    jti = uuid.uuid4()
    claims = {
        "iss": settings.PASSPORT_ISSUER,
        "sub": str(agent.id),
        "aud": settings.PASSPORT_AUDIENCE,
        "jti": str(jti),
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(expires_at.timestamp()),
        "scope": list(scope),
        "jurisdiction": jurisdiction,
        "fleet": agent.fleet,
        "agent_name": agent.name,
        "rev": revocation_channel().as_claim(),
    }
    kid, token = signing.sign_claims(claims)
    if len(token) > MAX_TOKEN_BYTES:  # no verifier would accept it, ours included
        raise RequestRejected(
            "scope",
            f"the passport would be a {len(token)}-byte token and verification accepts at most "
            f"{MAX_TOKEN_BYTES}: use fewer or shorter scope rules",
        )
    passport = Passport.objects.create(
        jti=jti,
        agent=agent,
        scope=list(scope),
        jurisdiction=jurisdiction,
        issued_at=now,
        not_before=now,
        expires_at=expires_at,
        kid=kid,
        issued_by=issued_by,
        agent_may_renew=agent_may_renew,
        renewed_from=renewed_from,
        renewed_by_agent=renewed_by_agent,
    )
    return IssuedPassport(passport=passport, token=token, claims=claims)


def effective_status(passport: Passport, *, now: datetime | None = None) -> str:
    """Stored status, except that an active passport past its expiry reads as expired."""
    if passport.status == Passport.Status.ACTIVE and passport.expires_at <= (now or timezone.now()):
        return Passport.Status.EXPIRED
    return passport.status


def _validated_grace(grace_seconds: int) -> int:
    if not 0 <= grace_seconds <= settings.PASSPORT_RENEW_MAX_GRACE_SECONDS:
        raise RequestRejected(
            "grace_seconds",
            f"must be between 0 and {settings.PASSPORT_RENEW_MAX_GRACE_SECONDS} seconds",
        )
    return grace_seconds


@transaction.atomic
def renew_passport(
    *,
    passport: Passport,
    ttl_seconds: int | None,
    issued_by: User,
    grace_seconds: int = 0,
    by_agent: bool = False,
) -> IssuedPassport:
    """Issue a successor with the same scope, jurisdiction and permission to self-renew; the
    old passport is superseded. ``by_agent``: the agent asked (see :func:`self_renew_passport`).

    Guards stop accepting the old token ``grace_seconds`` later (0: at once), through a
    passport revocation on the kill-switch channel (see :func:`stop_superseded_passport`).
    """
    _validated_grace(grace_seconds)
    passport = Passport.objects.select_for_update().get(pk=passport.pk)
    status = effective_status(passport)
    if status != Passport.Status.ACTIVE:
        raise StateConflict("jti", f"passport is {status}; only an active passport can be renewed")
    issued = issue_passport(
        agent=passport.agent,
        scope=passport.scope,
        jurisdiction=passport.jurisdiction,
        ttl_seconds=ttl_seconds,
        issued_by=issued_by,
        agent_may_renew=passport.agent_may_renew,
        renewed_from=passport,
        renewed_by_agent=by_agent,
    )
    passport.status = Passport.Status.SUPERSEDED
    passport.save(update_fields=["status"])
    if grace_seconds == 0:
        stop_superseded_passport(jti=passport.jti)
    else:
        transaction.on_commit(
            lambda: stop_superseded_passport_later.apply_async(
                args=[str(passport.jti)], countdown=grace_seconds
            )
        )
    return issued


class RenewalNotAllowed(RequestRejected):
    """The passport does not let its agent renew it (the operator did not allow it)."""

    status_code = 403
    reason = "renewal_not_allowed"


class NotActive(StateConflict):
    """The passport or its agent is not active: nothing is left to renew."""

    reason = "not_active"


@transaction.atomic
def self_renew_passport(*, passport: Passport, grace_seconds: int = 0) -> IssuedPassport:
    """The agent renews its own passport: allowed only if the operator said so when issuing
    (``agent_may_renew``), for an active, unrevoked passport of an active agent that no
    revocation stops. The successor has the same scope, jurisdiction and lifetime as this
    passport and is recorded as issued by the operator who issued it, ``renewed_by_agent``.
    The agent chooses nothing but an optional grace period for its old token."""
    _validated_grace(grace_seconds)
    passport = Passport.objects.select_for_update().select_related("agent").get(pk=passport.pk)
    if not passport.agent_may_renew:
        raise RenewalNotAllowed(
            "passport", "this passport does not allow its agent to renew it; ask an operator"
        )
    agent = passport.agent
    status = effective_status(passport)
    if status != Passport.Status.ACTIVE:
        raise NotActive("passport", f"passport is {status}; only an active passport is renewed")
    if agent.status != Agent.Status.ACTIVE:
        raise NotActive("passport", f"agent is {agent.status}; its passport is not renewed")
    blocking = blocking_revocations(agent_id=agent.pk, fleet=agent.fleet, jti=passport.jti)
    if (revocation := blocking.first()) is not None:
        raise NotActive("passport", f"{describe_revocation(revocation)}; not renewed")
    lifetime = int((passport.expires_at - passport.not_before).total_seconds())
    return renew_passport(
        passport=passport,
        ttl_seconds=min(lifetime, settings.PASSPORT_MAX_TTL_SECONDS),
        issued_by=passport.issued_by,
        grace_seconds=grace_seconds,
        by_agent=True,
    )


def superseded_reason(successor: Passport) -> str:
    """Why a renewed passport was revoked (the agent's timeline shows it)."""
    by_agent = " (renewed by the agent itself)" if successor.renewed_by_agent else ""
    return f"superseded by renewal to passport {successor.jti}{by_agent}"


def stop_superseded_passport(*, jti: uuid.UUID | str) -> bool:
    """Revoke a superseded passport on the kill-switch channel, so offline guards refuse it too
    (introspection already answers ``superseded``). Idempotent; False if nothing was left to do."""
    passport = Passport.objects.select_related("renewed_by").filter(jti=jti).first()
    if passport is None or passport.status != Passport.Status.SUPERSEDED:
        return False
    if passport.revoked_at is not None or passport.expires_at <= timezone.now():
        return False
    try:
        revoke(
            target=Target(Revocation.TargetType.PASSPORT, str(passport.jti)),
            reason=superseded_reason(passport.renewed_by),
            actor=passport.renewed_by.issued_by,
            source=Revocation.Source.API,
        )
    except StateConflict:  # revoked meanwhile by someone else
        return False
    return True


@shared_task(
    name="passports.tasks.stop_superseded_passport",  # the established name, queued messages carry
    acks_late=True,
)
def stop_superseded_passport_later(jti: str) -> bool:
    """The delayed half of a renewal with a grace period."""
    return stop_superseded_passport(jti=jti)


def stop_overdue_superseded_passports(*, now: datetime | None = None) -> int:
    """Safety net for lost delayed stops: revoke every superseded, unexpired passport whose
    successor is older than the longest grace period. Returns how many were stopped."""
    now = now or timezone.now()
    overdue = Passport.objects.filter(
        status=Passport.Status.SUPERSEDED,
        revoked_at__isnull=True,
        expires_at__gt=now,
        renewed_by__issued_at__lte=now
        - timedelta(seconds=settings.PASSPORT_RENEW_MAX_GRACE_SECONDS),
    )
    return sum(stop_superseded_passport(jti=jti) for jti in overdue.values_list("jti", flat=True))


def expire_passports(*, now: datetime | None = None) -> int:
    """Mark active passports past their expiry as expired. Returns how many changed."""
    now = now or timezone.now()
    return Passport.objects.filter(status=Passport.Status.ACTIVE, expires_at__lte=now).update(
        status=Passport.Status.EXPIRED
    )


def _inactive(reason: str, detail: str) -> dict[str, Any]:
    return {"active": False, "reason": reason, "detail": detail}


def verify_passport_token(token: str, *, leeway: float = 0) -> dict[str, Any]:
    """Offline checks of a token against this registry's keys, issuer and audience."""
    return verify_token(
        token,
        signing.verification_key,
        issuer=settings.PASSPORT_ISSUER,
        audience=settings.PASSPORT_AUDIENCE,
        leeway=leeway,
    )


def introspect(token: str) -> dict[str, Any]:
    """RFC 7662-style introspection: signature and claims offline, then the database status."""
    try:
        claims = verify_passport_token(token)
    except PassportError as exc:
        return _inactive(exc.reason, str(exc))
    try:
        passport = Passport.objects.select_related("agent").get(jti=uuid.UUID(str(claims["jti"])))
    except (ValueError, Passport.DoesNotExist):
        return _inactive("unknown_passport", "no passport with this jti was issued here")
    if str(passport.agent_id) != claims["sub"]:
        return _inactive("malformed", "the token subject does not match the passport's agent")
    status = effective_status(passport)
    if status == Passport.Status.SUPERSEDED:  # clearer than the revocation renewal publishes
        return _inactive(status, f"passport is {status}")
    blocking = blocking_revocations(
        agent_id=passport.agent_id, fleet=passport.agent.fleet, jti=passport.jti
    ).first()
    if blocking is not None:
        return _inactive("revoked", describe_revocation(blocking))
    if status != Passport.Status.ACTIVE:
        return _inactive(status, f"passport is {status}")
    if passport.agent.status != Agent.Status.ACTIVE:
        return _inactive(f"agent_{passport.agent.status}", f"agent is {passport.agent.status}")
    return {"active": True, "token_type": "passport", **claims}


@dataclass(frozen=True)
class RunStatus:
    """Whether an agent may run right now (``allowed``), and every reason it may not."""

    agent: uuid.UUID
    status: str
    allowed: bool
    reasons: list[str]
    active_passports: int
    epoch: int  # the registry's current revocation epoch
    last_seen_at: datetime | None
    last_seen_epoch: int | None
    copies: list[CopyStatus]


def agent_run_status(agent: Agent) -> RunStatus:
    """Whether the agent may run right now, and every reason it may not."""
    reasons = [
        describe_revocation(r) for r in blocking_revocations(agent_id=agent.pk, fleet=agent.fleet)
    ]
    if agent.status != Agent.Status.ACTIVE and not reasons:
        reasons.append(f"agent is {agent.status}")
    now = timezone.now()
    active_passports = agent.passports.filter(
        status=Passport.Status.ACTIVE, expires_at__gt=now
    ).count()
    if not active_passports:
        reasons.append("agent holds no active passport")
    return RunStatus(
        agent=agent.pk,
        status=agent.status,
        allowed=not reasons,
        reasons=reasons,
        active_passports=active_passports,
        epoch=current_epoch(),
        last_seen_at=agent.last_seen_at,
        last_seen_epoch=agent.last_seen_epoch,
        copies=agent_copies(agent),
    )
