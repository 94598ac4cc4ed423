"""External signals: who may post them, how they are validated and matched to agents."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from passports.models import Agent
from passports.services import issue_passport
from signals.models import Signal

pytestmark = pytest.mark.django_db

URL = "/api/v1/signals"


def report(api, **overrides):
    body = {"occurred_at": timezone.now().isoformat(), "category": "cryptomining"}
    body.update(overrides)
    return api.post(URL, body, format="json")


def heartbeat_from(agent, operator, *, host: str, remote_addr: str) -> None:
    """The agent reports a batch through the API, as the SDK does, from ``remote_addr``."""
    issued = issue_passport(
        agent=agent, scope=["fs:*:/x/**"], jurisdiction=["EU"], ttl_seconds=None, issued_by=operator
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    response = client.post(
        "/api/v1/actions",
        {"events": [], "heartbeat": {"host": host, "pid": 42}},
        format="json",
        REMOTE_ADDR=remote_addr,
    )
    assert response.status_code == 200, response.content


def test_signal_is_matched_to_the_agent_by_host(operator_api, operator, agent):
    other = Agent.objects.create(name="web", owner=operator, host="web-1.lab.example")
    response = report(
        operator_api,
        source_host="WEB-1.lab.example",
        destination="pool.minexmr.com:4444",
        raw={"alert": {"signature": "ET POLICY crypto mining"}},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["matched_agent"] == str(other.id) and body["other_candidates"] == []
    assert body["category"] == "cryptomining" and body["reported_by"] == "olivia-operator"
    assert body["raw"] == {"alert": {"signature": "ET POLICY crypto mining"}}
    assert Signal.objects.get(pk=body["id"]).agent == other


def test_signal_ip_matches_the_sdk_heartbeat_address(operator_api, operator):
    roaming = Agent.objects.create(name="roaming", owner=operator)  # no host registered
    heartbeat_from(roaming, operator, host="trainer-7", remote_addr="192.0.2.10")
    roaming.refresh_from_db()
    assert roaming.last_seen_address == "trainer-7 (192.0.2.10)"
    near_miss = Agent.objects.create(name="near", owner=operator)
    heartbeat_from(near_miss, operator, host="trainer-70", remote_addr="192.0.2.101")

    by_ip = report(operator_api, source_ip="192.0.2.10").json()
    assert by_ip["matched_agent"] == str(roaming.id)
    assert by_ip["other_candidates"] == []  # 192.0.2.101 contains the text, not the token
    by_host = report(operator_api, source_host="trainer-7", category="reverse-tunnel").json()
    assert by_host["matched_agent"] == str(roaming.id)


def test_signal_registered_host_ip_matches(operator_api, agent):
    body = report(operator_api, source_ip="10.0.0.5").json()
    assert body["matched_agent"] == str(agent.id)
    assert body["source_ip"] == "10.0.0.5"


def test_several_candidates_prefer_active_then_registered_host_then_recent(operator_api, operator):
    now = timezone.now()
    killed = Agent.objects.create(
        name="killed", owner=operator, host="shared-box", status=Agent.Status.KILLED
    )
    killed.last_seen_at = now  # seen most recently, but killed
    killed.save()
    stale = Agent.objects.create(name="stale", owner=operator, host="shared-box")
    stale.last_seen_at = now - timedelta(hours=2)
    stale.save()
    fresh = Agent.objects.create(name="fresh", owner=operator)
    fresh.last_seen_at, fresh.last_seen_address = now - timedelta(minutes=1), "shared-box (::1)"
    fresh.save()
    body = report(operator_api, source_host="shared-box").json()
    assert body["matched_agent"] == str(stale.id)
    assert body["other_candidates"] == [str(fresh.id), str(killed.id)]


def test_heartbeat_claiming_another_agents_host_does_not_take_its_signals(
    operator_api, operator, agent
):
    """``agent`` is registered on 10.0.0.5; an impostor's SDK says it runs there too."""
    impostor = Agent.objects.create(name="impostor", owner=operator)
    heartbeat_from(impostor, operator, host="10.0.0.5", remote_addr="192.0.2.66")
    body = report(operator_api, source_ip="10.0.0.5").json()
    assert body["matched_agent"] == str(agent.id)
    assert body["other_candidates"] == [str(impostor.id)]


def test_signal_matching_no_agent_is_still_recorded(operator_api, agent):
    response = report(operator_api, source_host="unknown.example", source_ip="198.51.100.7")
    assert response.status_code == 201
    assert response.json()["matched_agent"] is None
    assert Signal.objects.get().agent is None


def test_unknown_category_is_400_listing_the_valid_ones(operator_api, agent):
    response = report(operator_api, source_host="x", category="bitcoin")
    assert response.status_code == 400
    message = response.json()["errors"]["category"][0]
    assert "bitcoin" in message and "cryptomining" in message and "reverse-tunnel" in message
    assert Signal.objects.count() == 0


def test_future_timestamp_is_400_but_small_skew_is_accepted(operator_api, agent):
    future = (timezone.now() + timedelta(minutes=6)).isoformat()
    response = report(operator_api, source_host="x", occurred_at=future)
    assert response.status_code == 400
    assert "future" in response.json()["errors"]["occurred_at"][0]
    skewed = (timezone.now() + timedelta(minutes=4)).isoformat()
    assert report(operator_api, source_host="x", occurred_at=skewed).status_code == 201


def test_oversize_raw_is_400(operator_api, agent):
    response = report(operator_api, source_host="x", raw={"payload": "A" * 17_000})
    assert response.status_code == 400
    assert "bytes" in response.json()["errors"]["raw"][0]
    assert report(operator_api, source_host="x", raw={"payload": "A" * 15_000}).status_code == 201


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({}, "source_host"),
        ({"source_host": "", "source_ip": None}, "source_host"),
        ({"source_ip": "10.0.0.300"}, "source_ip"),
        ({"source_ip": 167772165}, "source_ip"),
        ({"source_host": "a host"}, "source_host"),
        ({"source_host": "x", "occurred_at": "yesterday"}, "occurred_at"),
        ({"source_host": "x", "occurred_at": 1700000000}, "occurred_at"),
        ({"source_host": "x", "category": None}, "category"),
        ({"source_host": "x", "agent": str(uuid.uuid4())}, "agent"),
        ({"source_host": 5}, "source_host"),
    ],
)
def test_bad_reports_are_400_naming_the_field(operator_api, agent, overrides, field):
    response = report(operator_api, **overrides)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


def test_viewer_cannot_post_but_can_list_and_filter(operator_api, viewer_api, agent):
    assert report(viewer_api, source_host="10.0.0.5").status_code == 403
    assert APIClient().post(URL, {}, format="json").status_code == 401
    report(operator_api, source_ip="10.0.0.5")
    report(operator_api, source_ip="10.0.0.5", category="port-scan")
    report(operator_api, source_host="elsewhere")

    listed = viewer_api.get(URL).json()["results"]
    assert len(listed) == 3
    mine = viewer_api.get(URL, {"agent": str(agent.id)}).json()["results"]
    assert [s["category"] for s in mine] == ["port-scan", "cryptomining"]
    scans = viewer_api.get(URL, {"category": "port-scan"}).json()["results"]
    assert len(scans) == 1 and scans[0]["matched_agent"] == str(agent.id)
    assert viewer_api.get(f"{URL}/{scans[0]['id']}").json()["id"] == scans[0]["id"]
    assert "agent" in viewer_api.get(URL, {"agent": "nope"}).json()["errors"]
    assert "category" in viewer_api.get(URL, {"category": "nope"}).json()["errors"]
