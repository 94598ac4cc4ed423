"""Action reporting: store the events an agent reports (once per id) and record its heartbeat.

Also signing-key rotation, which re-signs every audit chain (``passports`` knows nothing of the
audit log, so the workflow lives here rather than there)."""

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Q
from django.db.models.base import ModelState
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from actions import audit, transparency
from actions.models import ActionEvent, AgentCopy
from agent_passport.audit import timestamp
from killswitch import rules
from passports import signing
from passports.models import Agent, Passport, SigningKey
from registry.errors import ConcurrentConflict

logger = logging.getLogger(__name__)

_IDS_PER_QUERY = 500  # stays under SQLite's bound-parameter limit


class ReportedAction(TypedDict):
    """One validated event, in model field names."""

    id: uuid.UUID
    action: str
    resource: str
    jurisdiction: str
    decision: str
    reason: str
    occurred_at: datetime
    details: dict[str, Any]


class SupervisorStop(TypedDict):
    epoch: int | None  # the revocation epoch that caused it (None: expiry or stale state)
    cause: str
    processes: int
    sigkilled: int
    at: datetime


class Supervisor(TypedDict):
    mechanism: str
    child_pid: int | None
    processes: int
    state: str
    stopped: SupervisorStop | None


class Heartbeat(TypedDict, total=False):
    epoch: int | None  # the last revocation epoch the agent applied
    digest: str  # revocations_digest of the revocations it holds at that epoch
    host: str
    pid: int | None
    dropped: int  # events the SDK lost since its last acknowledged heartbeat
    supervisor: Supervisor | None  # present when the copy is a supervisor


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    receipt: dict[str, object]  # transparency.receipt() of every event of the batch


def _chunks(ids: Sequence[uuid.UUID]) -> Iterator[Sequence[uuid.UUID]]:
    for start in range(0, len(ids), _IDS_PER_QUERY):
        yield ids[start : start + _IDS_PER_QUERY]


EVENT_TABLE = ActionEvent._meta.db_table
# Every column of the event table, in model order; rows are built as dicts of these.
EVENT_COLUMNS: tuple[str, ...] = tuple(
    str(field.column) for field in ActionEvent._meta.concrete_fields
)
_DETAILS = EVENT_COLUMNS.index("details")  # jsonb: COPY takes its JSON text


@transaction.atomic
def ingest_actions(
    *,
    passport: Passport,
    events: Sequence[ReportedAction],
    heartbeat: Heartbeat | None,
    remote_addr: str,
) -> IngestResult:
    """Store ``events`` for the passport's agent; ids already stored count as duplicates.

    The agent, its fleet and the passport come from the authenticated passport, never from the
    events. The heartbeat is recorded first: on PostgreSQL its UPDATE locks the agent's row until
    commit, so two batches of one agent (a retry racing the original) are counted one after the
    other; SQLite serialises all writers anyway. Rows are plain dicts (no model instances) and
    go to PostgreSQL with COPY: ingestion is CPU-bound, and both cut its cost per event.
    """
    record_heartbeat(
        agent_id=passport.agent_id,
        passport_id=passport.jti,
        heartbeat=heartbeat,
        remote_addr=remote_addr,
    )
    unique: dict[uuid.UUID, ReportedAction] = {}
    for event in events:
        unique.setdefault(event["id"], event)  # a repeated id within the batch is a duplicate
    stored = _stored_leaves(list(unique))
    rows = _chained_rows(
        passport, [event for event_id, event in unique.items() if event_id not in stored]
    )
    if rows:  # last: other batches wait for this one's commit from here on
        first = transparency.reserve_leaves(len(rows))
        for offset, row in enumerate(rows):
            row["leaf_index"] = first + offset
    try:
        with transaction.atomic():
            _insert(rows)
    except IntegrityError as exc:  # an id stored meanwhile by another agent: let the SDK retry
        raise ConcurrentConflict("events", "an event id was stored concurrently; retry") from exc
    if rows:  # the kill rules see the batch once it is committed
        agent = passport.agent
        transaction.on_commit(lambda: _evaluate_rules(agent, rows), robust=True)
    leaves = sorted([*stored.values(), *((row["leaf_index"], row["hash"]) for row in rows)])
    return IngestResult(
        accepted=len(rows),
        duplicates=len(events) - len(rows),
        receipt=transparency.receipt(leaves),
    )


