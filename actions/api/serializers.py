import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from actions.models import ActionEvent, AgentCopy
from agent_passport.reporter import (
    MAX_ACTION_LENGTH,
    MAX_BATCH_EVENTS,
    MAX_DETAILS_BYTES,
    MAX_HOST_LENGTH,
    MAX_JURISDICTION_LENGTH,
    MAX_REASON_LENGTH,
)
from agent_passport.rules import MAX_RESOURCE_LENGTH, split_action
from agent_passport.tokens import CLOCK_SKEW_LEEWAY
from registry.api import StrictCharField, StrictIntegerField, StrictSerializer
from registry.parsers import TEXT_TO_CHECK, RefusedJSON, check_text


class StrictUUIDField(serializers.UUIDField):
    """A UUID given as a string (DRF's UUIDField would also take an integer)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(OpenApiTypes.DOUBLE)
class UnixTimeField(serializers.Field):
    """Seconds since 1970-01-01 UTC (a JSON number) as an aware datetime. A time ahead of the
    registry's clock is kept (the event is flagged ``clock_skewed``)."""

    default_error_messages = {
        "invalid": "must be a number of seconds since 1970-01-01 UTC",
        "out_of_range": "is out of range",
    }

    def to_internal_value(self, data) -> datetime:
        if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
            self.fail("invalid")
        if data < 0:
            self.fail("out_of_range")
        try:
            when = datetime.fromtimestamp(data, tz=UTC)
        except (OverflowError, OSError, ValueError):
            self.fail("out_of_range")
        return when

    def to_representation(self, value: datetime) -> float:
        return value.timestamp()


class ReportedActionSerializer(StrictSerializer):
    """One event as the SDK sends it. Agent, fleet and passport are not fields: they come from
    the passport the agent authenticated with."""

    id = StrictUUIDField()
    action = StrictCharField(max_length=MAX_ACTION_LENGTH, trim_whitespace=False)
    resource = StrictCharField(
        max_length=MAX_RESOURCE_LENGTH,
        required=False,
        allow_null=True,
        allow_blank=True,
        default=None,
        trim_whitespace=False,
    )
    jurisdiction = StrictCharField(
        max_length=MAX_JURISDICTION_LENGTH,
        required=False,
        allow_null=True,
        allow_blank=True,
        default=None,
        trim_whitespace=False,
    )
    decision = serializers.ChoiceField(choices=ActionEvent.Decision.choices)
    reason = StrictCharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=False,
    )
    at = UnixTimeField(source="occurred_at")
    details = serializers.JSONField(required=False, default=dict)

    def validate_details(self, value: object) -> dict:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        size = len(json.dumps(value, ensure_ascii=False).encode())
        if size > MAX_DETAILS_BYTES:
            raise serializers.ValidationError(
                f"is {size} bytes; at most {MAX_DETAILS_BYTES} bytes of details per event"
            )
        return value

    def validate_resource(self, value: str | None) -> str:
        return value or ""

    def validate_jurisdiction(self, value: str | None) -> str:
        return value or ""

    def validate(self, attrs: dict) -> dict:
        return split_resource(attrs)


def split_resource(attrs: dict) -> dict:
    """Store ``net:connect:1.2.3.4:22`` as action ``net:connect`` + resource ``1.2.3.4:22``,
    as the rule engine reads it. A malformed action is kept verbatim (it is evidence)."""
    if not attrs["resource"]:
        try:
            domain, verb, resource = split_action(attrs["action"])
        except ValueError:
            return attrs
        attrs["action"], attrs["resource"] = f"{domain}:{verb}", resource
    return attrs


EVENT_FIELDS = frozenset(("id", "action", "resource", "jurisdiction", "decision", "reason", "at"))
DECISIONS = frozenset(ActionEvent.Decision.values)
# What JSONField (allow_nan=False) and validate_details (ensure_ascii=False) ask of details.
_DETAILS_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _text(raw: dict, name: str, longest: int) -> str | None:
    """An optional text field: its value ("" when absent or null), None if not plainly valid."""
    value = raw.get(name)
    if value is None:
        return ""
    return value if type(value) is str and len(value) <= longest else None


