from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from passports.roles import ReadViewerWriteOperator, signed_in
from registry.api import DATABASE_ID_PATTERN
from registry.pagination import ordered_by
from signals import selectors, services
from signals.api.serializers import SignalReportSerializer, SignalSerializer
from signals.models import Signal

NewestFirst = ordered_by("-id")


class SignalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """External signals (IDS, firewall, EDR) about agents. Operators post; viewers read."""

    serializer_class = SignalSerializer
    permission_classes = [ReadViewerWriteOperator]
    pagination_class = NewestFirst
    lookup_value_regex = DATABASE_ID_PATTERN

    def get_queryset(self):
        params = self.request.query_params
        return selectors.signals(agent=params.get("agent"), category=params.get("category"))

    @extend_schema(
        parameters=[
            OpenApiParameter("agent", str),
            OpenApiParameter("category", str, enum=Signal.Category.values),
        ]
    )
    def list(self, request: Request, *args, **kwargs) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=SignalReportSerializer, responses={201: SignalSerializer})
    def create(self, request: Request) -> Response:
        data = SignalReportSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        signal = services.record_signal(**data.validated_data, reported_by=signed_in(request.user))
        return Response(SignalSerializer(signal).data, status=status.HTTP_201_CREATED)
