from typing import cast

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from actions.auth import IsPassportHolder, PassportBearerAuthentication
from killswitch import services as killswitch
from killswitch.models import Revocation
from passports import selectors, services, signing
from passports.api.serializers import (
    AgentCreateSerializer,
    AgentRunStatusSerializer,
    AgentSerializer,
    IntrospectionSerializer,
    IntrospectSerializer,
    IssuedPassportSerializer,
    PassportIssueSerializer,
    PassportRenewSerializer,
    PassportSerializer,
    ReasonSerializer,
    SelfRenewSerializer,
)
from passports.models import Agent, Passport
from passports.roles import IsViewer, ReadViewerWriteOperator, signed_in
from registry.api import UUID_PATTERN
from registry.errors import RequestRejected
from registry.pagination import ordered_by
from registry.throttling import PerAgentRenewThrottle
from signals.api.serializers import AgentTimelineSerializer, TimelineQuerySerializer
from signals.selectors import agent_timeline

NewestFirst = ordered_by("-created_at")
NewestIssuedFirst = ordered_by("-issued_at")


FLEET = OpenApiParameter("fleet", str)


@extend_schema_view(
    list=extend_schema(
        parameters=[FLEET, OpenApiParameter("status", str, enum=Agent.Status.values)]
    )
)
class AgentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = AgentSerializer
    permission_classes = [ReadViewerWriteOperator]
    pagination_class = NewestFirst
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        params = self.request.query_params
        return selectors.agents(fleet=params.get("fleet"), status=params.get("status"))

    @extend_schema(request=AgentCreateSerializer, responses={201: AgentSerializer})
    def create(self, request: Request) -> Response:
        data = AgentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent = services.register_agent(owner=signed_in(request.user), **data.validated_data)
        return Response(AgentSerializer(agent).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: AgentRunStatusSerializer})
    @action(detail=True, methods=["get"], url_path="status")
    def run_status(self, request: Request, pk: str) -> Response:
        """Is the agent allowed to run right now, and if not, why not."""
        run_status = services.agent_run_status(self.get_object())
        return Response(AgentRunStatusSerializer(run_status).data)

    @extend_schema(parameters=[TimelineQuerySerializer], responses={200: AgentTimelineSerializer})
    @action(detail=True, methods=["get"])
    def timeline(self, request: Request, pk: str) -> Response:
        """Actions, signals, revocations, lifts and rule matches of the agent, in time order."""
        query = TimelineQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        timeline = agent_timeline(agent=self.get_object(), **query.validated_data)
        return Response(AgentTimelineSerializer(timeline).data)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("agent", str, description="agent id (UUID)"),
            FLEET,
            OpenApiParameter("status", str, enum=Passport.Status.values),
        ]
    )
)
class PassportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = PassportSerializer
    permission_classes = [ReadViewerWriteOperator]
    pagination_class = NewestIssuedFirst
    lookup_field = "jti"
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        params = self.request.query_params
        return selectors.passports(
            agent=params.get("agent"), fleet=params.get("fleet"), status=params.get("status")
        )

    def _issued_response(self, issued: services.IssuedPassport) -> Response:
        return Response(IssuedPassportSerializer(issued).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=PassportIssueSerializer, responses={201: IssuedPassportSerializer})
    def create(self, request: Request) -> Response:
        data = PassportIssueSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        agent = Agent.objects.filter(pk=fields["agent"]).first()
        if agent is None:
            raise RequestRejected("agent", f"no agent with id {fields['agent']}")
        issued = services.issue_passport(
            agent=agent,
            scope=fields["scope"],
            jurisdiction=fields["jurisdiction"],
            ttl_seconds=fields["ttl_seconds"],
            issued_by=signed_in(request.user),
            agent_may_renew=fields["agent_may_renew"],
        )
        return self._issued_response(issued)

    @extend_schema(request=PassportRenewSerializer, responses={201: IssuedPassportSerializer})
    @action(detail=True, methods=["post"])
    def renew(self, request: Request, jti: str) -> Response:
        data = PassportRenewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.renew_passport(
            passport=self.get_object(),
            ttl_seconds=data.validated_data["ttl_seconds"],
            issued_by=signed_in(request.user),
            grace_seconds=data.validated_data["grace_seconds"],
        )
        return self._issued_response(issued)

    @extend_schema(
        request=SelfRenewSerializer,
        responses={201: IssuedPassportSerializer},
        description="The agent renews its own passport, authenticated with it "
        "('Authorization: Bearer <passport token>'), when the operator allowed it when issuing "
        "(agent_may_renew). 403 reason renewal_not_allowed; 409 reason not_active when the "
        "passport is revoked, superseded or expired or its agent is not active.",
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="self/renew",
        authentication_classes=[PassportBearerAuthentication],
        permission_classes=[IsPassportHolder],
        throttle_classes=[PerAgentRenewThrottle],
    )
    def self_renew(self, request: Request) -> Response:
        data = SelfRenewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.self_renew_passport(
            passport=cast(Passport, request.auth),  # set by PassportBearerAuthentication
            grace_seconds=data.validated_data["grace_seconds"],
        )
        return self._issued_response(issued)

    @extend_schema(request=ReasonSerializer, responses={200: PassportSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, jti: str) -> Response:
        data = ReasonSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        passport = self.get_object()
        killswitch.revoke(
            target=killswitch.Target(Revocation.TargetType.PASSPORT, str(passport.jti)),
            reason=data.validated_data["reason"],
            actor=signed_in(request.user),
            source=Revocation.Source.API,
        )
        passport.refresh_from_db()
        return Response(PassportSerializer(passport).data)

    @extend_schema(request=IntrospectSerializer, responses={200: IntrospectionSerializer})
    @action(detail=False, methods=["post"], permission_classes=[IsViewer])
    def introspect(self, request: Request) -> Response:
        data = IntrospectSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        introspection = services.introspect(data.validated_data["token"])
        return Response(IntrospectionSerializer(introspection).data)


@require_GET
@cache_control(public=True, max_age=300)
def jwks_view(request: HttpRequest) -> JsonResponse:
    """Public verification keys. Cached by clients for five minutes; rotation keeps old keys."""
    return JsonResponse(signing.jwks())


@require_GET
@cache_control(no_store=True)
def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # report, don't crash: this endpoint exists to say what is down
        return JsonResponse({"status": "error", "database": "unreachable"}, status=503)
    return JsonResponse({"status": "ok", "database": "ok"})
