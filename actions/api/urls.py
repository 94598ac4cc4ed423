from django.urls import path

from actions.api.heads import sign_head
from actions.api.views import ActionsView, audit_status, export_actions

urlpatterns = [
    path("actions", ActionsView.as_view(), name="actions"),
    path("actions/export", export_actions, name="actions-export"),
    path("audit", audit_status, name="audit-status"),
    path("audit/heads", sign_head, name="audit-heads"),  # POST; proofs' GET list joins it here
]
