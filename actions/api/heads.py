"""POST /api/v1/audit/heads: sign a tree head now (operators; witness publication)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.request import Request
from rest_framework.response import Response

from actions import transparency, witnesses
from passports.roles import ReadViewerWriteOperator

# A signed tree head document (the same JSON in exports, witness files and Redis). Inline: a
# serializer class cannot declare a field named "root" (Field.root is DRF's).
TREE_HEAD = inline_serializer(
    name="TreeHead",
    fields={
        "tree_size": serializers.IntegerField(help_text="events covered: leaves 0..tree_size-1"),
        "root": serializers.CharField(help_text="RFC 9162 Merkle root (hex)"),
        "at": serializers.CharField(help_text="when it was signed (ISO 8601, UTC)"),
        "prev": serializers.CharField(help_text="head_id of the previous head (zeros: none)"),
        "kid": serializers.CharField(help_text="the signing key (JWKS)"),
        "signature": serializers.CharField(help_text="Ed25519 over head_payload (base64url)"),
    },
)


@extend_schema(request=None, responses={201: TREE_HEAD, 200: TREE_HEAD})
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
