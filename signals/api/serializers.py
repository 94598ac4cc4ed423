from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from actions.models import ActionEvent
from killswitch.api.rules import RuleSummarySerializer
from killswitch.api.serializers import RevocationTargetSerializer
from killswitch.models import Revocation
from registry.api import StrictCharField, StrictSerializer
from signals.models import Signal
from signals.selectors import TimelineItem

CATEGORY_ERROR = '"{input}" is not a known category; use one of ' + ", ".join(
    Signal.Category.values
)
TIMELINE_DEFAULT_LIMIT = 200
TIMELINE_MAX_LIMIT = 1000


class StrictIPAddressField(serializers.IPAddressField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class SignalReportSerializer(StrictSerializer):
    """What an IDS, firewall or EDR integration posts."""

    occurred_at = serializers.DateTimeField()
    source_host = StrictCharField(
        max_length=255,
        required=False,
        default="",
        allow_blank=True,
        validators=[RegexValidator(r"^[^\s()]*$", "no whitespace or parentheses")],
    )
    source_ip = StrictIPAddressField(required=False, allow_null=True, default=None)
    destination = StrictCharField(max_length=300, required=False, default="", allow_blank=True)
    category = serializers.ChoiceField(
        choices=Signal.Category.choices, error_messages={"invalid_choice": CATEGORY_ERROR}
    )
    raw = serializers.JSONField(required=False, default=None, allow_null=True)


class SignalSerializer(serializers.ModelSerializer):
    reported_by = serializers.CharField(source="reported_by.username", read_only=True)
    matched_agent = serializers.UUIDField(source="agent_id", read_only=True, allow_null=True)
    other_candidates = serializers.ListField(
        child=serializers.UUIDField(), read_only=True, help_text="other agents the address matched"
    )

    class Meta:
        model = Signal
        fields = [
            "id",
            "received_at",
            "occurred_at",
            "source_host",
            "source_ip",
            "destination",
            "category",
            "raw",
            "reported_by",
            "matched_agent",
            "other_candidates",
        ]


class TimelineQuerySerializer(serializers.Serializer):
    """``?since=&until=&limit=`` of an agent's timeline (unknown parameters are ignored)."""

    since = serializers.DateTimeField(required=False, default=None)
    until = serializers.DateTimeField(required=False, default=None)
    limit = serializers.IntegerField(
        required=False,
        default=TIMELINE_DEFAULT_LIMIT,
        min_value=1,
        max_value=TIMELINE_MAX_LIMIT,
    )

    def validate(self, attrs: dict) -> dict:
        if attrs["since"] and attrs["until"] and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be later than since"]})
        return attrs


class ActionItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["action"])
    at = serializers.DateTimeField(help_text="occurred_at (the agent's clock)")
    id = serializers.UUIDField()
    seq = serializers.IntegerField()
    action = serializers.CharField()
    resource = serializers.CharField(allow_blank=True)
    jurisdiction = serializers.CharField(allow_blank=True)
    decision = serializers.ChoiceField(choices=ActionEvent.Decision.choices)
    reason = serializers.CharField(allow_blank=True)
    passport = serializers.UUIDField()
    highlight = serializers.BooleanField(help_text="a deny")


class SignalItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["signal"])
    at = serializers.DateTimeField(help_text="occurred_at (the reporter's clock)")
    id = serializers.IntegerField()
    category = serializers.ChoiceField(choices=Signal.Category.choices)
    source_host = serializers.CharField(allow_blank=True)
    source_ip = serializers.CharField(allow_null=True)
    destination = serializers.CharField(allow_blank=True)
    received_at = serializers.DateTimeField()
    highlight = serializers.BooleanField()


class RevocationItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["revocation"])
    at = serializers.DateTimeField()
    id = serializers.IntegerField()
    epoch = serializers.IntegerField()
    target = RevocationTargetSerializer()
    reason = serializers.CharField()
    # DRF takes declared fields off the class, so this does not shadow Field.source.
    source = serializers.ChoiceField(choices=Revocation.Source.choices)  # type: ignore[assignment]
    actor = serializers.CharField(allow_null=True)
    before_registration = serializers.BooleanField(
        help_text="already in force when the agent was registered"
    )
    highlight = serializers.BooleanField()


class LiftItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["lift"])
    at = serializers.DateTimeField()
    id = serializers.IntegerField(help_text="the revocation lifted")
    epoch = serializers.IntegerField(help_text="the lift's epoch")
    target = RevocationTargetSerializer()
    reason = serializers.CharField(allow_blank=True)
    actor = serializers.CharField(allow_null=True)
    highlight = serializers.BooleanField()


class RuleMatchItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["rule_match"])
    at = serializers.DateTimeField()
    id = serializers.IntegerField()
    rule = RuleSummarySerializer()
    dry_run = serializers.BooleanField()
    outcome = serializers.CharField()
    trigger = serializers.CharField()
    event_ids = serializers.ListField(child=serializers.CharField())
    signal = serializers.IntegerField(allow_null=True)
    revocation = serializers.IntegerField(allow_null=True)
    highlight = serializers.BooleanField()


TIMELINE_ITEM_SERIALIZERS: dict[str, type[serializers.Serializer]] = {
    "action": ActionItemSerializer,
    "signal": SignalItemSerializer,
    "rule_match": RuleMatchItemSerializer,
    "revocation": RevocationItemSerializer,
    "lift": LiftItemSerializer,
}


@extend_schema_field(
    PolymorphicProxySerializer(
        component_name="TimelineItem",
        serializers={**TIMELINE_ITEM_SERIALIZERS},
        resource_type_field_name="type",
    )
)
class TimelineItemField(serializers.Field):
    """One timeline item, in the shape of its ``type``."""

    def to_representation(self, value: TimelineItem) -> dict[str, Any]:
        return TIMELINE_ITEM_SERIALIZERS[value.type](value).data


class AgentTimelineSerializer(serializers.Serializer):
    agent = serializers.UUIDField()
    since = serializers.DateTimeField(allow_null=True)
    until = serializers.DateTimeField(allow_null=True)
    limit = serializers.IntegerField()
    truncated = serializers.BooleanField(
        help_text="older items were left out: ask again with until = the first item's at"
    )
    items = serializers.ListField(child=TimelineItemField(), help_text="oldest first")
