from django.core.validators import RegexValidator
from rest_framework import serializers

from registry.api import StrictCharField, StrictSerializer
from signals.models import Signal

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
