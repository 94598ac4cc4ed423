from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from killswitch import selectors, services
from killswitch.api.serializers import (
    AcknowledgementsSerializer,
    LiftSerializer,
    RevocationSerializer,
    RevokeSerializer,
)
from killswitch.models import Revocation
from passports.roles import ReadViewerWriteOperator, signed_in
from registry.api import DATABASE_ID_PATTERN
from registry.pagination import ordered_by
from registry.params import boolean

NewestEpochFirst = ordered_by("-epoch")


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("active", bool),
            OpenApiParameter("target_type", str, enum=Revocation.TargetType.values),
        ]
    )
)
class KillSwitchViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Revocations: one passport, one agent, a fleet, or all agents."""

    serializer_class = RevocationSerializer
    permission_classes = [ReadViewerWriteOperator]
    pagination_class = NewestEpochFirst
    lookup_value_regex = DATABASE_ID_PATTERN

    def get_queryset(self):
        params = self.request.query_params
        active = boolean(params["active"], "active") if params.get("active") else None
        return selectors.revocations(active=active, target_type=params.get("target_type"))

    @extend_schema(request=RevokeSerializer, responses={201: RevocationSerializer})
    def create(self, request: Request) -> Response:
        data = RevokeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        revocation = services.revoke(
            target=services.parse_target(data.validated_data["target"]),
            reason=data.validated_data["reason"],
            actor=signed_in(request.user),
            source=Revocation.Source.API,
        )
        return Response(RevocationSerializer(revocation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=LiftSerializer, responses={200: RevocationSerializer})
    @action(detail=True, methods=["post"])
    def lift(self, request: Request, pk: str) -> Response:
        data = LiftSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        revocation = services.lift(
            revocation=self.get_object(),
            actor=signed_in(request.user),
            reason=data.validated_data["reason"],
        )
        return Response(RevocationSerializer(revocation).data)

    @extend_schema(responses={200: AcknowledgementsSerializer})
    @action(detail=True, methods=["get"])
    def acknowledgements(self, request: Request, pk: str) -> Response:
        """Which running targeted agents have applied this revocation (from their heartbeats)."""
        acks = selectors.acknowledgements(self.get_object())
        return Response(AcknowledgementsSerializer(acks).data)
