from django.urls import path

from actions.api.views import (
    ActionsView,
    audit_status,
    consistency_proof,
    event_proof,
    export_actions,
    latest_head,
    tree_heads,
)

urlpatterns = [
    path("actions", ActionsView.as_view(), name="actions"),
    path("actions/export", export_actions, name="actions-export"),
    path("actions/<str:event_id>/proof", event_proof, name="action-proof"),
    path("audit", audit_status, name="audit-status"),
    path("audit/heads", tree_heads, name="audit-heads"),
    path("audit/heads/latest", latest_head, name="audit-head-latest"),
    path("audit/consistency", consistency_proof, name="audit-consistency"),
]
