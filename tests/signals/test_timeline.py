"""An agent's timeline: actions, signals, revocations, lifts and rule matches in time order."""

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from passports.models import Agent
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db(transaction=True)


def event(action: str, decision: str, at: float) -> dict:
    return {"id": str(uuid.uuid4()), "action": action, "decision": decision, "at": at}


def report(token: str, *events) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = client.post("/api/v1/actions", {"events": list(events)}, format="json")
    assert response.status_code == 200, response.content


def kill(api, target: dict, reason: str = "incident") -> dict:
    response = api.post("/api/v1/killswitch", {"target": target, "reason": reason}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


@pytest.fixture
def story(operator_api, admin_user, agent, issue, operator):
    """Two actions, a signal that fires a kill rule, a lift, and revocations near and far."""
    passport = issue()
    now = time.time()
    report(
        passport["token"],
        event("fs:read:/workspace/a", "allow", now - 300),
        event("proc:exec:xmrig", "deny", now - 200),
    )
    stranger = Agent.objects.create(name="stranger", fleet="cpu-b", owner=operator)
    stranger_passport = operator_api.post(
        "/api/v1/passports",
        {"agent": str(stranger.id), "scope": ["fs:*:/x/**"], "jurisdiction": ["EU"]},
        format="json",
    ).json()
    report(stranger_passport["token"], event("proc:exec:nmap", "deny", now - 250))

    rule = api_client_for(admin_user).post(
        "/api/v1/rules",
        {"name": "miner-alert", "kind": "signal", "category": "cryptomining"},
        format="json",
    )
    assert rule.status_code == 201
    signal = operator_api.post(
        "/api/v1/signals",
        {
            "occurred_at": datetime.fromtimestamp(now - 100, UTC).isoformat(),
            "source_ip": "10.0.0.5",
            "category": "cryptomining",
        },
        format="json",
    ).json()
    assert signal["matched_agent"] == str(agent.id)
    agent_kill = operator_api.get("/api/v1/killswitch", {"target_type": "agent"}).json()
    revocation_id = agent_kill["results"][0]["id"]
    lifted = operator_api.post(
        f"/api/v1/killswitch/{revocation_id}/lift", {"reason": "false alarm"}, format="json"
    )
    assert lifted.status_code == 200
    kill(operator_api, {"agent": str(stranger.id)})
    kill(operator_api, {"fleet": "cpu-b"})
    kill(operator_api, {"fleet": "gpu-a"}, reason="fleet incident")
    revoked = operator_api.post(
        f"/api/v1/passports/{passport['jti']}/revoke", {"reason": "leaked"}, format="json"
    )
    assert revoked.status_code == 200
    kill(operator_api, {"all": True}, reason="big red button")
    return {"signal": signal, "revocation": revocation_id}


def timeline(api, agent, **params):
    return api.get(f"/api/v1/agents/{agent.id}/timeline", params)


def test_timeline_merges_everything_in_time_order_with_highlights(viewer_api, agent, story):
    response = timeline(viewer_api, agent)
    assert response.status_code == 200, response.content
    body = response.json()
    items = body["items"]
    assert [(i["type"], i["highlight"]) for i in items] == [
        ("action", False),
        ("action", True),
        ("signal", True),
        ("rule_match", False),
        ("revocation", False),
        ("lift", False),
        ("revocation", False),
        ("revocation", False),
        ("revocation", False),
    ]
    times = [parse(i["at"]) for i in items]
    assert times == sorted(times) and body["truncated"] is False
    allow, deny, signal, match, killed, lift, fleet, passport, everything = items
    assert (allow["decision"], deny["decision"]) == ("allow", "deny")
    assert deny["action"] == "proc:exec" and deny["resource"] == "xmrig"
    assert signal["id"] == story["signal"]["id"] and signal["category"] == "cryptomining"
    assert match["rule"]["name"] == "miner-alert" and match["revocation"] == killed["id"]
    assert match["outcome"] == "revoked" and match["signal"] == signal["id"]
    assert killed["source"] == "rule" and killed["reason"].startswith("rule 'miner-alert'")
    assert lift["id"] == story["revocation"] and lift["reason"] == "false alarm"
    assert lift["epoch"] > killed["epoch"]
    assert fleet["target"] == {"fleet": "gpu-a"}
    assert "passport" in passport["target"] and passport["reason"] == "leaked"
    assert everything["target"] == {"all": True}


def test_timeline_window_and_limit(viewer_api, agent, story):
    signal_at = story["signal"]["occurred_at"]
    later = timeline(viewer_api, agent, since=signal_at).json()["items"]
    assert [i["type"] for i in later][:2] == ["signal", "rule_match"] and len(later) == 7
    earlier = timeline(viewer_api, agent, until=signal_at).json()["items"]
    assert [i["type"] for i in earlier] == ["action", "action"]

    newest = timeline(viewer_api, agent, limit=2).json()
    assert newest["truncated"] is True and newest["limit"] == 2
    assert [i["target"] for i in newest["items"]] == [
        {"passport": newest["items"][0]["target"]["passport"]},
        {"all": True},
    ]
    before = timeline(viewer_api, agent, until=newest["items"][0]["at"], limit=7).json()
    assert before["truncated"] is False and len(before["items"]) == 7

    future = (timezone.now() + timedelta(days=1)).isoformat()
    assert timeline(viewer_api, agent, since=future).json()["items"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-01T00:00:00Z"}, "until"),
        ({"since": "2024-02-01T00:00:00Z", "until": "2024-01-01T00:00:00Z"}, "until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "lots"}, "limit"),
    ],
)
def test_timeline_bad_parameters_are_400_naming_the_field(viewer_api, agent, params, field):
    response = timeline(viewer_api, agent, **params)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_timeline_needs_a_viewer_and_a_known_agent(viewer_api, agent):
    assert APIClient().get(f"/api/v1/agents/{agent.id}/timeline").status_code == 401
    assert viewer_api.get(f"/api/v1/agents/{uuid.uuid4()}/timeline").status_code == 404
    empty = timeline(viewer_api, agent).json()
    assert empty == {
        "agent": str(agent.id),
        "since": None,
        "until": None,
        "limit": 200,
        "truncated": False,
        "items": [],
    }


def test_timeline_keeps_to_the_revocations_of_the_agents_life(operator_api, viewer_api, operator):
    lifted = kill(operator_api, {"all": True}, reason="before it existed")
    lift = operator_api.post(f"/api/v1/killswitch/{lifted['id']}/lift", {}, format="json")
    assert lift.status_code == 200
    kill(operator_api, {"all": True}, reason="still in force")
    newcomer = Agent.objects.create(name="newcomer", owner=operator)
    items = timeline(viewer_api, newcomer).json()["items"]
    assert [(i["type"], i["reason"], i["before_registration"]) for i in items] == [
        ("revocation", "still in force", True)
    ]
