from rest_framework import serializers

from killswitch.models import Revocation
from passports.api.serializers import StrictCharField, StrictSerializer


class RevokeSerializer(StrictSerializer):
    target = serializers.JSONField()
    reason = StrictCharField(max_length=500)


class LiftSerializer(StrictSerializer):
    reason = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class RevocationSerializer(serializers.ModelSerializer):
    target = serializers.SerializerMethodField()
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

    def get_target(self, revocation: Revocation) -> dict:
        if revocation.target_type == Revocation.TargetType.ALL:
            return {"all": True}
        return {revocation.target_type: revocation.target_value}
