from django.conf import settings
from django.db import models

from passports.models import Agent


class Signal(models.Model):
    """An observation from outside an agent (IDS, firewall, EDR), matched to it by address."""

    class Category(models.TextChoices):
        CRYPTOMINING = "cryptomining"
        REVERSE_TUNNEL = "reverse-tunnel"
        EGRESS_DENIED = "egress-denied"
        PORT_SCAN = "port-scan"
        MALWARE = "malware"
        DATA_EXFILTRATION = "data-exfiltration"
        POLICY_VIOLATION = "policy-violation"

    id = models.BigAutoField(primary_key=True)
    received_at = models.DateTimeField(db_index=True)
    occurred_at = models.DateTimeField(help_text="When the reporting system observed it.")
    source_host = models.CharField(max_length=255, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    destination = models.CharField(max_length=300, blank=True)
    category = models.CharField(max_length=30, choices=Category.choices)
    raw = models.JSONField(default=dict, blank=True)
    reported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reported_signals"
    )
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.PROTECT, related_name="signals"
    )
    # Other agents the address also matched (ids); the chosen one is ``agent``.
    other_candidates = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["agent", "occurred_at"]), models.Index(fields=["category"])]

    def __str__(self) -> str:
        return f"signal #{self.pk} {self.category} from {self.source_host or self.source_ip}"
