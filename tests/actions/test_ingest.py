"""Action reporting API: agents post their own events with their passport; viewers read the log."""

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection, connections
from rest_framework.test import APIClient

from actions.models import ActionEvent
from agent_passport.protocol import TOKEN_TYPE
from passports import signing
from passports.auth import create_api_token
from passports.models import Agent
from passports.services import issue_passport

pytestmark = pytest.mark.django_db

URL = "/api/v1/actions"


def passport_for(agent, issued_by):
    return issue_passport(
        agent=agent,
        scope=["fs:*:/workspace/**"],
        jurisdiction=["EU"],
        ttl_seconds=None,
        issued_by=issued_by,
    )


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def event(**overrides) -> dict:
    body = {
        "id": str(uuid.uuid4()),
        "action": "fs:write",
        "resource": "/workspace/model.pt",
        "jurisdiction": "DE",
        "decision": "allow",
        "reason": "allowed by fs:*:/workspace/**",
        "at": time.time(),
    }
    body.update(overrides)
    return body


def sign_with_active_key(claims: dict) -> str:
    key = signing.active_signing_key()
    private_key = signing._unwrap(key.kid, key.encrypted_private_key)
    return jwt.encode(
        claims, private_key, algorithm="EdDSA", headers={"kid": key.kid, "typ": TOKEN_TYPE}
    )


@pytest.fixture
def issued(agent, operator):
    return passport_for(agent, operator)


@pytest.fixture
def agent_api(issued) -> APIClient:
    return bearer(issued.token)


def counts(body: dict) -> dict:
    """The answer without its receipt (tests/actions/test_receipts.py checks those)."""
    return {key: body[key] for key in ("accepted", "duplicates", "errors")}


def test_agent_reports_its_own_events(agent_api, agent, issued):
    events = [event(), event(decision="deny", resource=None, jurisdiction=None, reason="")]
    response = agent_api.post(URL, {"events": events}, format="json")
    assert response.status_code == 200, response.content
    assert counts(response.json()) == {"accepted": 2, "duplicates": 0, "errors": {}}
    stored = {str(e.id): e for e in ActionEvent.objects.all()}
    assert set(stored) == {events[0]["id"], events[1]["id"]}
    first, second = stored[events[0]["id"]], stored[events[1]["id"]]
    assert first.agent_id == agent.id and first.passport_id == issued.passport.jti
    assert first.fleet == "gpu-a" and first.decision == "allow" and first.jurisdiction == "DE"
    assert abs(first.occurred_at.timestamp() - events[0]["at"]) < 1e-3
    assert (second.decision, second.resource, second.jurisdiction) == ("deny", "", "")


def test_operator_api_token_cannot_post_actions(operator_api, operator):
    response = operator_api.post(URL, {"events": [event()]}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    api_key_as_bearer = bearer(create_api_token(user=operator))
    response = api_key_as_bearer.post(URL, {"events": [event()]}, format="json")
    assert response.status_code == 401
    assert ActionEvent.objects.count() == 0


def test_anonymous_cannot_post_or_read(db):
    assert APIClient().post(URL, {"events": [event()]}, format="json").status_code == 401
    assert APIClient().get(URL).status_code == 401


def _forged_tokens(claims: dict) -> dict[str, str]:
    now = int(time.time())
    stranger = Ed25519PrivateKey.generate()
    kid = signing.active_signing_key().kid
    return {
        "bad_signature": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": kid, "typ": TOKEN_TYPE}
        ),
        "unknown_key": jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": "not-ours", "typ": TOKEN_TYPE}
        ),
        "wrong_audience": sign_with_active_key({**claims, "aud": "someone-else"}),
        "wrong_issuer": sign_with_active_key({**claims, "iss": "https://evil.example"}),
        "expired": sign_with_active_key(
            {**claims, "iat": now - 9000, "nbf": now - 9000, "exp": now - 3700}
        ),
        "unknown_passport": sign_with_active_key({**claims, "jti": str(uuid.uuid4())}),
        "malformed": "not-a-token",
    }


def test_forged_or_unusable_tokens_are_401_with_the_reason(issued):
    for reason, token in _forged_tokens(issued.claims).items():
        response = bearer(token).post(URL, {"events": [event()]}, format="json")
        assert response.status_code == 401, reason
        assert response.json()["reason"] == reason
        assert response.json()["detail"]
    assert ActionEvent.objects.count() == 0


