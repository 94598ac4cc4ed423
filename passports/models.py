import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Agent(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"
        KILLED = "killed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    fleet = models.CharField(max_length=100, blank=True, db_index=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="agents"
    )
    description = models.TextField(blank=True, max_length=2000)
    host = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    # Reported by the SDK with each batch of action events (its heartbeat).
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_seen_epoch = models.BigIntegerField(null=True, blank=True)
    # revocations_digest of what the agent held at last_seen_epoch (acknowledgements check it).
    last_seen_digest = models.CharField(max_length=64, blank=True)
    last_seen_address = models.CharField(max_length=255, blank=True)
    events_dropped = models.PositiveBigIntegerField(
        default=0, help_text="Action events its SDK reported it could not deliver (lost)."
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["active", "suspended", "killed"]), name="agent_status_valid"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class Passport(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        REVOKED = "revoked"
        EXPIRED = "expired"
        SUPERSEDED = "superseded"

    jti = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="passports")
    scope = models.JSONField()
    jurisdiction = models.JSONField()
    issued_at = models.DateTimeField()
    not_before = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    kid = models.CharField(max_length=64)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="issued_passports"
    )
    renewed_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="renewed_by"
    )
    # The operator lets the agent renew this passport itself (POST /api/v1/passports/self/renew);
    # copied to every renewal. Off unless asked for when issuing.
    agent_may_renew = models.BooleanField(default=False)
    # Issued by such a renewal, asked for by the agent with its own passport (``issued_by`` is
    # then the operator who allowed it).
    renewed_by_agent = models.BooleanField(default=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="revoked_passports",
    )
    revoked_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-issued_at"]
        indexes = [models.Index(fields=["agent", "status"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(not_before__lt=models.F("expires_at")), name="passport_window_valid"
            ),
            models.CheckConstraint(
                condition=~Q(status="revoked") | Q(revoked_at__isnull=False),
                name="passport_revocation_recorded",
            ),
            models.CheckConstraint(
                condition=Q(renewed_by_agent=False) | Q(renewed_from__isnull=False),
                name="self_renewal_has_a_predecessor",
            ),
        ]

    def __str__(self) -> str:
        return f"passport {self.jti} for {self.agent_id}"


class SigningKey(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active"
        VERIFY_ONLY = "verify-only"
        RETIRED = "retired"

    kid = models.CharField(primary_key=True, max_length=64)
    public_key = models.BinaryField()
    encrypted_private_key = models.BinaryField(editable=False)
    state = models.CharField(max_length=12, choices=State.choices, default=State.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["state"], condition=Q(state="active"), name="one_active_signing_key"
            )
        ]

    def __str__(self) -> str:  # never show key material, even in debug output
        return f"<SigningKey {self.kid} {self.state}>"

    __repr__ = __str__


class ApiToken(models.Model):
    """An API credential. Only a SHA-256 digest is stored; the key is shown once at creation."""

    digest = models.CharField(primary_key=True, max_length=64)
    prefix = models.CharField(max_length=8)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token {self.prefix}… for {self.user_id}"
