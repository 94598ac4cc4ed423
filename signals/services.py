"""Recording external signals and matching them to the agent they are about."""

import ipaddress
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from actions.models import MAX_FUTURE_SKEW
from killswitch import rules
from passports.models import Agent
from registry.errors import RequestRejected
from signals.models import Signal

logger = logging.getLogger(__name__)

MAX_RAW_BYTES = 16 * 1024
_ADDRESS_SEPARATORS = re.compile(r"[\s()]+")
_NEVER = datetime.min.replace(tzinfo=UTC)


def _normalized(value: str) -> str:
    """Lower-case a host name; write an IP address in its canonical form (IPv4-mapped → IPv4)."""
    value = value.strip().lower()
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address)


def address_tokens(address: str) -> set[str]:
    """The host and IP in an SDK heartbeat address, ``"host (ip)"`` or ``"ip"``."""
    return {_normalized(token) for token in _ADDRESS_SEPARATORS.split(address) if token}


def match_agents(*, source_host: str = "", source_ip: str | None = None) -> list[Agent]:
    """Agents whose host, or heartbeat address token, equals the host or IP; best match first.

    Active agents first; among them, one whose registered host matches comes before any that
    matches only by heartbeat: the host was set by an operator, a heartbeat's host is what the
    agent says about itself, so an agent cannot draw another's signals onto itself by claiming
    its host (it stays listed in ``other_candidates``). Then the most recently seen.
    """
    needles = {_normalized(value) for value in (source_host, source_ip) if value}
    if not needles:
        return []
    prefilter = Q()
    for needle in needles:
        prefilter |= Q(host__iexact=needle) | Q(last_seen_address__icontains=needle)
    matched = [
        agent
        for agent in Agent.objects.filter(prefilter)
        if _normalized(agent.host) in needles or address_tokens(agent.last_seen_address) & needles
    ]
    matched.sort(
        key=lambda a: (
            a.status == Agent.Status.ACTIVE,
            _normalized(a.host) in needles,
            a.last_seen_at or _NEVER,
            a.created_at,
        ),
        reverse=True,
    )
    return matched


def _check_raw(raw: Any) -> Any:
    size = len(json.dumps(raw, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_RAW_BYTES:
        raise RequestRejected(
            "raw", f"is {size} bytes serialized; at most {MAX_RAW_BYTES} bytes are kept"
        )
    return raw


@transaction.atomic
def record_signal(
    *,
    occurred_at: datetime,
    category: str,
    source_host: str = "",
    source_ip: str | None = None,
    destination: str = "",
    raw: Any = None,
    reported_by: User,
) -> Signal:
    """Store a signal matched to its agent; after commit, the kill rules for signals run.

    Raises RequestRejected naming the field for input no caller should send.
    """
    if category not in Signal.Category.values:
        raise RequestRejected("category", f"must be one of {', '.join(Signal.Category.values)}")
    if not source_host and not source_ip:
        raise RequestRejected("source_host", "give source_host or source_ip (or both)")
    now = timezone.now()
    if occurred_at > now + MAX_FUTURE_SKEW:
        minutes = int(MAX_FUTURE_SKEW.total_seconds() // 60)
        raise RequestRejected("occurred_at", f"is more than {minutes} minutes in the future")
    raw = _check_raw({} if raw is None else raw)
    candidates = match_agents(source_host=source_host, source_ip=source_ip)
    signal = Signal.objects.create(
        received_at=now,
        occurred_at=occurred_at,
        source_host=source_host,
        source_ip=_normalized(source_ip) if source_ip else None,
        destination=destination,
        category=category,
        raw=raw,
        reported_by=reported_by,
        agent=candidates[0] if candidates else None,
        other_candidates=[str(agent.pk) for agent in candidates[1:]],
    )
    if signal.agent_id is not None:
        transaction.on_commit(lambda: _evaluate_rules(signal), robust=True)
    logger.info(
        "signal #%s %s from %s matched agent %s",
        signal.pk,
        category,
        source_host or source_ip,
        signal.agent_id,
    )
    return signal


def _evaluate_rules(signal: Signal) -> None:
    try:
        rules.evaluate_signal(signal=signal)
    except Exception:  # a rule failure must never lose the signal
        logger.exception("kill rules failed for signal #%s", signal.pk)
