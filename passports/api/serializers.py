from django.core.validators import RegexValidator
from rest_framework import serializers

from actions.api.serializers import CopyStatusSerializer
from passports.models import Agent, Passport
from passports.services import effective_status
from registry.api import (
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
)


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
    agent_may_renew = StrictBooleanField(
        required=False,
        default=False,
        help_text="let the agent renew this passport itself (POST /api/v1/passports/self/renew)"
        ": same scope, jurisdiction and lifetime; copied to every renewal",
    )


GRACE_HELP = "seconds the old passport's token keeps working (0: stopped at once)"


class PassportRenewSerializer(StrictSerializer):
    ttl_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)
    grace_seconds = serializers.IntegerField(required=False, default=0, help_text=GRACE_HELP)


class SelfRenewSerializer(StrictSerializer):
    """The agent chooses nothing about its successor (an empty object is the usual body)."""

    grace_seconds = StrictIntegerField(required=False, default=0, help_text=GRACE_HELP)


class ReasonSerializer(StrictSerializer):
    reason = StrictCharField(max_length=500)


class IntrospectSerializer(StrictSerializer):
    # No max_length: an oversized token is answered {"active": false, "reason": "too_large"}.
    token = StrictCharField(trim_whitespace=False, allow_blank=True)


class PassportSerializer(serializers.ModelSerializer):
    scope = serializers.ListField(child=serializers.CharField())
    jurisdiction = serializers.ListField(child=serializers.CharField())
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
            "agent_may_renew",
            "renewed_by_agent",
            "revoked_at",
            "revoked_by",
            "revoked_reason",
        ]

    def get_status(self, passport: Passport) -> str:
        return effective_status(passport)


class AgentRunStatusSerializer(serializers.Serializer):
    agent = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Agent.Status.choices)
    allowed = serializers.BooleanField(help_text="whether the agent may run right now")
    reasons = serializers.ListField(
        child=serializers.CharField(), help_text="every reason it may not (empty if allowed)"
    )
    active_passports = serializers.IntegerField()
    epoch = serializers.IntegerField(help_text="the registry's current revocation epoch")
    last_seen_at = serializers.DateTimeField(allow_null=True)
    last_seen_epoch = serializers.IntegerField(allow_null=True)
    copies = CopyStatusSerializer(
        many=True, help_text="its copies (processes posting heartbeats), newest first"
    )


class RevocationChannelClaimSerializer(serializers.Serializer):
    """Where an agent follows revocations (``agent_passport.protocol.RevocationChannel``)."""

    v = serializers.IntegerField(help_text="protocol version (agent_passport.protocol)")
    transport = serializers.CharField()
    epoch = serializers.CharField(help_text="Redis key of the current revocation epoch")
    stream = serializers.CharField(help_text="Redis stream of revocations and lifts")
    snapshot = serializers.CharField(help_text="Redis hash of the revocations in force")


class PassportClaimsSerializer(serializers.Serializer):
    """The claims a passport token carries (JWT, RFC 7519)."""

    iss = serializers.CharField()
    sub = serializers.CharField(help_text="the agent's id")
    aud = serializers.CharField()
    jti = serializers.CharField()
    iat = serializers.IntegerField()
    nbf = serializers.IntegerField()
    exp = serializers.IntegerField()
    scope = serializers.ListField(child=serializers.CharField())
    jurisdiction = serializers.ListField(child=serializers.CharField())
    fleet = serializers.CharField(allow_blank=True)
    agent_name = serializers.CharField()
    rev = RevocationChannelClaimSerializer()


class IssuedPassportSerializer(serializers.Serializer):
    jti = serializers.UUIDField(source="passport.jti")
    token = serializers.CharField()
    claims = PassportClaimsSerializer()
    expires_at = serializers.DateTimeField(source="passport.expires_at")


class IntrospectionSerializer(serializers.Serializer):
    """RFC 7662: ``active`` and an active passport's claims, or why it is not active."""

    active = serializers.BooleanField()
    token_type = serializers.CharField(required=False)
    reason = serializers.CharField(
        required=False, help_text="why the token is inactive, e.g. revoked, expired, unknown_key"
    )
    detail = serializers.CharField(required=False)

    def get_fields(self) -> dict[str, serializers.Field]:
        claims = PassportClaimsSerializer().get_fields()
        for field in claims.values():
            field.required = False  # absent when inactive
        return {**super().get_fields(), **claims}