def test_token_whose_subject_is_not_the_passports_agent_is_rejected(issued, operator):
    other = Agent.objects.create(name="other", fleet="cpu", owner=operator)
    forged = sign_with_active_key({**issued.claims, "sub": str(other.id)})
    response = bearer(forged).post(URL, {"events": [event()]}, format="json")
    assert response.status_code == 401 and response.json()["reason"] == "malformed"


def test_recently_expired_passport_can_still_deliver(issued):
    now = int(time.time())
    late = sign_with_active_key(
        {**issued.claims, "iat": now - 4000, "nbf": now - 4000, "exp": now - 600}
    )
    response = bearer(late).post(URL, {"events": [event()]}, format="json")
    assert response.status_code == 200 and response.json()["accepted"] == 1


def test_events_cannot_claim_another_agent(agent_api, agent, operator):
    other = Agent.objects.create(name="other", fleet="cpu", owner=operator)
    claims = [
        event(agent=str(other.id)),
        event(fleet="cpu"),
        event(passport=str(uuid.uuid4())),
    ]
    honest = event()
    response = agent_api.post(URL, {"events": [*claims, honest]}, format="json")
    body = response.json()
    assert response.status_code == 200
    assert body["accepted"] == 1
    assert body["errors"] == {
        "0": {"agent": ["unknown field"]},
        "1": {"fleet": ["unknown field"]},
        "2": {"passport": ["unknown field"]},
    }
    stored = ActionEvent.objects.get()
    assert str(stored.id) == honest["id"]
    assert (stored.agent_id, stored.fleet) == (agent.id, "gpu-a")
    assert not ActionEvent.objects.filter(agent=other).exists()


def test_replayed_batch_is_counted_as_duplicates_and_stored_once(agent_api):
    batch = {"events": [event(), event(), event()]}
    first = agent_api.post(URL, batch, format="json").json()
    again = agent_api.post(URL, batch, format="json").json()
    assert counts(again) == {"accepted": 0, "duplicates": 3, "errors": {}}
    # The receipt of a replay names the leaves the events got the first time.
    assert again["receipt"]["promise"]["leaves"] == first["receipt"]["promise"]["leaves"]
    partly = agent_api.post(URL, {"events": [batch["events"][0], event()]}, format="json")
    assert counts(partly.json()) == {"accepted": 1, "duplicates": 1, "errors": {}}
    assert ActionEvent.objects.count() == 4


def test_repeated_id_within_a_batch_is_stored_once(agent_api):
    first = event()
    response = agent_api.post(URL, {"events": [first, {**first, "action": "x"}]}, format="json")
    assert counts(response.json()) == {"accepted": 1, "duplicates": 1, "errors": {}}
    assert ActionEvent.objects.get().action == "fs:write"


def test_id_used_by_another_agent_is_not_overwritten(agent_api, operator):
    other = Agent.objects.create(name="other", fleet="cpu", owner=operator)
    theirs = event()
    bearer(passport_for(other, operator).token).post(URL, {"events": [theirs]}, format="json")
    response = agent_api.post(URL, {"events": [{**theirs, "action": "gpu:use"}]}, format="json")
    assert response.json()["duplicates"] == 1
    stored = ActionEvent.objects.get()
    assert (stored.agent_id, stored.action) == (other.id, "fs:write")


