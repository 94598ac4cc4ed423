from django.core.validators import RegexValidator
from rest_framework import serializers

from passports.models import Agent, Passport
from passports.services import effective_status
from registry.api import StrictCharField, StrictSerializer


class AgentCreateSerializer(StrictSerializer):
    name = StrictCharField(max_length=200)
    fleet = StrictCharField(
        max_length=100,
        required=False,
        default="",
        allow_blank=True,
        validators=[
            RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "letters, digits, '.', '_', '-' only")
        ],
    )
    description = StrictCharField(max_length=2000, required=False, default="", allow_blank=True)
    host = StrictCharField(max_length=255, required=False, default="", allow_blank=True)


class AgentSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "fleet",
            "owner",
            "description",
            "host",
            "status",
            "created_at",
            "events_dropped",
        ]


class PassportIssueSerializer(StrictSerializer):
    agent = serializers.UUIDField()
    # Rules are validated by the rule engine (which names the bad rule), not here.
    scope = serializers.ListField(
        child=StrictCharField(trim_whitespace=False, allow_blank=True), allow_empty=False
    )
    jurisdiction = serializers.ListField(
        child=StrictCharField(trim_whitespace=False, allow_blank=True), allow_empty=False
    )
    ttl_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)


class PassportRenewSerializer(StrictSerializer):
    ttl_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)
    grace_seconds = serializers.IntegerField(required=False, default=0)


class ReasonSerializer(StrictSerializer):
    reason = StrictCharField(max_length=500)


class IntrospectSerializer(StrictSerializer):
    # No max_length: an oversized token is answered {"active": false, "reason": "too_large"}.
    token = StrictCharField(trim_whitespace=False, allow_blank=True)


class PassportSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField()
    issued_by = serializers.CharField(source="issued_by.username", read_only=True)
    revoked_by = serializers.CharField(source="revoked_by.username", read_only=True, default=None)

    class Meta:
        model = Passport
        fields = [
            "jti",
            "agent",
            "scope",
            "jurisdiction",
            "issued_at",
            "not_before",
            "expires_at",
            "status",
            "kid",
            "issued_by",
            "renewed_from",
            "revoked_at",
            "revoked_by",
            "revoked_reason",
        ]

    def get_status(self, passport: Passport) -> str:
        return effective_status(passport)


class IssuedPassportSerializer(serializers.Serializer):
    jti = serializers.UUIDField(source="passport.jti")
    token = serializers.CharField()
    claims = serializers.DictField()
    expires_at = serializers.DateTimeField(source="passport.expires_at")
