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
    def current_epoch(self) -> int:
        return self.lift_epoch or self.epoch
