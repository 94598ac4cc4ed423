from django.urls import path

from actions.api.views import ActionsView, audit_status, export_actions

urlpatterns = [
    path("actions", ActionsView.as_view(), name="actions"),
    path("actions/export", export_actions, name="actions-export"),
    path("audit", audit_status, name="audit-status"),
]