def _stored_leaves(ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, str]]:
    """(leaf index, hash) of the events among ``ids`` already stored."""
    if not ids:
        return {}
    if connection.vendor == "postgresql":  # one query, the ids as one array literal
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, leaf_index, hash FROM {connection.ops.quote_name(EVENT_TABLE)} "  # noqa: S608
                "WHERE id = ANY(%s::uuid[])",
                ["{" + ",".join(map(str, ids)) + "}"],
            )
            return {event_id: (index, value) for event_id, index, value in cursor.fetchall()}
    stored: dict[uuid.UUID, tuple[int, str]] = {}
    for chunk in _chunks(ids):
        known = ActionEvent.objects.filter(id__in=chunk).values_list("id", "leaf_index", "hash")
        stored.update((event_id, (index, value)) for event_id, index, value in known)
    return stored


def _chained_rows(passport: Passport, events: list[ReportedAction]) -> list[dict[str, Any]]:
    """Rows (column name -> value) of the new events, with their place in the agent's chain
    (the caller holds the agent's lock), built from event documents without model instances."""
    if not events:
        return []
    agent_id, passport_id, fleet = passport.agent_id, passport.jti, passport.agent.fleet
    received_at = timezone.now()
    shared = {
        "agent": str(agent_id),
        "passport": str(passport_id),
        "fleet": fleet,
        "received_at": timestamp(received_at),
    }
    documents: list[dict[str, Any]] = [
        {**event, **shared, "id": str(event["id"]), "occurred_at": timestamp(event["occurred_at"])}
        for event in events
    ]
    audit.chain(documents, agent_id=agent_id)
    return [
        {
            **event,
            "passport_id": passport_id,
            "agent_id": agent_id,
            "fleet": fleet,
            "received_at": received_at,
            "seq": document["seq"],
            "prev_hash": document["prev"],
            "hash": document["hash"],
        }
        for event, document in zip(events, documents, strict=True)
    ]


