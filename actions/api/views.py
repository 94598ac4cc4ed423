from django.core.exceptions import RequestDataTooBig
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.generics import ListAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from actions import selectors, services
from actions.api.serializers import (
    ActionBatchSerializer,
    ActionEventSerializer,
    IngestResultSerializer,
)
from actions.auth import IsPassportHolder, PassportBearerAuthentication
from passports.roles import IsViewer
from registry.errors import RequestRejected


class BodyTooLarge(RequestRejected):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE


class NewestReceivedFirst(CursorPagination):
    ordering = "-received_at"
    page_size_query_param = "page_size"
    max_page_size = 1000


class ActionsView(ListAPIView):
    """GET: the action log, for viewers. POST: an agent reports a batch with its own passport."""

    serializer_class = ActionEventSerializer
    pagination_class = NewestReceivedFirst

    def get_authenticators(self):
        # Only the agent's passport may post; operator API tokens only read. (The schema
        # generator asks before it has a request.)
        if getattr(self.request, "method", None) == "POST":
            return [PassportBearerAuthentication()]
        return super().get_authenticators()

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsPassportHolder()]
        return [IsViewer()]

    def get_queryset(self):
        params = self.request.query_params
        return selectors.action_events(
            agent=params.get("agent"),
            fleet=params.get("fleet"),
            decision=params.get("decision"),
            action=params.get("action"),
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("agent", str),
            OpenApiParameter("fleet", str),
            OpenApiParameter("decision", str, enum=["allow", "deny"]),
            OpenApiParameter("action", str),
        ]
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=ActionBatchSerializer, responses={200: IngestResultSerializer})
    def post(self, request: Request) -> Response:
        try:
            body = request.data
        except RequestDataTooBig as exc:  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
            raise BodyTooLarge("body", "the request body is too large; send fewer events") from exc
        data = ActionBatchSerializer(data=body)
        data.is_valid(raise_exception=True)
        batch = data.validated_data
        result = services.ingest_actions(
            passport=request.auth,
            events=batch["events"],
            heartbeat=batch["heartbeat"],
            remote_addr=request.META.get("REMOTE_ADDR", ""),
        )
        counts = {"accepted": result.accepted, "duplicates": result.duplicates}
        return Response({**counts, "errors": batch["errors"]})
