from django.conf import settings
from django.db import models
from django.db.models import Q


class EpochCounter(models.Model):
    """A single row whose value is the last epoch handed out.

    Taking the row lock (SELECT ... FOR UPDATE) inside the revoking transaction serializes
    revocations, so epochs are unique and commit in increasing order.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"epoch {self.value}"


ALL_AGENTS = "*"  # the target_value of a revocation of every agent


class Revocation(models.Model):
    class TargetType(models.TextChoices):
        PASSPORT = "passport"
        AGENT = "agent"
        FLEET = "fleet"
        ALL = "all"

    class Source(models.TextChoices):
        CONSOLE = "console"
        API = "api"
        RULE = "rule"

    epoch = models.BigIntegerField(unique=True)
    target_type = models.CharField(max_length=10, choices=TargetType.choices)
    target_value = models.CharField(max_length=200)
    reason = models.CharField(max_length=500)
    source = models.CharField(max_length=10, choices=Source.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="revocations",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="lifted_revocations",
    )
    lift_reason = models.CharField(max_length=500, blank=True)
    lift_epoch = models.BigIntegerField(unique=True, null=True, blank=True)
    # The newest epoch of this revocation known to be in Redis; below the current one = pending.
    pushed_epoch = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-epoch"]
        constraints = [
            models.UniqueConstraint(
                fields=["target_type", "target_value"],
                condition=Q(lifted_at__isnull=True),
                name="one_active_revocation_per_target",
            ),
            models.CheckConstraint(
                condition=Q(lifted_at__isnull=True) | Q(lift_epoch__gt=models.F("epoch")),
                name="lift_after_revocation",
            ),
        ]
        indexes = [models.Index(fields=["target_type", "target_value"])]

    def __str__(self) -> str:
        return f"revocation #{self.pk} of {self.target_type} {self.target_value}"

    @property
    def is_active(self) -> bool:
        return self.lifted_at is None

    @property
    def target(self) -> dict[str, str | bool]:
        """What it stops, as the API writes it: ``{"agent": id}``, ``{"all": true}``..."""
        if self.target_type == self.TargetType.ALL:
            return {"all": True}
        return {self.target_type: self.target_value}

    @property
    def current_epoch(self) -> int:
        return self.lift_epoch or self.epoch


class KillRule(models.Model):
    """A standing instruction to kill an agent automatically (see :mod:`killswitch.rules`)."""

    class Kind(models.TextChoices):
        DENY_PATTERN = "deny_pattern"  # a deny of an action matching ``pattern``
        DENY_RATE = "deny_rate"  # more than ``threshold`` denies within ``window_seconds``
        SIGNAL = "signal"  # an external signal of ``category`` matched to the agent

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # A scope-rule pattern (agent_passport.rules grammar) that denied actions must match;
    # required for deny_pattern, optional for deny_rate (then only matching denies count).
    pattern = models.CharField(max_length=512, blank=True)
    threshold = models.PositiveIntegerField(null=True, blank=True)
    window_seconds = models.PositiveIntegerField(null=True, blank=True)
    category = models.CharField(max_length=30, blank=True)
    enabled = models.BooleanField(default=True)
    dry_run = models.BooleanField(default=False)
    webhook_url = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="kill_rules"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="deny_pattern") & ~Q(pattern=""))
                | (Q(kind="deny_rate") & Q(threshold__gte=1) & Q(window_seconds__gte=1))
                | (Q(kind="signal") & ~Q(category="")),
                name="kill_rule_kind_has_its_fields",
            )
        ]

    def __str__(self) -> str:
        return f"kill rule {self.name!r} ({self.kind})"


class RuleMatch(models.Model):
    """A rule fired for an agent: the operators' notification, and the cause of a revocation."""

    rule = models.ForeignKey(KillRule, on_delete=models.PROTECT, related_name="matches")
    agent = models.ForeignKey(
        "passports.Agent", on_delete=models.PROTECT, related_name="rule_matches"
    )
    matched_at = models.DateTimeField(db_index=True)
    dry_run = models.BooleanField()
    trigger = models.TextField()
    event_ids = models.JSONField(default=list, blank=True)
    # When the newest event or the signal that triggered it occurred (deny_rate counts from here).
    trigger_at = models.DateTimeField(null=True, blank=True)
    signal = models.ForeignKey(
        "signals.Signal",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="rule_matches",
    )
    revocation = models.ForeignKey(
        Revocation, null=True, blank=True, on_delete=models.PROTECT, related_name="rule_matches"
    )
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["rule", "agent", "-id"]),
            models.Index(fields=["agent", "matched_at"]),
        ]

    def __str__(self) -> str:
        return f"match #{self.pk} of rule {self.rule_id} for {self.agent_id}"