def plainly_valid_event(raw: dict) -> dict | None:
    """What ReportedActionSerializer makes of ``raw`` when every field is plainly valid, else
    None (the serializer then validates it and names what is wrong), at a fraction of its cost.

    Only for text already known to hold no NUL or lone surrogate (no ``TEXT_TO_CHECK``); every
    condition is at least as strict as the serializer's, so the answers cannot differ."""
    if not EVENT_FIELDS.issuperset(raw.keys() - {"details"}):
        return None
    action, decision, at, event_id = (
        raw.get("action"),
        raw.get("decision"),
        raw.get("at"),
        raw.get("id"),
    )
    if type(action) is not str or not 0 < len(action) <= MAX_ACTION_LENGTH:
        return None
    if type(decision) is not str or decision not in DECISIONS or type(event_id) is not str:
        return None
    if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < math.inf:
        return None
    resource = _text(raw, "resource", MAX_RESOURCE_LENGTH)
    jurisdiction = _text(raw, "jurisdiction", MAX_JURISDICTION_LENGTH)
    reason = raw.get("reason", "")
    if resource is None or jurisdiction is None or type(reason) is not str:
        return None
    if len(reason) > MAX_REASON_LENGTH:
        return None
    details = raw.get("details", {})
    if type(details) is not dict:
        return None
    if details:
        try:
            size = len(_DETAILS_JSON.encode(details).encode())
        except ValueError:
            return None
        if size > MAX_DETAILS_BYTES:
            return None
    try:
        attrs = {
            "id": uuid.UUID(event_id),
            "action": action,
            "resource": resource,
            "jurisdiction": jurisdiction,
            "decision": decision,
            "reason": reason,
            "occurred_at": datetime.fromtimestamp(at, tz=UTC),
            "details": details,
        }
    except (OverflowError, OSError, ValueError):
        return None
    return split_resource(attrs)


@extend_schema_field(ReportedActionSerializer)
class _EventItem(serializers.Field):
    """Passes a list item through; each event is validated on its own (see ActionBatch)."""

    def to_internal_value(self, data):
        return data

    def to_representation(self, value):
        return value


MAX_PID = 2**31 - 1
MAX_EPOCH = 2**63 - 1
MAX_PROCESSES = 2**31 - 1


class SupervisorStopSerializer(StrictSerializer):
    """How the supervisor stopped the process tree (set once, when the last process was gone)."""

    epoch = StrictIntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=0,
        max_value=MAX_EPOCH,
        help_text="the revocation epoch that caused it; null for expiry or stale state",
    )
    cause = serializers.ChoiceField(choices=AgentCopy.StopCause.choices)
    processes = StrictIntegerField(min_value=0, max_value=MAX_PROCESSES)
    sigkilled = StrictIntegerField(
        min_value=0, max_value=MAX_PROCESSES, help_text="of those, how many needed SIGKILL"
    )
    at = UnixTimeField(help_text="unix seconds when the last process was gone")

    def validate(self, attrs: dict) -> dict:
        if attrs["sigkilled"] > attrs["processes"]:
            raise serializers.ValidationError({"sigkilled": ["is more than processes"]})
        revoked = attrs["cause"] == AgentCopy.StopCause.REVOKED
        if revoked and attrs["epoch"] is None:
            raise serializers.ValidationError({"epoch": ["is required when cause is revoked"]})
        if not revoked and attrs["epoch"] is not None:
            raise serializers.ValidationError({"epoch": ["must be null unless cause is revoked"]})
        return attrs


class SupervisorSerializer(StrictSerializer):
    """The process tree a supervisor (``agent-passport run``) owns, in its heartbeat."""

    mechanism = serializers.ChoiceField(choices=AgentCopy.Mechanism.choices)
    child_pid = StrictIntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=MAX_PID
    )
    processes = StrictIntegerField(min_value=0, max_value=MAX_PROCESSES)
    state = serializers.ChoiceField(choices=AgentCopy.State.choices)
    stopped = SupervisorStopSerializer(required=False, allow_null=True, default=None)

    def validate(self, attrs: dict) -> dict:
        if attrs["state"] == AgentCopy.State.STOPPED and attrs["stopped"] is None:
            raise serializers.ValidationError({"stopped": ["is required when state is stopped"]})
        return attrs


class HeartbeatSerializer(StrictSerializer):
    epoch = StrictIntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=MAX_EPOCH
    )
    host = StrictCharField(max_length=MAX_HOST_LENGTH, required=False, default="", allow_blank=True)
    digest = serializers.RegexField(
        r"^[0-9a-f]{64}$",
        required=False,
        default="",
        error_messages={"invalid": "must be the 64 hex digits of a revocations digest"},
    )
    pid = StrictIntegerField(
        required=False, allow_null=True, default=None, min_value=0, max_value=MAX_PID
    )
    dropped = StrictIntegerField(required=False, default=0, min_value=0, max_value=2**31 - 1)
    supervisor = SupervisorSerializer(
        required=False,
        allow_null=True,
        default=None,
        help_text="present when the copy is a supervisor that owns the agent's process tree",
    )