def test_mixed_batch_keeps_the_valid_events(agent_api):
    good = [event(), event()]
    bad = [
        event(id="not-a-uuid"),
        "just a string",
        None,
        event(decision="maybe"),
        {k: v for k, v in event().items() if k != "action"},
        event(at="yesterday"),
        event(action="x" * 201),
        event(at=True),
    ]
    response = agent_api.post(URL, {"events": [good[0], *bad, good[1]]}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    errors = body["errors"]
    assert set(errors) == {"1", "2", "3", "4", "5", "6", "7", "8"}
    assert "id" in errors["1"] and "event" in errors["2"] and "event" in errors["3"]
    assert "decision" in errors["4"] and "action" in errors["5"] and "at" in errors["6"]
    assert "action" in errors["7"] and "at" in errors["8"]
    assert {str(e.id) for e in ActionEvent.objects.all()} == {g["id"] for g in good}


def test_more_than_1000_events_is_a_400_naming_events(agent_api):
    response = agent_api.post(URL, {"events": [event() for _ in range(1001)]}, format="json")
    assert response.status_code == 400
    assert "events" in response.json()["errors"]
    assert ActionEvent.objects.count() == 0
    exactly = agent_api.post(URL, {"events": [event() for _ in range(1000)]}, format="json")
    assert exactly.status_code == 200 and exactly.json()["accepted"] == 1000


def test_body_over_djangos_upload_limit_is_a_413(agent_api, settings):
    body = {"events": [event(reason="x" * 500) for _ in range(10)]}
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4000
    response = agent_api.post(URL, body, format="json")
    assert response.status_code == 413
    assert "body" in response.json()["errors"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([event()], "body"),
        ({}, "events"),
        ({"events": {"0": event()}}, "events"),
        ({"events": "many"}, "events"),
        ({"events": [], "colour": "red"}, "colour"),
        ({"events": [], "heartbeat": {"epoch": "seven"}}, "heartbeat"),
        ({"events": [], "heartbeat": "alive"}, "heartbeat"),
    ],
)
def test_malformed_envelope_is_a_400(agent_api, body, field):
    response = agent_api.post(URL, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


def test_event_from_a_clock_ahead_is_stored_and_flagged(agent_api, viewer_api):
    now = time.time()
    events = [event(at=now + 360, action="a:ahead"), event(at=now + 120), event(at=-5)]
    body = agent_api.post(URL, {"events": events}, format="json").json()
    assert body["accepted"] == 2
    assert body["errors"] == {"2": {"at": ["is out of range"]}}
    ahead = ActionEvent.objects.get(action="a:ahead")
    assert ahead.occurred_at.timestamp() == pytest.approx(now + 360), "the agent's time is kept"
    assert ahead.received_at.timestamp() == pytest.approx(time.time(), abs=5)
    listed = viewer_api.get(URL).json()["results"]
    assert {e["action"]: e["clock_skewed"] for e in listed} == {"a:ahead": True, "fs:write": False}
    assert viewer_api.get("/api/v1/audit").json()["ok"]


def test_heartbeat_adds_the_events_the_sdk_lost(agent_api, agent, viewer_api):
    agent_api.post(URL, {"events": [], "heartbeat": {"dropped": 3}}, format="json")
    agent_api.post(
        URL, {"events": [event()], "heartbeat": {"epoch": 1, "dropped": 2}}, format="json"
    )
    agent_api.post(URL, {"events": [], "heartbeat": {"epoch": 1}}, format="json")
    agent.refresh_from_db()
    assert agent.events_dropped == 5
    assert viewer_api.get(f"/api/v1/agents/{agent.id}").json()["events_dropped"] == 5
    response = agent_api.post(URL, {"events": [], "heartbeat": {"dropped": -1}}, format="json")
    assert response.status_code == 400 and "heartbeat" in response.json()["errors"]


def test_heartbeat_updates_the_agent(agent_api, agent):
    heartbeat = {"epoch": 7, "host": "trainer-1", "pid": 4242}
    response = agent_api.post(
        URL, {"events": [], "heartbeat": heartbeat}, format="json", REMOTE_ADDR="10.1.2.3"
    )
    assert counts(response.json()) == {"accepted": 0, "duplicates": 0, "errors": {}}
    agent.refresh_from_db()
    assert agent.last_seen_at is not None
    assert agent.last_seen_epoch == 7
    assert agent.last_seen_address == "trainer-1 (10.1.2.3)"
    first_seen = agent.last_seen_at

    agent_api.post(URL, {"events": [], "heartbeat": {"epoch": 5}}, format="json")
    agent.refresh_from_db()
    assert agent.last_seen_epoch == 7, "an older epoch never lowers the last seen one"
    assert agent.last_seen_address == "127.0.0.1" and agent.last_seen_at >= first_seen

    body = {"events": [event()], "heartbeat": {"epoch": 9, "host": "h"}}
    agent_api.post(URL, body, format="json")
    agent.refresh_from_db()
    assert (agent.last_seen_epoch, agent.last_seen_address) == (9, "h (127.0.0.1)")


def test_batch_without_heartbeat_still_marks_the_agent_seen(agent_api, agent):
    agent_api.post(URL, {"events": [event()]}, format="json")
    agent.refresh_from_db()
    assert agent.last_seen_at is not None and agent.last_seen_epoch is None


def test_revoked_passport_and_killed_agent_can_still_report(agent_api, issued, operator_api, agent):
    jti = issued.passport.jti
    revoked = operator_api.post(
        f"/api/v1/passports/{jti}/revoke", {"reason": "compromised"}, format="json"
    )
    assert revoked.status_code == 200
    Agent.objects.filter(pk=agent.pk).update(status=Agent.Status.KILLED)
    response = agent_api.post(URL, {"events": [event(decision="deny")]}, format="json")
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert ActionEvent.objects.get().passport_id == issued.passport.jti


def test_viewer_lists_actions_newest_first_with_filters(agent_api, viewer_api, agent, operator):
    other = Agent.objects.create(name="other", fleet="cpu", owner=operator)
    first, second = event(decision="deny"), event(action="tool:python")
    agent_api.post(URL, {"events": [first]}, format="json")
    agent_api.post(URL, {"events": [second]}, format="json")
    bearer(passport_for(other, operator).token).post(URL, {"events": [event()]}, format="json")

    listed = viewer_api.get(f"{URL}?agent={agent.id}").json()["results"]
    assert [row["id"] for row in listed] == [second["id"], first["id"]]
    assert listed[0]["agent"] == str(agent.id) and listed[0]["fleet"] == "gpu-a"
    assert [r["id"] for r in viewer_api.get(f"{URL}?decision=deny").json()["results"]] == [
        first["id"]
    ]
    assert len(viewer_api.get(f"{URL}?fleet=cpu").json()["results"]) == 1
    assert len(viewer_api.get(f"{URL}?action=tool:python").json()["results"]) == 1
    assert viewer_api.get(f"{URL}?decision=maybe").status_code == 400
    assert "agent" in viewer_api.get(f"{URL}?agent=nope").json()["errors"]


def test_agents_cannot_read_the_log_and_viewers_cannot_post(agent_api, viewer_api):
    assert agent_api.get(URL).status_code == 401
    assert viewer_api.post(URL, {"events": []}, format="json").status_code == 401


def test_schema_describes_the_actions_endpoint(viewer_api):
    schema = viewer_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/actions"])
    assert "passportBearer" in schema["components"]["securitySchemes"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite serialises all writers; nothing to race"
)
def test_concurrent_replays_are_counted_once(issued):
    from actions.api.serializers import ActionBatchSerializer
    from actions.services import ingest_actions

    batch = ActionBatchSerializer(data={"events": [event() for _ in range(300)]})
    assert batch.is_valid(), batch.errors
    events = batch.validated_data["events"]
    start = threading.Barrier(4)

    def deliver() -> int:
        try:
            start.wait()
            return ingest_actions(
                passport=issued.passport, events=events, heartbeat=None, remote_addr="10.0.0.5"
            ).accepted
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        accepted = list(pool.map(lambda _: deliver(), range(4)))
    assert sum(accepted) == 300 and ActionEvent.objects.count() == 300


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite serialises all writers; nothing to race"
)
def test_an_id_stored_concurrently_is_a_409_that_says_retry(agent, operator):
    # Two agents posting the same id at once (only a bug or a forger does): the loser's insert
    # fails on the primary key; its answer tells the SDK to send the batch again.
    other = Agent.objects.create(name="other", fleet="cpu", owner=operator)
    clients = [bearer(passport_for(a, operator).token) for a in (agent, other)]
    shared: list[dict] = []
    start = threading.Barrier(2)

    def deliver(client):
        try:
            start.wait()
            return client.post(URL, {"events": shared}, format="json")
        finally:
            connections.close_all()

    for _ in range(20):  # until the two inserts overlap (usually the first time)
        shared = [event() for _ in range(200)]
        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(deliver, clients))
        if conflicts := [r for r in responses if r.status_code == 409]:
            break
    assert conflicts, "the race never happened"
    assert conflicts[0]["Retry-After"] == "0"
    assert conflicts[0].json()["errors"] == {
        "events": ["an event id was stored concurrently; retry"]
    }
