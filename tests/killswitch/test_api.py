"""The kill-switch API: targets, reasons, lifting, conflicts, status and introspection."""

import json
import time

import pytest
import redis
from django.db import connection

from agent_passport.protocol import RevocationChannel
from killswitch.models import Revocation
from passports.models import Agent

pytestmark = pytest.mark.django_db(transaction=True)


def kill(api, target, reason="incident 42"):
    return api.post("/api/v1/killswitch", {"target": target, "reason": reason}, format="json")


def snapshot(settings, prefix) -> dict:
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    return client.hgetall(RevocationChannel(prefix).snapshot_key)


def test_agent_kill_is_recorded_pushed_and_reflected(
    operator_api, agent, issue, settings, revocation_prefix
):
    issued = issue()
    response = kill(operator_api, {"agent": str(agent.id)})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["epoch"] >= 1 and body["source"] == "api" and body["actor"] == "olivia-operator"
    assert body["target"] == {"agent": str(agent.id)}
    agent.refresh_from_db()
    assert agent.status == Agent.Status.KILLED

    stored = snapshot(settings, revocation_prefix)
    entry = json.loads(stored[f"r:{body['id']}"])
    assert entry["target"] == {"type": "agent", "value": str(agent.id)}
    assert int(stored["_epoch"]) == body["epoch"]
    assert Revocation.objects.get(pk=body["id"]).pushed_epoch == body["epoch"]

    introspected = operator_api.post(
        "/api/v1/passports/introspect", {"token": issued["token"]}, format="json"
    ).json()
    assert introspected["active"] is False and introspected["reason"] == "revoked"
    assert "incident 42" in introspected["detail"]

    status = operator_api.get(f"/api/v1/agents/{agent.id}/status").json()
    assert status["allowed"] is False
    assert any("incident 42" in reason for reason in status["reasons"])


def test_fleet_and_global_kills_reach_introspection(operator_api, agent, issue):
    token = issue()["token"]
    fleet = kill(operator_api, {"fleet": "gpu-a"})
    assert fleet.status_code == 201
    result = operator_api.post("/api/v1/passports/introspect", {"token": token}, format="json")
    assert result.json()["reason"] == "revoked"
    assert "fleet gpu-a" in result.json()["detail"]
    operator_api.post(f"/api/v1/killswitch/{fleet.json()['id']}/lift", {}, format="json")
    result = operator_api.post("/api/v1/passports/introspect", {"token": token}, format="json")
    assert result.json()["active"] is True

    everything = kill(operator_api, {"all": True}, reason="big red button")
    assert everything.status_code == 201
    result = operator_api.post("/api/v1/passports/introspect", {"token": token}, format="json")
    assert "all agents" in result.json()["detail"]


def test_lifting_an_agent_kill_reinstates_it_and_is_recorded(
    operator_api, agent, issue, settings, revocation_prefix
):
    token = issue()["token"]
    revocation = kill(operator_api, {"agent": str(agent.id)}).json()
    lifted = operator_api.post(
        f"/api/v1/killswitch/{revocation['id']}/lift", {"reason": "false alarm"}, format="json"
    )
    assert lifted.status_code == 200
    body = lifted.json()
    assert body["active"] is False and body["lift_epoch"] > revocation["epoch"]
    assert body["lifted_by"] == "olivia-operator" and body["lift_reason"] == "false alarm"
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE
    assert f"r:{revocation['id']}" not in snapshot(settings, revocation_prefix)
    result = operator_api.post("/api/v1/passports/introspect", {"token": token}, format="json")
    assert result.json()["active"] is True

    again = operator_api.post(f"/api/v1/killswitch/{revocation['id']}/lift", {}, format="json")
    assert again.status_code == 409
    assert "already lifted" in again.json()["errors"]["id"][0]


def test_passport_revocations_cannot_be_lifted(operator_api, issue):
    jti = issue()["jti"]
    revocation = kill(operator_api, {"passport": jti}).json()
    response = operator_api.post(f"/api/v1/killswitch/{revocation['id']}/lift", {}, format="json")
    assert response.status_code == 409


@pytest.mark.parametrize(
    "target",
    [
        {"agent": "00000000-0000-0000-0000-000000000000"},
        {"agent": "not-a-uuid"},
        {"passport": "00000000-0000-0000-0000-000000000000"},
        {"fleet": "no-such-fleet"},
        {"fleet": ""},
        {"all": False},
        {"planet": "earth"},
        {"agent": "x", "fleet": "y"},
        "everything",
        [],
    ],
)
def test_unknown_or_malformed_targets_are_400(operator_api, agent, target):
    response = kill(operator_api, target)
    assert response.status_code == 400, response.content
    assert "target" in response.json()["errors"]
    assert Revocation.objects.count() == 0


def test_reason_is_required(operator_api, agent):
    for body in (
        {"target": {"agent": str(agent.id)}},
        {"target": {"agent": str(agent.id)}, "reason": "  "},
    ):
        response = operator_api.post("/api/v1/killswitch", body, format="json")
        assert response.status_code == 400
        assert "reason" in response.json()["errors"]
    assert Revocation.objects.count() == 0