class ActionBatchSerializer(StrictSerializer):
    """``{"events": [...], "heartbeat": {...}}``. A malformed event does not fail the batch:
    ``validated_data["errors"]`` maps its index to its field errors, the others are kept.
    Context ``TEXT_TO_CHECK`` false (from ItemwiseJSONParser) skips the events' text check."""

    events = serializers.ListField(
        child=_EventItem(allow_null=True), max_length=MAX_BATCH_EVENTS, allow_empty=True
    )
    heartbeat = HeartbeatSerializer(required=False, allow_null=True)

    def to_internal_value(self, data):
        if isinstance(data, dict):  # the envelope; events are checked one by one (validate)
            check_text({key: value for key, value in data.items() if key != "events"})
        return super().to_internal_value(data)

    def validate(self, attrs: dict) -> dict:
        valid: list[dict[str, Any]] = []
        errors: dict[str, Any] = {}
        # One serializer validates every event (as DRF's ListSerializer does): building its
        # fields once instead of per event halves the cost of a 1,000-event batch.
        event = ReportedActionSerializer()
        check = self.context.get(TEXT_TO_CHECK, True)
        for index, raw in enumerate(attrs["events"]):
            if not isinstance(raw, dict):
                errors[str(index)] = {"event": ["must be a JSON object"]}
                continue
            try:
                if check:
                    check_text(raw)
                elif (plain := plainly_valid_event(raw)) is not None:
                    valid.append(plain)
                    continue
                valid.append(event.run_validation(raw))
            except RefusedJSON as exc:  # NUL or a lone surrogate somewhere in this event
                errors[str(index)] = {exc.field: [str(exc.detail)]}
            except serializers.ValidationError as exc:
                errors[str(index)] = exc.detail
        return {"events": valid, "errors": errors, "heartbeat": attrs.get("heartbeat")}


HEX_HASH = "64 hex digits (SHA-256)"


def _hex_field() -> serializers.CharField:
    return serializers.CharField(help_text=HEX_HASH)


class TreeHeadSerializer(serializers.Serializer):
    """A signed tree head: "the log's first ``tree_size`` leaves have root ``root``", Ed25519-signed
    over ``agent_passport.merkle.head_payload``; ``prev`` is the previous head's ``head_id``."""

    tree_size = serializers.IntegerField()
    at = serializers.CharField(help_text="ISO 8601 UTC, e.g. 2026-12-02T01:00:00.000000Z")
    prev = serializers.CharField(help_text=f"{HEX_HASH}; 64 zeros for the first head")
    kid = serializers.CharField(help_text="the signing key's id in the registry's JWKS")
    signature = serializers.CharField(help_text="base64url Ed25519 signature")

    def get_fields(self) -> dict[str, serializers.Field]:
        # "root" is a Field attribute: declared here instead of as a class attribute.
        fields = super().get_fields()
        return {"tree_size": fields.pop("tree_size"), "root": _hex_field(), **fields}


@extend_schema_field(
    {
        "type": "array",
        "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        "minItems": 2,
        "maxItems": 2,
        "description": "[leaf index, event hash (hex)]",
    }
)
class _PromisedLeaf(serializers.Field):
    def to_representation(self, value):
        return value


class InclusionPromiseSerializer(serializers.Serializer):
    """A signed promise that the leaves will be covered by a signed head before ``include_by``."""

    leaves = serializers.ListField(
        child=_PromisedLeaf(),
        help_text="[[leaf index, event hash], ...] of every event of the batch, by leaf index",
    )
    include_by = serializers.CharField(help_text="ISO 8601 UTC")
    kid = serializers.CharField()
    signature = serializers.CharField(help_text="base64url Ed25519 over promise_payload")


class ReceiptSerializer(serializers.Serializer):
    head = TreeHeadSerializer(allow_null=True, help_text="the newest signed head (null: none yet)")
    promise = InclusionPromiseSerializer(allow_null=True, help_text="null for an empty batch")


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    # Shadows Serializer.errors, which this output-only serializer never reads.
    errors = serializers.DictField(  # type: ignore[assignment]
        child=serializers.DictField(child=serializers.ListField(child=serializers.CharField())),
        help_text="Rejected events by their index in the batch: {field: [message]}.",
    )
    receipt = ReceiptSerializer(
        help_text="the batch's place in the transparency log; the SDK keeps the newest receipts "
        "and later asks consistency and inclusion proofs against them"
    )


class TreeHeadPageSerializer(serializers.Serializer):
    heads = TreeHeadSerializer(many=True)
    next_from_size = serializers.IntegerField(
        allow_null=True, help_text="from_size of the next page (null: this is the last)"
    )