def _insert(rows: list[dict[str, Any]]) -> None:
    """Store the rows: COPY on PostgreSQL (~5x cheaper than INSERT), bulk_create elsewhere."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        ActionEvent.objects.bulk_create([ActionEvent(**_attributes(row)) for row in rows])
        return
    quote = connection.ops.quote_name
    copy_sql = f"COPY {quote(EVENT_TABLE)} ({', '.join(map(quote, EVENT_COLUMNS))}) FROM STDIN"
    with connection.cursor() as cursor, connection.wrap_database_errors:
        with cursor.cursor.copy(copy_sql) as copy:
            for row in rows:
                values = [row[column] for column in EVENT_COLUMNS]
                values[_DETAILS] = json.dumps(values[_DETAILS]) if values[_DETAILS] else "{}"
                copy.write_row(values)


def _attributes(row: dict[str, Any]) -> dict[str, Any]:
    """A row as ActionEvent keyword arguments (column names are its attribute names)."""
    return {column: row[column] for column in EVENT_COLUMNS}


def _committed(row: dict[str, Any]) -> ActionEvent:
    """The stored event of ``row``, as ``from_db`` would load it but without ``__init__`` (which
    costs more than storing the row): the kill rules only read its fields."""
    event = ActionEvent.__new__(ActionEvent)
    event.__dict__.update(_attributes(row))
    event._state = ModelState()
    event._state.adding = False
    return event


def _evaluate_rules(agent: Agent, rows: list[dict[str, Any]]) -> None:
    """Run the automatic kill rules; a failure is logged and never fails ingestion."""
    try:
        denies = [_committed(row) for row in rows if row["decision"] == "deny"]
        rules.evaluate_events(agent=agent, events=denies)
    except Exception:
        logger.exception("kill rules failed for a batch of agent %s", agent.pk)


def record_heartbeat(
    *,
    agent_id: uuid.UUID,
    passport_id: uuid.UUID,
    heartbeat: Heartbeat | None,
    remote_addr: str,
    now: datetime | None = None,
) -> None:
    """Mark the agent as seen now, from ``remote_addr``, in a single UPDATE; then record the
    copy that sent the heartbeat (see :func:`record_copy`).

    ``last_seen_epoch`` only moves forward: a late, out-of-order post cannot lower it, and
    ``last_seen_digest`` changes only with it, so the pair always comes from one heartbeat.
    Events the SDK reports as lost are added to ``events_dropped``.
    """
    now = now or timezone.now()
    heartbeat = heartbeat or {}
    host = heartbeat.get("host") or ""
    address = f"{host} ({remote_addr})" if host and remote_addr else host or remote_addr
    fields: dict[str, object] = {"last_seen_at": now, "last_seen_address": address[:255]}
    epoch = heartbeat.get("epoch")
    if epoch is not None:
        reported = models.Value(epoch, output_field=models.BigIntegerField())
        fields["last_seen_epoch"] = Greatest(Coalesce("last_seen_epoch", reported), reported)
        fields["last_seen_digest"] = models.Case(
            models.When(
                Q(last_seen_epoch__isnull=True) | Q(last_seen_epoch__lte=epoch),
                then=models.Value(heartbeat.get("digest") or ""),
            ),
            default=models.F("last_seen_digest"),
        )
    if dropped := heartbeat.get("dropped"):
        fields["events_dropped"] = models.F("events_dropped") + dropped
    Agent.objects.filter(pk=agent_id).update(**fields)
    if heartbeat.get("host") or heartbeat.get("pid") is not None:
        record_copy(
            agent_id=agent_id,
            passport_id=passport_id,
            heartbeat=heartbeat,
            remote_addr=remote_addr,
            now=now,
        )


TREE_COLUMNS = ("mechanism", "child_pid", "processes", "state")  # the supervisor's tree now


def _copy_upsert_sql() -> str:
    """``INSERT ... ON CONFLICT (agent, host, pid) DO UPDATE`` (PostgreSQL and SQLite ≥ 3.24).

    In ``DO UPDATE`` a bare table-qualified column is the stored row and ``excluded`` the
    heartbeat, so each rule below compares the two inside the one atomic statement:
    - the epoch and its digest move only forward (a late post cannot lower them);
    - the tree's state, processes and child stay once the tree reached a final state;
    - the stop record changes only to a later stop;
    - a heartbeat without ``supervisor`` from the same (host, pid) (a reused pid) clears the
      tree: an in-process copy has none (a check constraint of the table).
    """
    quote = connection.ops.quote_name
    table = quote(AgentCopy._meta.db_table)
    fields = AgentCopy._meta.concrete_fields
    columns = [column for field in fields if (column := field.column) and column != "id"]
    stored = {column: f"{table}.{quote(column)}" for column in columns}
    epoch, stored_epoch = "excluded.last_seen_epoch", stored["last_seen_epoch"]
    newer_epoch = f"{epoch} IS NOT NULL AND ({stored_epoch} IS NULL OR {epoch} >= {stored_epoch})"
    final = ", ".join(f"'{state}'" for state in AgentCopy.FINAL_STATES)
    live = f"{stored['state']} NOT IN ({final})"
    later_stop = (
        f"excluded.stopped_at IS NOT NULL AND "
        f"({stored['stopped_at']} IS NULL OR excluded.stopped_at >= {stored['stopped_at']})"
    )
    in_process = "NOT excluded.supervised"  # then the copy has no tree: every column cleared
    rules = {
        "last_seen_epoch": newer_epoch,
        "last_seen_digest": newer_epoch,
        **dict.fromkeys(TREE_COLUMNS, f"{in_process} OR {live}"),
        **{
            column: f"{in_process} OR ({later_stop})"
            for column in columns
            if column.startswith("stopped_")
        },
    }
    keep = {"agent_id", "host", "pid", "first_seen_at"}
    assignments = [
        f"{quote(column)} = "
        + (
            f"CASE WHEN {rules[column]} THEN excluded.{quote(column)} ELSE {stored[column]} END"
            if column in rules
            else f"excluded.{quote(column)}"
        )
        for column in columns
        if column not in keep
    ]
    # Names come from the model's metadata; every value is a query parameter.
    return (
        f"INSERT INTO {table} ({', '.join(map(quote, columns))}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({quote('agent_id')}, {quote('host')}, {quote('pid')}) "
        f"DO UPDATE SET {', '.join(assignments)}"
    )


def record_copy(
    *,
    agent_id: uuid.UUID,
    passport_id: uuid.UUID,
    heartbeat: Heartbeat,
    remote_addr: str,
    now: datetime,
) -> None:
    """Insert or update the copy (agent, host, pid) that sent ``heartbeat``, in one statement
    (concurrent heartbeats of one copy cannot lose each other's forward moves)."""
    supervisor = heartbeat.get("supervisor")
    stop = supervisor["stopped"] if supervisor else None
    values: dict[str, object] = {
        "agent": agent_id,
        "passport": passport_id,
        "host": (heartbeat.get("host") or remote_addr)[:255],
        "pid": heartbeat.get("pid") or 0,
        "address": remote_addr[:255],
        "first_seen_at": now,
        "last_seen_at": now,
        "last_seen_epoch": heartbeat.get("epoch"),
        "last_seen_digest": heartbeat.get("digest") or "",
        "supervised": supervisor is not None,
        "mechanism": supervisor["mechanism"] if supervisor else "",
        "child_pid": supervisor["child_pid"] if supervisor else None,
        "processes": supervisor["processes"] if supervisor else None,
        "state": supervisor["state"] if supervisor else "",
        "stopped_cause": stop["cause"] if stop else "",
        "stopped_epoch": stop["epoch"] if stop else None,
        "stopped_processes": stop["processes"] if stop else None,
        "stopped_sigkilled": stop["sigkilled"] if stop else None,
        "stopped_at": stop["at"] if stop else None,
    }
    fields = [field for field in AgentCopy._meta.concrete_fields if field.column != "id"]
    params = [field.get_db_prep_save(values[field.name], connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(_copy_upsert_sql(), params)


def prune_agent_copies(*, now: datetime | None = None) -> int:
    """Forget copies not seen for ``AGENT_COPY_RETENTION_SECONDS``. Returns how many."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.AGENT_COPY_RETENTION_SECONDS)
    deleted, _ = AgentCopy.objects.filter(last_seen_at__lt=cutoff).delete()
    return deleted


@dataclass(frozen=True)
class KeyRotation:
    key: SigningKey  # the new active key
    resigned: int  # audit checkpoints re-signed with it (and a new tree head signed)
    retired: list[str]  # kids of verify-only keys no unexpired passport needs any more


def rotate_signing_key() -> KeyRotation:
    """Make a new active signing key, re-sign every audit chain's checkpoint with it (so each chain
    stays verifiable from the JWKS after the old key retires), then retire unneeded old keys."""
    key = signing.activate_new_signing_key()
    resigned = audit.create_checkpoints(everyone=True)
    transparency.sign_tree_head(force=True)  # the newest head verifies with the new key
    return KeyRotation(key=key, resigned=resigned, retired=signing.retire_signing_keys())