def test_killing_a_killed_agent_or_fleet_twice_is_409(operator_api, agent):
    assert kill(operator_api, {"agent": str(agent.id)}).status_code == 201
    again = kill(operator_api, {"agent": str(agent.id)})
    assert again.status_code == 409 and "already killed" in again.json()["errors"]["target"][0]
    assert kill(operator_api, {"fleet": "gpu-a"}).status_code == 201
    assert kill(operator_api, {"fleet": "gpu-a"}).status_code == 409
    assert Revocation.objects.count() == 2


def test_viewer_cannot_kill_or_lift(viewer_api, operator_api, agent):
    assert kill(viewer_api, {"agent": str(agent.id)}).status_code == 403
    revocation = kill(operator_api, {"agent": str(agent.id)}).json()
    assert (
        viewer_api.post(
            f"/api/v1/killswitch/{revocation['id']}/lift", {}, format="json"
        ).status_code
        == 403
    )
    assert viewer_api.get("/api/v1/killswitch").status_code == 200


def test_list_filters_active(operator_api, agent):
    first = kill(operator_api, {"agent": str(agent.id)}).json()
    kill(operator_api, {"all": True})
    operator_api.post(f"/api/v1/killswitch/{first['id']}/lift", {}, format="json")
    active = operator_api.get("/api/v1/killswitch?active=true").json()["results"]
    assert [r["target"] for r in active] == [{"all": True}]
    assert operator_api.get("/api/v1/killswitch?active=maybe").status_code == 400


def test_new_passport_for_killed_agent_is_refused_until_reinstated(operator_api, agent):
    revocation = kill(operator_api, {"agent": str(agent.id)}).json()
    body = {"agent": str(agent.id), "scope": ["gpu:use"], "jurisdiction": ["EU"]}
    assert operator_api.post("/api/v1/passports", body, format="json").status_code == 400
    operator_api.post(f"/api/v1/killswitch/{revocation['id']}/lift", {}, format="json")
    assert operator_api.post("/api/v1/passports", body, format="json").status_code == 201


@pytest.mark.parametrize("target_kind", ["fleet", "all"])
def test_no_passport_is_issued_dead_on_arrival_under_a_fleet_or_global_kill(
    operator_api, agent, target_kind
):
    target = {"fleet": {"fleet": agent.fleet}, "all": {"all": True}}[target_kind]
    revocation = kill(operator_api, target, reason="big red button").json()
    body = {"agent": str(agent.id), "scope": ["gpu:use"], "jurisdiction": ["EU"]}
    refused = operator_api.post("/api/v1/passports", body, format="json")
    assert refused.status_code == 400
    (message,) = refused.json()["errors"]["agent"]
    assert f"revocation #{revocation['id']}" in message and "big red button" in message
    operator_api.post(f"/api/v1/killswitch/{revocation['id']}/lift", {}, format="json")
    assert operator_api.post("/api/v1/passports", body, format="json").status_code == 201


def test_revocation_while_redis_is_down_is_committed_and_pushed_later(
    operator_api, agent, private_redis, revocation_prefix, settings
):
    from killswitch import tasks

    # Everything on the dead Redis, rate-limit counters included.
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": private_redis.url}}
    private_redis.stop()
    started = time.monotonic()
    response = kill(operator_api, {"agent": str(agent.id)})
    assert response.status_code == 201, response.content
    assert time.monotonic() - started < 2.0, "a kill must answer at once during an outage"
    revocation = Revocation.objects.get(pk=response.json()["id"])
    assert revocation.pushed_epoch == 0  # committed, not yet in Redis

    private_redis.start()
    tasks.reconcile_revocations()
    stored = redis.Redis.from_url(private_redis.url, decode_responses=True).hgetall(
        RevocationChannel(revocation_prefix).snapshot_key
    )
    assert json.loads(stored[f"r:{revocation.pk}"])["target"]["value"] == str(agent.id)
    revocation.refresh_from_db()
    assert revocation.pushed_epoch == revocation.epoch


def test_pushes_are_idempotent(operator_api, agent, settings, revocation_prefix):
    from killswitch import publisher

    kill(operator_api, {"agent": str(agent.id)})
    Revocation.objects.update(pushed_epoch=0)  # pretend the push was never recorded
    publisher.push_pending()
    stream = RevocationChannel(revocation_prefix).stream_key
    assert redis.Redis.from_url(settings.REDIS_URL).xlen(stream) == 1


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="the in-memory SQLite test database cannot be shared by threads; CI runs PostgreSQL",
)
def test_concurrent_revocations_get_unique_increasing_epochs(operator, settings, revocation_prefix):
    from concurrent.futures import ThreadPoolExecutor

    from killswitch import publisher, services

    publisher.reconcile()  # a running service has written the snapshot before any kill
    agents = [Agent.objects.create(name=f"a{i}", fleet="f", owner=operator) for i in range(24)]

    def revoke(agent):
        try:
            return services.revoke(
                target=services.Target("agent", str(agent.pk)), reason="r", actor=None, source="api"
            ).epoch
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        epochs = list(pool.map(revoke, agents))
    assert sorted(epochs) == list(range(1, 25))
    by_commit_order = list(Revocation.objects.order_by("pk").values_list("epoch", flat=True))
    assert by_commit_order == sorted(by_commit_order)
    client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    stream = client.xrange(RevocationChannel(revocation_prefix).stream_key)
    assert sorted(json.loads(fields["entry"])["epoch"] for _, fields in stream) == list(
        range(1, 25)
    )
