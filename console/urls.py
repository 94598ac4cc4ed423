from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("console/live.json", views.dashboard_live, name="dashboard-live"),
    path("agents/", views.agents, name="agents"),
    path("agents/<uuid:agent_id>/", views.agent_detail, name="agent"),
    path("agents/<uuid:agent_id>/live.json", views.agent_live, name="agent-live"),
    path("passports/new", views.issue_passport, name="issue"),
    path("kill/", views.kill, name="kill"),
    path("revocations/<int:revocation_id>/", views.revocation_detail, name="revocation"),
    path(
        "revocations/<int:revocation_id>/acks.json", views.revocation_acks, name="revocation-acks"
    ),
    path("revocations/<int:revocation_id>/lift", views.lift, name="lift"),
    path("actions/", views.action_log, name="actions"),
    path("actions/<uuid:event_id>/verify", views.event_verify, name="event-verify"),
    path("rules/", views.rules, name="rules"),
    path("rules/<int:rule_id>/toggle", views.rule_toggle, name="rule-toggle"),
    path("keys/", views.keys, name="keys"),
]
