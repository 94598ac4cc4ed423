"""Read queries for the action log, with validated filters."""

import uuid

from django.db.models import QuerySet

from actions.models import ActionEvent
from registry.errors import RequestRejected


def action_events(
    *,
    agent: str | None = None,
    fleet: str | None = None,
    decision: str | None = None,
    action: str | None = None,
) -> QuerySet[ActionEvent]:
    queryset = ActionEvent.objects.all()
    if agent:
        try:
            queryset = queryset.filter(agent_id=uuid.UUID(agent))
        except ValueError as exc:
            raise RequestRejected("agent", "must be an agent id (UUID)") from exc
    if fleet:
        queryset = queryset.filter(fleet=fleet)
    if decision:
        if decision not in ActionEvent.Decision.values:
            raise RequestRejected("decision", "must be allow or deny")
        queryset = queryset.filter(decision=decision)
    if action:
        queryset = queryset.filter(action=action)
    return queryset
