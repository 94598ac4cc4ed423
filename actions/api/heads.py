"""POST /api/v1/audit/heads: sign a tree head now (operators; witness publication)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from actions import transparency, witnesses
from passports.roles import ReadViewerWriteOperator


@extend_schema(request=None, responses={201: OpenApiTypes.OBJECT, 200: OpenApiTypes.OBJECT})
@api_view(["POST"])
@permission_classes([ReadViewerWriteOperator])
def sign_head(request: Request) -> Response:
    """Sign a head over every committed event: 201 with the new head, 200 with the latest one
    if the log has not grown since (409 while it is empty). Witnesses get it after commit."""
    head, created = witnesses.sign_on_demand()
    return Response(
        transparency.head_document(head),
        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
    )
