"""The console's pages and forms through Django's test client (the browser tests drive the rest)."""

import pytest
from django.test import Client

from killswitch.models import Revocation
from passports.models import Agent, Passport

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def signed_in(operator):
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


def test_pages_render_for_an_operator(signed_in, agent, issue):
    issue()
    for url in [
        "/",
        "/agents/",
        f"/agents/{agent.pk}/",
        "/passports/new",
        "/actions/",
        "/rules/",
        f"/kill/?agent={agent.pk}",
        "/kill/?all=1",
        "/kill/?fleet=gpu-a",
    ]:
        response = signed_in.get(url)
        assert response.status_code == 200, url
        assert b"<main" in response.content


def test_agent_page_says_how_many_action_events_its_sdk_lost(signed_in, agent):
    assert b"no events lost" in signed_in.get(f"/agents/{agent.pk}/").content
    Agent.objects.filter(pk=agent.pk).update(events_dropped=3)
    assert b"lost 3 action events" in signed_in.get(f"/agents/{agent.pk}/").content


def test_anonymous_is_sent_to_sign_in(db):
    response = Client().get("/agents/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_viewer_sees_no_kill_or_issue_button_and_forged_posts_get_403(viewer_client, agent):
    page = viewer_client.get(f"/agents/{agent.pk}/").content.decode()
    assert "Kill this agent" not in page and "Issue passport" not in page
    assert "stop ALL agents" not in viewer_client.get("/").content.decode()
    assert viewer_client.post("/kill/", {"agent": str(agent.pk), "reason": "x"}).status_code == 403
    assert viewer_client.post("/passports/new", {"agent": str(agent.pk)}).status_code == 403
    assert viewer_client.get("/keys/").status_code == 403
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE and not Revocation.objects.exists()


def test_csrf_is_enforced_on_console_forms(operator, agent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post("/kill/", {"agent": str(agent.pk), "reason": "no token"})
    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert not Revocation.objects.exists()


def test_issue_form_shows_the_bad_rule_next_to_the_field(signed_in, agent):
    response = signed_in.post(
        "/passports/new",
        {
            "agent": str(agent.pk),
            "scope": "fs:write:/workspace/**\nNET CONNECT",
            "jurisdiction": "EU",
        },
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="id_scope_error"' in page and "NET CONNECT" in page
    assert not Passport.objects.exists()


def test_issue_form_shows_the_token_once(signed_in, agent):
    response = signed_in.post(
        "/passports/new",
        {
            "agent": str(agent.pk),
            "scope": "fs:*:/workspace/**",
            "jurisdiction": "EU, US-CA",
            "ttl_seconds": "600",
        },
    )
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    passport = Passport.objects.get()
    assert passport.jurisdiction == ["EU", "US-CA"]
    assert b"Copy token" in response.content


def test_global_kill_needs_the_word_and_a_reason(signed_in, agent):
    response = signed_in.post("/kill/", {"all": "1", "reason": "", "confirm": "yes"})
    page = response.content.decode()
    assert response.status_code == 200
    assert "This field is required" in page  # the reason, next to its field
    assert "Type KILL to stop every agent" in page
    assert not Revocation.objects.exists()
    response = signed_in.post("/kill/", {"all": "1", "reason": "drill", "confirm": "KILL"})
    revocation = Revocation.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/revocations/{revocation.pk}/"
    assert revocation.source == "console" and revocation.target_type == "all"


def test_suspend_and_reinstate_from_the_agent_page(signed_in, agent):
    signed_in.post("/kill/", {"agent": str(agent.pk), "mode": "suspend", "reason": "investigating"})
    agent.refresh_from_db()
    assert agent.status == Agent.Status.SUSPENDED
    revocation = Revocation.objects.get()
    signed_in.post(f"/revocations/{revocation.pk}/lift", {"reason": "cleared"})
    agent.refresh_from_db()
    assert agent.status == Agent.Status.ACTIVE


def test_login_is_throttled_after_repeated_failures(operator):
    client = Client()
    for _ in range(5):
        client.post("/login/", {"username": operator.username, "password": "wrong"})
    response = client.post(
        "/login/", {"username": operator.username, "password": "unused-test-password"}
    )
    assert b"Too many failed sign-ins" in response.content
    assert "_auth_user_id" not in client.session


def test_security_headers(signed_in):
    response = signed_in.get("/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


def test_admin_rotates_keys_and_operator_cannot(admin_user, signed_in):
    from passports import signing
    from passports.models import SigningKey

    old = signing.active_signing_key().kid
    assert signed_in.post("/keys/").status_code == 403
    admin = Client()
    admin.force_login(admin_user)
    page = admin.get("/keys/").content.decode()
    assert old in page and "encrypted" not in page.lower()
    response = admin.post("/keys/", follow=True)
    assert response.status_code == 200
    new = SigningKey.objects.get(state="active").kid
    assert new != old and f"New active key {new}" in response.content.decode()


def test_operator_toggles_a_rule_into_dry_run(signed_in, admin_user):
    from killswitch.models import KillRule

    rule = KillRule.objects.create(
        name="miners", kind="deny_pattern", pattern="proc:exec:*miner*", created_by=admin_user
    )
    signed_in.post(f"/rules/{rule.pk}/toggle", {"field": "dry_run"})
    rule.refresh_from_db()
    assert rule.dry_run is True
    # Arming it again is an admin's decision, as in the API.
    assert signed_in.post(f"/rules/{rule.pk}/toggle", {"field": "dry_run"}).status_code == 403
    rule.refresh_from_db()
    assert rule.dry_run is True
    assert signed_in.post(f"/rules/{rule.pk}/toggle", {"field": "name"}).status_code == 404
