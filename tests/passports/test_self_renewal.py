"""Self-renewal (CONTRACTS C3): an agent renews its own passport with it, only when the operator
allowed it when issuing, and only while the passport and the agent are active."""

import time

import pytest
from django.test import Client

from killswitch import services as killswitch
from passports.models import Passport
from tests.actions.test_ingest import bearer

pytestmark = pytest.mark.django_db

URL = "/api/v1/passports/self/renew"


def renew(token: str, body: dict | None = None):
    return bearer(token).post(URL, body if body is not None else {}, format="json")


def test_issuing_records_the_permission_default_off(issue, viewer_api):
    default, allowed = issue(), issue(agent_may_renew=True)
    records = {
        jti: viewer_api.get(f"/api/v1/passports/{jti}").json()
        for jti in (default["jti"], allowed["jti"])
    }
    assert records[default["jti"]]["agent_may_renew"] is False
    assert records[allowed["jti"]]["agent_may_renew"] is True
    assert records[allowed["jti"]]["renewed_by_agent"] is False


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_permission_must_be_a_json_boolean(operator_api, agent, value):
    body = {"agent": str(agent.pk), "scope": ["fs:*:/w/**"], "jurisdiction": ["EU"]}
    response = operator_api.post(
        "/api/v1/passports", {**body, "agent_may_renew": value}, format="json"
    )
    assert response.status_code == 400 and "agent_may_renew" in response.json()["errors"]


def test_agent_renews_itself_when_allowed(issue, viewer_api, agent):
    old = issue(agent_may_renew=True, ttl_seconds=600)
    response = renew(old["token"])
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"jti", "token", "claims", "expires_at"}  # as the operator's renew
    new = Passport.objects.get(jti=body["jti"])
    previous = Passport.objects.get(jti=old["jti"])
    assert (new.renewed_from_id, new.renewed_by_agent, new.agent_may_renew) == (
        previous.jti,
        True,
        True,
    )
    assert (new.scope, new.jurisdiction) == (previous.scope, previous.jurisdiction)
    assert new.expires_at - new.not_before == previous.expires_at - previous.not_before
    assert new.issued_by_id == previous.issued_by_id  # the operator who allowed it
    assert previous.status == Passport.Status.SUPERSEDED
    record = viewer_api.get(f"/api/v1/passports/{new.jti}").json()
    assert (record["renewed_by_agent"], record["agent_may_renew"]) == (True, True)
    timeline = viewer_api.get(f"/api/v1/agents/{agent.pk}/timeline").json()["items"]
    reasons = [item["reason"] for item in timeline if item["type"] == "revocation"]
    assert reasons == [f"superseded by renewal to passport {new.jti} (renewed by the agent itself)"]
    # The successor renews again; the superseded passport no longer can.
    assert renew(body["token"]).status_code == 201
    refused = renew(old["token"])
    assert refused.status_code == 409 and refused.json()["reason"] == "not_active"


def test_grace_period_is_bounded_and_the_agent_chooses_nothing_else(issue, settings):
    token = issue(agent_may_renew=True)["token"]
    too_long = renew(token, {"grace_seconds": settings.PASSPORT_RENEW_MAX_GRACE_SECONDS + 1})
    assert too_long.status_code == 400 and "grace_seconds" in too_long.json()["errors"]
    wider = renew(token, {"ttl_seconds": 86400, "scope": ["*:*"]})
    assert wider.status_code == 400
    assert set(wider.json()["errors"]) == {"ttl_seconds", "scope"}


def test_not_allowed_is_403(issue):
    response = renew(issue()["token"])
    assert response.status_code == 403
    assert response.json()["reason"] == "renewal_not_allowed"
    assert Passport.objects.count() == 1


def test_revoked_passport_is_409_not_active(issue, operator_api):
    passport = issue(agent_may_renew=True)
    revoked = operator_api.post(
        f"/api/v1/passports/{passport['jti']}/revoke", {"reason": "leak"}, format="json"
    )
    assert revoked.status_code == 200
    response = renew(passport["token"])
    assert response.status_code == 409 and response.json()["reason"] == "not_active"
    assert "revoked" in response.json()["detail"]


def test_expired_passport_is_409_not_active(issue):
    passport = issue(agent_may_renew=True, ttl_seconds=1)
    time.sleep(1.2)
    response = renew(passport["token"])  # still authenticates (the reporting leeway)
    assert response.status_code == 409 and response.json()["reason"] == "not_active"
    assert "expired" in response.json()["detail"]


@pytest.mark.parametrize("target", ["agent", "fleet", "all"])
def test_stopped_agent_is_409_not_active(issue, agent, target):
    passport = issue(agent_may_renew=True)
    value = {"agent": str(agent.pk), "fleet": agent.fleet, "all": "*"}[target]
    killswitch.revoke(
        target=killswitch.Target(target, value), reason="drill", actor=None, source="api"
    )
    response = renew(passport["token"])
    assert response.status_code == 409 and response.json()["reason"] == "not_active"
    assert Passport.objects.count() == 1


def test_operators_and_strangers_cannot_use_it(operator_api, issue):
    issue(agent_may_renew=True)
    assert operator_api.post(URL, {}, format="json").status_code == 401
    assert Client().post(URL, {}, content_type="application/json").status_code in (401, 403)
    assert bearer("not.a.token").post(URL, {}, format="json").status_code == 401


def test_self_renewal_is_throttled_per_agent(issue, settings):
    settings.SELF_RENEW_RATE_LIMIT = "2/minute"
    token = issue(agent_may_renew=True)["token"]
    for _ in range(2):
        response = renew(token)
        assert response.status_code == 201
        token = response.json()["token"]
    assert renew(token).status_code == 429


def test_operator_renewal_keeps_the_permission(issue, operator_api):
    passport = issue(agent_may_renew=True)
    response = operator_api.post(f"/api/v1/passports/{passport['jti']}/renew", {}, format="json")
    assert response.status_code == 201
    renewed = Passport.objects.get(jti=response.json()["jti"])
    assert (renewed.agent_may_renew, renewed.renewed_by_agent) == (True, False)


def test_console_issues_with_the_permission_and_shows_it(operator, agent, issue):
    console = Client()
    console.force_login(operator)
    form = {
        "agent": str(agent.pk),
        "scope": "fs:*:/workspace/**",
        "jurisdiction": "EU",
        "agent_may_renew": "on",
    }
    issue_page = console.get("/passports/new").content.decode()
    assert "Allow self-renewal" in issue_page
    assert "the agent may renew this passport itself" in issue_page
    assert console.post("/passports/new", form).status_code == 200
    assert Passport.objects.get().agent_may_renew
    page = console.get(f"/agents/{agent.pk}/").content.decode()
    assert "agent may renew" in page and "renewed by the agent itself" not in page
    assert renew(issue(agent_may_renew=True)["token"]).status_code == 201
    page = console.get(f"/agents/{agent.pk}/").content.decode()
    assert page.count("renewed by the agent itself") >= 2  # the passport and the timeline