class EventDocumentSerializer(serializers.Serializer):
    """An event as its hash covers it (``actions.audit.event_document``; times as
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ``), with its stored hash and leaf index."""

    agent = serializers.UUIDField()
    seq = serializers.IntegerField()
    id = serializers.UUIDField()
    passport = serializers.UUIDField()
    fleet = serializers.CharField()
    action = serializers.CharField()
    resource = serializers.CharField()
    jurisdiction = serializers.CharField()
    decision = serializers.ChoiceField(choices=ActionEvent.Decision.choices)
    reason = serializers.CharField()
    occurred_at = serializers.CharField()
    received_at = serializers.CharField()
    details = serializers.DictField(help_text="as the agent reported them")
    prev = serializers.CharField(help_text=f"{HEX_HASH}: the agent's previous event")
    hash = serializers.CharField(help_text=HEX_HASH)
    leaf_index = serializers.IntegerField()


class InclusionProofSerializer(serializers.Serializer):
    """Verified offline by ``python -m agent_passport verify-proof``: ``verify_inclusion(
    leaf_hash(event_hash(event)), leaf_index, tree_size, path, head.root)`` and ``verify_head``."""

    event = EventDocumentSerializer(help_text="the event document (what its hash covers)")
    leaf_index = serializers.IntegerField()
    tree_size = serializers.IntegerField()
    path = serializers.ListField(child=serializers.CharField(), help_text="hex, leaf end first")
    head = TreeHeadSerializer()


class ConsistencyProofSerializer(serializers.Serializer):
    # "from" is a Python keyword: declared in __init__ below.
    to = serializers.IntegerField()
    proof = serializers.ListField(child=serializers.CharField(), help_text="hex (RFC 9162)")
    from_head = TreeHeadSerializer(allow_null=True, help_text="null: no head has that size")
    to_head = TreeHeadSerializer()

    def get_fields(self) -> dict[str, serializers.Field]:
        return {"from": serializers.IntegerField(), **super().get_fields()}


class AuditReportSerializer(serializers.Serializer):
    """The log verified (``agent_passport.audit.ChainReport``): its tree against every signed
    head, the chain of heads, every chain against its checkpoints."""

    ok = serializers.BooleanField(help_text="nothing was found tampered with")
    verified = serializers.BooleanField(
        help_text="ok, and every event is covered by a signed tree head"
    )
    chains = serializers.IntegerField()
    events = serializers.IntegerField()
    checkpoints = serializers.IntegerField()
    heads = serializers.IntegerField(help_text="signed tree heads")
    tree_size = serializers.IntegerField(help_text="leaves in the log (archived ones included)")
    signed_size = serializers.IntegerField(help_text="the newest signed head's size")
    unsigned_events = serializers.IntegerField(
        help_text="events not yet covered by a signed head (not verified yet)"
    )
    problems = serializers.ListField(
        child=serializers.CharField(), help_text="each names what was tampered with"
    )


class ActionEventSerializer(serializers.ModelSerializer):
    clock_skewed = serializers.BooleanField(
        read_only=True,
        help_text=f"occurred_at (the agent's clock) is more than {CLOCK_SKEW_LEEWAY} s ahead of "
        "received_at (the registry's)",
    )

    class Meta:
        model = ActionEvent
        fields = [
            "id",
            "passport",
            "agent",
            "fleet",
            "action",
            "resource",
            "jurisdiction",
            "decision",
            "reason",
            "occurred_at",
            "received_at",
            "clock_skewed",
            "details",
            "seq",
            "hash",
        ]


class TreeStopSerializer(serializers.Serializer):
    """How a supervisor stopped its agent's process tree (``actions.selectors.TreeStop``)."""

    cause = serializers.ChoiceField(choices=AgentCopy.StopCause.choices)
    epoch = serializers.IntegerField(
        allow_null=True, help_text="the revocation epoch that caused it (null: expiry or stale)"
    )
    processes = serializers.IntegerField(help_text="processes it stopped")
    sigkilled = serializers.IntegerField(help_text="of those, how many needed SIGKILL")
    at = serializers.DateTimeField(help_text="when the last one was gone")


class CopyStatusSerializer(serializers.Serializer):
    """One copy of an agent (``actions.selectors.CopyStatus``)."""

    host = serializers.CharField(help_text="as it reported it, else its remote address")
    pid = serializers.IntegerField(help_text="0 when its heartbeat carried none")
    last_seen_at = serializers.DateTimeField()
    running = serializers.BooleanField(
        help_text="reported in the last 30 s and its process tree (if supervised) not final"
    )
    epoch = serializers.IntegerField(allow_null=True, help_text="last revocation epoch applied")
    supervised = serializers.BooleanField(help_text="a supervisor that owns the process tree")
    mechanism = serializers.CharField(allow_blank=True, help_text="cgroup or subreaper")
    state = serializers.ChoiceField(
        choices=[("", ""), *AgentCopy.State.choices],
        help_text="the supervisor's process tree ('' in-process)",
    )
    processes = serializers.IntegerField(allow_null=True, help_text="in the tree now")
    stopped = TreeStopSerializer(allow_null=True)
