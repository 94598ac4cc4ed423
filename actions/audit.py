"""The action log's tamper evidence on the server: chaining at ingestion, signed checkpoints,
verification and export. The encoding and the verifier are the SDK's (agent_passport.audit), so
an export verifies offline exactly as the registry verifies itself."""

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from actions.models import ActionEvent, AuditCheckpoint
from agent_passport.audit import (
    GENESIS,
    ChainReport,
    b64url,
    checkpoint_payload,
    event_hash,
    verify_log,
)
from passports import signing
from passports.models import Agent


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_document(event: ActionEvent) -> dict[str, Any]:
    """The canonical fields of an event (what its hash covers), plus the stored hash."""
    return {
        "agent": str(event.agent_id),
        "seq": event.seq,
        "id": str(event.id),
        "passport": str(event.passport_id),
        "fleet": event.fleet,
        "action": event.action,
        "resource": event.resource,
        "jurisdiction": event.jurisdiction,
        "decision": event.decision,
        "reason": event.reason,
        "occurred_at": iso(event.occurred_at),
        "received_at": iso(event.received_at),
        "details": event.details,
        "prev": event.prev_hash,
        "hash": event.hash,
    }


def chain(documents: list[dict[str, Any]], *, agent_id: Any) -> None:
    """Give new events of one agent, as event documents (see :func:`event_document`) without
    ``seq``, ``prev`` and ``hash``, their place in its chain. Caller holds the agent's lock."""
    head = (
        ActionEvent.objects.filter(agent_id=agent_id)
        .order_by("-seq")
        .values_list("seq", "hash")
        .first()
    )
    seq, prev = head or (0, GENESIS)
    for document in documents:
        seq += 1
        document["seq"], document["prev"] = seq, prev
        document["hash"] = prev = event_hash(document)


def checkpoint_document(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "agent": str(checkpoint.agent_id),
        "count": checkpoint.count,
        "head": checkpoint.head_hash,
        "at": iso(checkpoint.created_at),
        "kid": checkpoint.kid,
        "signature": checkpoint.signature,
    }


@transaction.atomic
def create_checkpoints(*, everyone: bool = False) -> int:
    """Sign a checkpoint for every chain that grew since its last one (all chains if
    ``everyone``, e.g. after a key rotation). Returns how many were signed."""
    heads = ActionEvent.objects.values("agent_id").annotate(top=Max("seq"))
    latest = {
        row["agent_id"]: row["last"]
        for row in AuditCheckpoint.objects.values("agent_id").annotate(last=Max("count"))
    }
    signed = 0
    now = timezone.now()
    for row in heads:
        if not everyone and latest.get(row["agent_id"]) == row["top"]:
            continue
        head = ActionEvent.objects.get(agent_id=row["agent_id"], seq=row["top"]).hash
        checkpoint = AuditCheckpoint(
            agent_id=row["agent_id"], count=row["top"], head_hash=head, created_at=now
        )
        kid, signature = signing.sign_bytes(checkpoint_payload(checkpoint_document(checkpoint)))
        checkpoint.kid, checkpoint.signature = kid, b64url(signature)
        checkpoint.save()
        signed += 1
    return signed


def _events_in_chain_order(agents: QuerySet[Agent] | None = None) -> Iterator[dict[str, Any]]:
    events = ActionEvent.objects.order_by("agent_id", "seq")
    if agents is not None:
        events = events.filter(agent__in=agents)
    for event in events.iterator(chunk_size=2000):
        yield event_document(event)


def _checkpoints(agents: QuerySet[Agent] | None = None) -> Iterable[dict[str, Any]]:
    checkpoints = AuditCheckpoint.objects.order_by("agent_id", "count", "created_at")
    if agents is not None:
        checkpoints = checkpoints.filter(agent__in=agents)
    return [checkpoint_document(c) for c in checkpoints]


def verify() -> ChainReport:
    """Recompute every chain and check it against every signed checkpoint.

    One chain at a time, so memory is bounded by the longest chain, not the whole log.
    """
    keys = signing.all_public_keys()
    total = ChainReport()
    agents = set(ActionEvent.objects.values_list("agent_id", flat=True).distinct())
    agents |= set(AuditCheckpoint.objects.values_list("agent_id", flat=True).distinct())
    for agent in sorted(agents, key=str):
        chain_agents = Agent.objects.filter(pk=agent)
        report = verify_log(_events_in_chain_order(chain_agents), _checkpoints(chain_agents), keys)
        total.chains += report.chains
        total.events += report.events
        total.checkpoints += report.checkpoints
        total.problems += report.problems
    return total


def export_jsonl(agents: QuerySet[Agent] | None = None) -> Iterator[str]:
    """Whole chains (so they verify from genesis), then their checkpoints; one JSON per line."""
    yield json.dumps({"type": "export", "v": 1, "exported_at": iso(timezone.now())}) + "\n"
    for document in _events_in_chain_order(agents):
        yield json.dumps({"type": "event", **document}, ensure_ascii=False) + "\n"
    for document in _checkpoints(agents):
        yield json.dumps({"type": "checkpoint", **document}) + "\n"
