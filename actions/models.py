from datetime import timedelta
from typing import Any

from django.db import models

from agent_passport.audit import timestamp
from agent_passport.reporter import (
    MAX_ACTION_LENGTH,
    MAX_JURISDICTION_LENGTH,
    MAX_REASON_LENGTH,
)
from agent_passport.rules import MAX_RESOURCE_LENGTH
from agent_passport.tokens import CLOCK_SKEW_LEEWAY
from passports.models import Agent, Passport

# An event stamped further ahead of the registry's clock is stored with the agent's time and
# flagged ``clock_skewed`` (evidence is never dropped for a wrong clock).
MAX_FUTURE_SKEW = timedelta(seconds=CLOCK_SKEW_LEEWAY)


class ActionEvent(models.Model):
    """One action an agent checked against its passport, as the agent reported it."""

    class Decision(models.TextChoices):
        ALLOW = "allow"
        DENY = "deny"

    # Chosen by the SDK, so a batch that is delivered twice is stored once.
    id = models.UUIDField(primary_key=True, editable=False)
    passport = models.ForeignKey(Passport, on_delete=models.PROTECT, related_name="action_events")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="action_events")
    fleet = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=MAX_ACTION_LENGTH)
    resource = models.CharField(max_length=MAX_RESOURCE_LENGTH, blank=True)
    jurisdiction = models.CharField(max_length=MAX_JURISDICTION_LENGTH, blank=True)
    decision = models.CharField(max_length=5, choices=Decision.choices)
    reason = models.CharField(max_length=MAX_REASON_LENGTH, blank=True)
    occurred_at = models.DateTimeField(help_text="When the agent checked the action (its clock).")
    received_at = models.DateTimeField(db_index=True)
    details = models.JSONField(default=dict, blank=True)
    # The per-agent hash chain (agent_passport.audit): position, predecessor and own hash.
    seq = models.PositiveBigIntegerField()
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    # Position in the one Merkle tree over every event (agent_passport.merkle), dense from 0,
    # given at ingestion in commit order (actions.transparency.reserve_leaves).
    leaf_index = models.BigIntegerField(unique=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["agent", "occurred_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(decision__in=["allow", "deny"]), name="action_decision_valid"
            ),
            models.UniqueConstraint(fields=["agent", "seq"], name="one_event_per_chain_position"),
        ]

    def __str__(self) -> str:
        return f"{self.decision} {self.action} by {self.agent_id} ({self.id})"

    @property
    def clock_skewed(self) -> bool:
        """Stamped by a clock ahead of the registry's (derived from two hashed fields, so it
        needs no place in the hash chain)."""
        return self.occurred_at > self.received_at + MAX_FUTURE_SKEW


class AuditCheckpoint(models.Model):
    """A signed statement "agent X's chain had ``count`` events ending in ``head_hash``"."""

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="audit_checkpoints")
    count = models.PositiveBigIntegerField()
    head_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    kid = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)

    class Meta:
        ordering = ["agent", "count", "created_at"]
        indexes = [models.Index(fields=["agent", "-created_at"])]

    def __str__(self) -> str:
        return f"checkpoint {self.agent_id}#{self.count}"


class LogCounter(models.Model):
    """Named counters of the transparency log, one row each (created by the migration):

    - ``next_leaf``: the next leaf index. Ingestion increments it in its transaction, so its
      row lock serialises leaf assignment until commit and committed leaves form a prefix;
    - ``tree_size``: leaves whose stored subtrees exist (the tree builder's lock and progress).
    """

    NEXT_LEAF = "next_leaf"
    TREE_SIZE = "tree_size"

    name = models.CharField(max_length=20, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class MerkleNode(models.Model):
    """A stored perfect subtree: the hash of leaves ``[index * 2**level, (index + 1) * 2**level)``.
    Only levels ≥ ``actions.transparency.NODE_LEVEL`` are stored (smaller ones are hashed from
    the events), about one row per 128 events."""

    level = models.PositiveSmallIntegerField()
    index = models.BigIntegerField()
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["level", "index"], name="one_merkle_node")]

    def __str__(self) -> str:
        return f"node {self.level}/{self.index}"


