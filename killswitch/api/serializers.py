from rest_framework import serializers

from actions.api.serializers import TreeStopSerializer
from actions.models import AgentCopy
from killswitch.models import Revocation
from killswitch.selectors import ACKNOWLEDGED, MISMATCHED, STOPPING, WAITING
from registry.api import StrictCharField, StrictSerializer


class RevokeSerializer(StrictSerializer):
    target = serializers.JSONField()
    reason = StrictCharField(max_length=500)


class LiftSerializer(StrictSerializer):
    reason = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class RevocationTargetSerializer(serializers.Serializer):
    """What a revocation stops: exactly one of these keys."""

    passport = serializers.UUIDField(required=False)
    agent = serializers.UUIDField(required=False)
    fleet = serializers.CharField(required=False)
    all = serializers.BooleanField(required=False)


class RevocationSerializer(serializers.ModelSerializer):
    target = RevocationTargetSerializer(read_only=True)
    actor = serializers.CharField(source="actor.username", default=None, read_only=True)
    lifted_by = serializers.CharField(source="lifted_by.username", default=None, read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = Revocation
        fields = [
            "id",
            "epoch",
            "target",
            "reason",
            "source",
            "actor",
            "created_at",
            "active",
            "lifted_at",
            "lifted_by",
            "lift_reason",
            "lift_epoch",
        ]


ACK_STATES = [ACKNOWLEDGED, WAITING, MISMATCHED, STOPPING]
ACK_STATE_HELP = (
    "acknowledged: its heartbeat shows this epoch applied and the digest of the revocations it "
    "holds matches the registry's (and, for a supervised copy, its process tree was reported "
    "stopped for this epoch or a later one); waiting: an older epoch (or no digest); "
    "mismatched: the epoch is reached but it holds something else; stopping: a supervised copy "
    "applied the epoch but has not yet reported its process tree stopped"
)


class CopyAcknowledgementSerializer(serializers.Serializer):
    host = serializers.CharField()
    pid = serializers.IntegerField(help_text="0 when its heartbeat carried none")
    supervised = serializers.BooleanField(help_text="a supervisor that owns the process tree")
    mechanism = serializers.CharField(allow_blank=True, help_text="cgroup or subreaper")
    epoch_seen = serializers.IntegerField(allow_null=True)
    last_seen = serializers.DateTimeField()
    state = serializers.ChoiceField(choices=ACK_STATES, help_text=ACK_STATE_HELP)
    acknowledged = serializers.BooleanField()
    tree_state = serializers.ChoiceField(
        choices=[("", ""), *AgentCopy.State.choices],
        help_text="the supervisor's process tree at its last heartbeat ('' in-process)",
    )
    processes = serializers.IntegerField(
        allow_null=True, help_text="processes in the tree at its last heartbeat"
    )
    stopped = TreeStopSerializer(
        allow_null=True,
        help_text="the supervisor's stop of the tree, when it was for this revocation or a "
        "later one: 'process tree stopped: N processes'",
    )


class AgentAcknowledgementSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    fleet = serializers.CharField()
    epoch_seen = serializers.IntegerField(allow_null=True)
    last_seen = serializers.DateTimeField()
    state = serializers.ChoiceField(
        choices=ACK_STATES, help_text=f"its least advanced copy's. {ACK_STATE_HELP}"
    )
    acknowledged = serializers.BooleanField()
    copies = CopyAcknowledgementSerializer(
        many=True,
        help_text="its copies (processes posting heartbeats) that are running or were stopped "
        "by a supervisor for this revocation",
    )


class AcknowledgementsSerializer(serializers.Serializer):
    revocation = serializers.IntegerField()
    epoch = serializers.IntegerField()
    active = serializers.BooleanField()
    running = serializers.IntegerField(help_text="targeted agents that reported in the last 30 s")
    acknowledged = serializers.IntegerField()
    mismatched = serializers.IntegerField()
    copies = serializers.IntegerField(help_text="copies listed under the agents")
    copies_acknowledged = serializers.IntegerField()
    processes_stopped = serializers.IntegerField(
        help_text="processes supervisors stopped for this revocation (or a later one)"
    )
    agents = AgentAcknowledgementSerializer(many=True)
