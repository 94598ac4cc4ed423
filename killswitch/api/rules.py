"""The kill-rule API: ``/api/v1/rules`` and ``/api/v1/rules/matches``.

Viewers read rules and matches. Admins create and change rules; an operator may only make a rule
harmless (disable it, or switch it to dry run) — what the person on call needs when a rule
misfires, without letting them add standing kill policies or outbound webhooks.
"""

from urllib.parse import urlsplit

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from killswitch import notifications, rules
from killswitch.models import KillRule, RuleMatch
from passports.roles import Role, has_role, signed_in
from registry.api import (
    DATABASE_ID_PATTERN,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
)
from registry.pagination import ordered_by

KIND_ERROR = '"{input}" is not a kind of rule; use one of ' + ", ".join(KillRule.Kind.values)


class StrictBooleanField(serializers.BooleanField):
    """true or false as JSON booleans (DRF would also take "yes", 1, "on"...)."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class KillRuleCreateSerializer(StrictSerializer):
    name = StrictCharField(max_length=100)
    kind = serializers.ChoiceField(
        choices=KillRule.Kind.choices, error_messages={"invalid_choice": KIND_ERROR}
    )
    # Checked by the rule service, which names the pattern (as for passport scopes).
    pattern = StrictCharField(
        max_length=512, required=False, default="", allow_blank=True, trim_whitespace=False
    )
    threshold = StrictIntegerField(required=False, allow_null=True, default=None)
    window_seconds = StrictIntegerField(required=False, allow_null=True, default=None)
    category = StrictCharField(max_length=30, required=False, default="", allow_blank=True)
    enabled = StrictBooleanField(required=False, default=True)
    dry_run = StrictBooleanField(required=False, default=False)
    webhook_url = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class KillRuleUpdateSerializer(StrictSerializer):
    """Only the fields given are changed. A rule's name and kind are fixed."""

    pattern = StrictCharField(
        max_length=512, required=False, allow_blank=True, trim_whitespace=False
    )
    threshold = StrictIntegerField(required=False, allow_null=True)
    window_seconds = StrictIntegerField(required=False, allow_null=True)
    category = StrictCharField(max_length=30, required=False, allow_blank=True)
    enabled = StrictBooleanField(required=False)
    dry_run = StrictBooleanField(required=False)
    webhook_url = StrictCharField(max_length=500, required=False, allow_blank=True)


class KillRuleSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    webhook_url = serializers.SerializerMethodField()

    class Meta:
        model = KillRule
        fields = [
            "id",
            "name",
            "kind",
            "pattern",
            "threshold",
            "window_seconds",
            "category",
            "enabled",
            "dry_run",
            "webhook_url",
            "created_by",
            "created_at",
            "updated_at",
        ]

    def get_webhook_url(self, rule: KillRule) -> str:
        """Shown in full to admins only: webhook URLs often carry a secret in their path."""
        request = self.context.get("request")
        if not rule.webhook_url or (request is not None and has_role(request.user, Role.ADMIN)):
            return rule.webhook_url
        parts = urlsplit(rule.webhook_url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"


class RuleSummarySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=KillRule.Kind.choices)


class RevocationReferenceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    epoch = serializers.IntegerField()


class RuleMatchSerializer(serializers.ModelSerializer):
    rule = serializers.SerializerMethodField()
    event_ids = serializers.ListField(
        child=serializers.CharField(), help_text="the action events that made it fire"
    )
    revocation = serializers.SerializerMethodField()
    outcome = serializers.SerializerMethodField()

    class Meta:
        model = RuleMatch
        fields = [
            "id",
            "rule",
            "agent",
            "matched_at",
            "dry_run",
            "outcome",
            "trigger",
            "trigger_at",
            "event_ids",
            "signal",
            "revocation",
            "notified_at",
        ]

    @extend_schema_field(RuleSummarySerializer)
    def get_rule(self, match: RuleMatch) -> dict[str, int | str]:
        return {"id": match.rule_id, "name": match.rule.name, "kind": match.rule.kind}

    @extend_schema_field(RevocationReferenceSerializer(allow_null=True))
    def get_revocation(self, match: RuleMatch) -> dict[str, int] | None:
        if match.revocation is None:
            return None
        return {"id": match.revocation.pk, "epoch": match.revocation.epoch}

    def get_outcome(self, match: RuleMatch) -> str:
        """``revoked``, ``already_killed`` (matched a killed agent) or ``dry_run``."""
        return notifications.outcome(match)


class RulePermission(BasePermission):
    """Viewers read, admins create; changing needs an operator (and see ``partial_update``)."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return has_role(request.user, Role.VIEWER)
        if request.method == "PATCH":
            return has_role(request.user, Role.OPERATOR)
        return has_role(request.user, Role.ADMIN)


OldestFirst = ordered_by("id")
NewestFirst = ordered_by("-id")


class KillRuleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Automatic kill rules: deny_pattern, deny_rate, signal."""

    queryset = KillRule.objects.select_related("created_by")
    serializer_class = KillRuleSerializer
    permission_classes = [RulePermission]
    pagination_class = OldestFirst
    lookup_value_regex = DATABASE_ID_PATTERN

    @extend_schema(request=KillRuleCreateSerializer, responses={201: KillRuleSerializer})
    def create(self, request: Request) -> Response:
        data = KillRuleCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rule = rules.create_rule(**data.validated_data, created_by=signed_in(request.user))
        return Response(self.get_serializer(rule).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=KillRuleUpdateSerializer, responses={200: KillRuleSerializer})
    def partial_update(self, request: Request, pk: str) -> Response:
        data = KillRuleUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = data.validated_data
        if not rules.may_change(signed_in(request.user), dict(changes)):
            raise PermissionDenied(
                "Operators may only disable a rule or switch it to dry run; "
                "other changes need the admin role."
            )
        rule = rules.update_rule(rule=self.get_object(), changes=dict(changes))
        return Response(self.get_serializer(rule).data)


class RuleMatchViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Every time a rule fired (or, in dry run, would have): the operators' notifications."""

    serializer_class = RuleMatchSerializer
    pagination_class = NewestFirst
    lookup_value_regex = DATABASE_ID_PATTERN

    def get_queryset(self):
        params = self.request.query_params
        return rules.rule_matches(
            rule=params.get("rule"), agent=params.get("agent"), dry_run=params.get("dry_run")
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("rule", int),
            OpenApiParameter("agent", str),
            OpenApiParameter("dry_run", bool),
        ]
    )
    def list(self, request: Request, *args, **kwargs) -> Response:
        return super().list(request, *args, **kwargs)