class SignedTreeHead(models.Model):
    """A signed statement "the log's first ``tree_size`` leaves have root ``root_hash``", naming
    the previous head by the hash of its payload (agent_passport.merkle.head_id)."""

    tree_size = models.BigIntegerField(db_index=True)
    root_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    prev = models.CharField(max_length=64)
    kid = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"tree head {self.tree_size} ({self.root_hash[:12]})"

    def document(self) -> dict[str, Any]:
        """The head as JSON everywhere (API, exports, witnesses): what it signs plus kid and
        signature."""
        return {
            "tree_size": self.tree_size,
            "root": self.root_hash,
            "at": timestamp(self.created_at),
            "prev": self.prev,
            "kid": self.kid,
            "signature": self.signature,
        }


class ArchivedSegment(models.Model):
    """Leaves ``[start_leaf, end_leaf)`` moved out of the database by ``archive_audit`` into a
    self-verifying segment. The live log starts at the newest segment's ``end_leaf`` (a multiple
    of 256, so the stored subtrees of the archived part remain and the tree continues from them);
    an event missing below it without a segment is a deletion, not an archive."""

    start_leaf = models.BigIntegerField()
    end_leaf = models.BigIntegerField(unique=True)
    root_hash = models.CharField(max_length=64, help_text="root of the first end_leaf leaves")
    head = models.ForeignKey(SignedTreeHead, on_delete=models.PROTECT, related_name="+")
    archived_at = models.DateTimeField()
    location = models.CharField(max_length=500, help_text="where the segment was written")
    sha256 = models.CharField(max_length=64, help_text="of the segment file")

    class Meta:
        ordering = ["-end_leaf"]

    def __str__(self) -> str:
        return f"archived leaves {self.start_leaf}..{self.end_leaf}"


class HeadWitness(models.Model):
    """A head delivered to (or refused by) a witness sink outside the database."""

    head = models.ForeignKey(SignedTreeHead, on_delete=models.PROTECT, related_name="witnesses")
    sink = models.CharField(max_length=200)
    delivered_at = models.DateTimeField()
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-delivered_at"]
        indexes = [models.Index(fields=["head", "sink"])]

    def __str__(self) -> str:
        return f"{self.head_id} -> {self.sink}"


class AgentCopy(models.Model):
    """One running copy of an agent: a process that posts heartbeats, told apart by (host, pid).

    An in-process SDK copy reports its guard's epoch and digest; a supervisor (``agent-passport
    run``) also reports the process tree it owns and, once it stopped the tree, how. Written only
    by :func:`actions.services.record_heartbeat`, whose upsert keeps epochs from moving back.
    """

    class Mechanism(models.TextChoices):
        CGROUP = "cgroup"
        SUBREAPER = "subreaper"

    class State(models.TextChoices):
        RUNNING = "running"
        PAUSED = "paused"
        STOPPED = "stopped"
        EXITED = "exited"

    class StopCause(models.TextChoices):
        REVOKED = "revoked"
        EXPIRED = "expired"
        STALE = "stale"

    FINAL_STATES = (State.STOPPED, State.EXITED)

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="copies")
    # The passport it last reported with (a passport revocation stops only its copies).
    passport = models.ForeignKey(Passport, on_delete=models.PROTECT, related_name="+")
    host = models.CharField(max_length=255, help_text="as reported, else the remote address")
    pid = models.BigIntegerField(help_text="0 when the heartbeat carried none")
    address = models.CharField(max_length=255, blank=True, help_text="remote address")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    last_seen_epoch = models.BigIntegerField(null=True, blank=True)
    last_seen_digest = models.CharField(max_length=64, blank=True)
    supervised = models.BooleanField(default=False)
    # The supervisor's process tree (blank / null for an in-process copy).
    mechanism = models.CharField(max_length=10, choices=Mechanism.choices, blank=True)
    child_pid = models.BigIntegerField(null=True, blank=True)
    processes = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, blank=True)
    # Set once the supervisor stopped the tree.
    stopped_cause = models.CharField(max_length=10, choices=StopCause.choices, blank=True)
    stopped_epoch = models.BigIntegerField(null=True, blank=True)
    stopped_processes = models.PositiveIntegerField(null=True, blank=True)
    stopped_sigkilled = models.PositiveIntegerField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "host", "pid"], name="one_copy_per_process"),
            models.CheckConstraint(
                condition=models.Q(supervised=True) | models.Q(state="", stopped_at__isnull=True),
                name="copy_tree_only_when_supervised",
            ),
            models.CheckConstraint(
                condition=models.Q(stopped_at__isnull=True, stopped_cause="")
                | (models.Q(stopped_at__isnull=False) & ~models.Q(stopped_cause="")),
                name="copy_stop_recorded_whole",
            ),
        ]

    def __str__(self) -> str:
        return f"copy {self.host}:{self.pid} of {self.agent_id}"

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None
