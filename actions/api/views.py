import csv
import uuid
from typing import cast

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication, get_authorization_header
from rest_framework.decorators import api_view, permission_classes
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from actions import audit, selectors, services, transparency
from actions.api.serializers import (
    ActionBatchSerializer,
    ActionEventSerializer,
    AuditReportSerializer,
    ConsistencyProofSerializer,
    InclusionProofSerializer,
    IngestResultSerializer,
    TreeHeadPageSerializer,
    TreeHeadSerializer,
)
from actions.auth import IsPassportHolder, PassportBearerAuthentication, PassportHolder
from passports.auth import ApiTokenAuthentication
from passports.models import Passport
from passports.roles import IsViewer, ReadViewerWriteOperator
from registry.errors import RequestRejected
from registry.pagination import ordered_by
from registry.parsers import ItemwiseJSONParser
from registry.throttling import PerPassportIngestThrottle

FILTERS = ("agent", "fleet", "decision", "action", "since", "until")


def _filters(request: Request) -> dict[str, str | None]:
    return {name: request.query_params.get(name) for name in FILTERS}


FILTER_PARAMETERS = [
    OpenApiParameter("agent", str, description="agent id (UUID)"),
    OpenApiParameter("fleet", str),
    OpenApiParameter("decision", str, enum=["allow", "deny"]),
    OpenApiParameter("action", str, description="pattern, e.g. net:* or proc:exec:*miner*"),
    OpenApiParameter("since", str, description="ISO 8601, inclusive (agent time)"),
    OpenApiParameter("until", str, description="ISO 8601, exclusive (agent time)"),
]
NewestReceivedFirst = ordered_by("-received_at")


class ActionsView(ListAPIView):
    """GET: the action log, for viewers. POST: an agent reports a batch with its own passport."""

    serializer_class = ActionEventSerializer
    pagination_class = NewestReceivedFirst
    parser_classes = [ItemwiseJSONParser]  # one bad event must not fail the batch

    def get_authenticators(self):
        # Only the agent's passport may post; operator API tokens only read. (The schema
        # generator asks before it has a request.)
        if getattr(self.request, "method", None) == "POST":
            return [PassportBearerAuthentication()]
        return super().get_authenticators()

    def get_throttles(self):
        if self.request.method == "POST":
            return [PerPassportIngestThrottle()]
        return super().get_throttles()

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsPassportHolder()]
        return [IsViewer()]

    def get_queryset(self):
        return selectors.action_events(**_filters(self.request))

    @extend_schema(parameters=FILTER_PARAMETERS)
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=ActionBatchSerializer, responses={200: IngestResultSerializer})
    def post(self, request: Request) -> Response:
        body = request.data
        data = ActionBatchSerializer(data=body, context=request.parser_context)
        data.is_valid(raise_exception=True)
        batch = data.validated_data
        result = services.ingest_actions(
            passport=cast(Passport, request.auth),  # set by PassportBearerAuthentication
            events=batch["events"],
            heartbeat=batch["heartbeat"],
            remote_addr=request.META.get("REMOTE_ADDR", ""),
        )
        counts = {"accepted": result.accepted, "duplicates": result.duplicates}
        return Response({**counts, "errors": batch["errors"], "receipt": result.receipt})


CSV_COLUMNS = (
    "id",
    "agent",
    "fleet",
    "passport",
    "seq",
    "action",
    "resource",
    "jurisdiction",
    "decision",
    "reason",
    "occurred_at",
    "received_at",
    "hash",
)


# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """Text a spreadsheet shows instead of evaluating: a leading ``'`` before a formula
    trigger (OWASP, CSV injection). Agents write these fields, so they are attacker-controlled."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


class _Echo:
    def write(self, value: str) -> str:
        return value


@extend_schema(
    parameters=[OpenApiParameter("format", str, enum=["jsonl", "csv"]), *FILTER_PARAMETERS],
    responses={200: OpenApiTypes.STR},
)
@api_view(["GET"])
@permission_classes([IsViewer])
def export_actions(request: Request) -> StreamingHttpResponse:
    """JSONL: signed tree heads, checkpoints, then the events in leaf order (every event, or the
    whole chains of the selected agents, each with its inclusion proof in the newest head),
    verifiable offline with ``python -m agent_passport verify-audit``, byte-exact. CSV: the
    filtered events, for spreadsheets, with formula-like cells neutralised."""
    export_format = request.query_params.get("format", "jsonl")
    if export_format == "jsonl":
        agents = selectors.agents_for_export(
            agent=request.query_params.get("agent"), fleet=request.query_params.get("fleet")
        )
        response = StreamingHttpResponse(
            audit.export_jsonl(agents), content_type="application/x-ndjson"
        )
        response["Content-Disposition"] = 'attachment; filename="actions.jsonl"'
        return response
    if export_format != "csv":
        raise RequestRejected("format", "must be jsonl or csv")
    events = selectors.action_events(**_filters(request)).order_by("received_at", "seq")
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(CSV_COLUMNS)
        for document in map(audit.event_document, events.iterator(chunk_size=2000)):
            yield writer.writerow([spreadsheet_cell(document[c]) for c in CSV_COLUMNS])

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="actions.csv"'
    return response


