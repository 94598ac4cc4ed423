"""The incident, end to end: denied actions, a firewall signal, a rule kill, the timeline, audit."""

import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from actions import audit
from actions.models import ActionEvent
from killswitch import publisher
from killswitch.models import Revocation
from passports.auth import create_api_token
from passports.models import Agent
from passports.roles import Role
from tests.actions.test_audit import maintenance
from tests.conftest import make_user

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from incident_demo import run_scenario

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_incident_end_to_end(live_server, settings, django_user_model, revocation_heartbeat):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    admin = make_user(django_user_model, "incident-admin", Role.ADMIN)
    lines: list[str] = []
    result = run_scenario(
        live_server.url, create_api_token(user=admin), settings.REDIS_URL, say=lines.append
    )
    transcript = "\n".join(lines)

    agent = Agent.objects.get(pk=result["agent"]["id"])
    assert agent.status == Agent.Status.KILLED
    revocation = Revocation.objects.get(target_value=str(agent.pk))
    assert revocation.source == "rule" and "cryptomining" in revocation.reason
    assert result["signal"]["matched_agent"] == str(agent.pk)
    assert result["refused_after"] is not None and result["refused_after"] < 1.0, transcript

    denied = ActionEvent.objects.filter(agent=agent, decision="deny").order_by("seq")
    assert [(e.action, e.resource) for e in denied][:2] == [
        ("net:connect", "198.51.100.7:22"),
        ("proc:exec", "xmrig"),
    ]
    kinds = [item["type"] for item in result["timeline"]]
    # allowed python, two denies, the signal, the rule's match, the revocation, the refused check
    first = {kind: kinds.index(kind) for kind in ("signal", "rule_match", "revocation")}
    assert kinds[:3] == ["action", "action", "action"]
    assert first["signal"] < first["rule_match"] <= first["revocation"]
    highlighted = [item["type"] for item in result["timeline"] if item.get("highlight")]
    assert highlighted.count("signal") == 1 and highlighted.count("action") >= 2
    assert result["audit"]["ok"] is True

    audit.create_checkpoints()
    call_command("verify_audit")
    with maintenance(open_=True):
        ActionEvent.objects.filter(agent=agent, resource="xmrig").update(decision="allow")
    with pytest.raises(CommandError):
        call_command("verify_audit")
