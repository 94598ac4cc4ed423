from django.db import models

from agent_passport.reporter import (
    MAX_ACTION_LENGTH,
    MAX_JURISDICTION_LENGTH,
    MAX_REASON_LENGTH,
    MAX_RESOURCE_LENGTH,
)
from passports.models import Agent, Passport


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
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["agent", "occurred_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(decision__in=["allow", "deny"]), name="action_decision_valid"
            )
        ]

    def __str__(self) -> str:
        return f"{self.decision} {self.action} by {self.agent_id} ({self.id})"
