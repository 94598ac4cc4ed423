from rest_framework import serializers

from killswitch.models import Revocation
from killswitch.selectors import ACKNOWLEDGED, MISMATCHED, WAITING
from registry.api import StrictCharField, StrictSerializer


class RevokeSerializer(StrictSerializer):
    target = serializers.JSONField()
    reason = StrictCharField(max_length=500)


class LiftSerializer(StrictSerializer):
    reason = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class RevocationTargetSerializer(serializers.Serializer):
    """What a revocation stops: exactly one of these keys."""

    passport = serializers.UUIDField(required=False)
    agent = serializers.UUIDField(required=False)
    fleet = serializers.CharField(required=False)
    all = serializers.BooleanField(required=False)


class RevocationSerializer(serializers.ModelSerializer):
    target = RevocationTargetSerializer(read_only=True)
    actor = serializers.CharField(source="actor.username", default=None, read_only=True)
    lifted_by = serializers.CharField(source="lifted_by.username", default=None, read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = Revocation
        fields = [
            "id",
            "epoch",
            "target",
            "reason",
            "source",
            "actor",
            "created_at",
            "active",
            "lifted_at",
            "lifted_by",
            "lift_reason",
            "lift_epoch",
        ]


class AgentAcknowledgementSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    fleet = serializers.CharField()
    epoch_seen = serializers.IntegerField(allow_null=True)
    last_seen = serializers.DateTimeField()
    state = serializers.ChoiceField(
        choices=[ACKNOWLEDGED, WAITING, MISMATCHED],
        help_text="acknowledged: its heartbeat shows this epoch applied and the digest of the "
        "revocations it holds matches the registry's; waiting: an older epoch (or no digest); "
        "mismatched: the epoch is reached but it holds something else",
    )
    acknowledged = serializers.BooleanField()


class AcknowledgementsSerializer(serializers.Serializer):
    revocation = serializers.IntegerField()
    epoch = serializers.IntegerField()
    active = serializers.BooleanField()
    running = serializers.IntegerField(help_text="targeted agents that reported in the last 30 s")
    acknowledged = serializers.IntegerField()
    mismatched = serializers.IntegerField()
    agents = AgentAcknowledgementSerializer(many=True)