@extend_schema(responses={200: AuditReportSerializer})
@api_view(["GET"])
@permission_classes([IsViewer])
def audit_status(request: Request) -> Response:
    """Verify the log: the tree against every signed head, the chain of heads, every chain
    against its checkpoints, the heads of the configured witness files. Events no signed head
    covers yet are counted, not verified."""
    return Response(AuditReportSerializer(audit.status()).data)


# -- the transparency log ------------------------------------------------------------------------
class _LogView(APIView):
    """Read endpoints of the transparency log: viewers (API token or console session) and agents
    with their own passport (``Authorization: Bearer <passport token>``)."""

    authentication_classes = [
        ApiTokenAuthentication,
        SessionAuthentication,
        PassportBearerAuthentication,
    ]
    permission_classes = [IsPassportHolder | IsViewer]  # an agent has no role to look up

    def get_authenticators(self):
        # Each scheme's authenticator refuses the other's header: pick by the scheme. (The
        # schema generator asks before it has a request: it gets all three.)
        request = getattr(self, "request", None)
        if request is None:
            return [auth() for auth in self.authentication_classes]
        header = get_authorization_header(request).split()
        if header and header[0].lower() == b"bearer":
            return [PassportBearerAuthentication()]
        return [ApiTokenAuthentication(), SessionAuthentication()]


def _agent_of(request: Request) -> uuid.UUID | None:
    """The agent asking with its passport (None for a viewer)."""
    return request.auth.agent_id if isinstance(request.user, PassportHolder) else None


class LatestHeadView(_LogView):
    @extend_schema(responses={200: TreeHeadSerializer}, summary="The newest signed tree head")
    def get(self, request: Request) -> Response:
        return Response(selectors.latest_head())


class TreeHeadsView(_LogView):
    """GET: the signed heads (viewers and agents). POST: sign a head now (operators)."""

    def get_authenticators(self):
        if getattr(getattr(self, "request", None), "method", None) == "POST":
            return [ApiTokenAuthentication(), SessionAuthentication()]  # CSRF for a session
        return super().get_authenticators()

    def get_permissions(self):
        if self.request.method == "POST":
            return [ReadViewerWriteOperator()]
        return super().get_permissions()

    @extend_schema(
        request=None,
        responses={201: TreeHeadSerializer, 200: TreeHeadSerializer},
        summary="Sign a tree head now",
        description="201 with the new head; 200 with the latest one if the log has not grown "
        "since; 409 while the log is empty. Witnesses get the head after commit.",
    )
    def post(self, request: Request) -> Response:
        head, created = transparency.sign_on_demand()
        return Response(
            head.document(),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("from_size", int, description="heads of this many leaves or more"),
            OpenApiParameter("limit", int, description=f"1 to {selectors.MAX_HEADS_LISTED}"),
        ],
        responses={200: TreeHeadPageSerializer},
        summary="Signed tree heads, ascending size",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        return Response(
            selectors.heads(from_size=params.get("from_size"), limit=params.get("limit"))
        )


class EventProofView(_LogView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "tree_size", int, description="a signed head's size (default: the latest head)"
            )
        ],
        responses={200: InclusionProofSerializer},
        summary="Inclusion proof of an event in a signed tree head",
        description="409 while no signed head covers the event yet; an agent may ask only for "
        "its own events.",
    )
    def get(self, request: Request, event_id: str) -> Response:
        return Response(
            selectors.event_proof(
                event_id,
                tree_size=request.query_params.get("tree_size"),
                agent=_agent_of(request),
            )
        )


class ConsistencyProofView(_LogView):
    @extend_schema(
        parameters=[
            OpenApiParameter("from", int, required=True, description="1 ≤ from ≤ to"),
            OpenApiParameter("to", int, description="a signed head's size (default: latest)"),
        ],
        responses={200: ConsistencyProofSerializer},
        summary="Consistency proof between two tree sizes",
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        return Response(selectors.consistency(first=params.get("from"), second=params.get("to")))


latest_head = LatestHeadView.as_view()
tree_heads = TreeHeadsView.as_view()
event_proof = EventProofView.as_view()
consistency_proof = ConsistencyProofView.as_view()
