"""The console's pages and forms through Django's test client (the browser tests drive the rest)."""

import re
import time
from datetime import UTC, datetime

import pytest
from django.test import Client
from django.utils import timezone

from killswitch import services as killswitch
from killswitch.models import Revocation
from passports.models import Agent, Passport
from tests.signals.test_timeline import event, report

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


# --- issue 8, item 19: the console tells the truth after a kill ----------------------------------


def kill(operator, target: dict, reason: str = "drill", **options) -> Revocation:
    return killswitch.revoke(
        target=killswitch.parse_target(target),
        reason=reason,
        actor=operator,
        source="console",
        **options,
    )


def figure(page: str, field: str) -> int:
    match = re.search(rf'data-field="{re.escape(field)}">(\d+)<', page)
    assert match, f"no figure {field}"
    return int(match.group(1))


def test_dashboard_counts_no_agent_or_passport_as_active_under_a_global_kill(
    signed_in, operator, agent, issue
):
    other = Agent.objects.create(name="scraper-7", fleet="web", owner=operator)
    issue()
    issue(agent=str(other.pk))
    page = signed_in.get("/").content.decode()
    assert (figure(page, "agents.active"), figure(page, "passports_active")) == (2, 2)

    kill(operator, {"all": True}, reason="credential leak")
    page = signed_in.get("/").content.decode()
    assert (figure(page, "agents.active"), figure(page, "passports_active")) == (0, 0)
    assert figure(page, "agents.stopped") == 2
    live = signed_in.get("/console/live.json").json()["stats"]
    assert live["agents"]["active"] == 0 and live["passports_active"] == 0
    listed = signed_in.get("/agents/").content.decode()
    assert listed.count('title="A fleet or global kill stops it">stopped</span>') == 2
    page = signed_in.get(f"/agents/{agent.pk}/").content.decode()
    assert 'title="A fleet or global kill stops it">stopped</span></h1>' in page


def test_dashboard_offers_no_second_global_kill_while_one_is_in_force(signed_in, operator, agent):
    page = signed_in.get("/").content.decode()
    assert "/kill/?all=1" in page
    revocation = kill(operator, {"all": True}, reason="credential leak")
    page = signed_in.get("/").content.decode()
    assert "/kill/?all=1" not in page
    assert f'href="/revocations/{revocation.pk}/"' in page


def test_killed_and_suspended_agents_passports_are_not_active(signed_in, operator, agent, issue):
    other = Agent.objects.create(name="scraper-7", fleet="web", owner=operator)
    issue()
    issue(agent=str(other.pk))
    kill(operator, {"agent": str(agent.pk)})
    kill(operator, {"agent": str(other.pk)}, suspend=True)
    page = signed_in.get("/").content.decode()
    assert figure(page, "agents.active") == 0 and figure(page, "passports_active") == 0
    assert figure(page, "agents.killed") == 1 and figure(page, "agents.suspended") == 1


def test_a_fleet_kill_stops_only_that_fleet_in_the_figures(signed_in, operator, agent, issue):
    other = Agent.objects.create(name="scraper-7", fleet="web", owner=operator)
    issue()
    issue(agent=str(other.pk))
    kill(operator, {"fleet": "gpu-a"})
    page = signed_in.get("/").content.decode()
    assert figure(page, "agents.active") == 1 and figure(page, "passports_active") == 1
    assert figure(page, "agents.stopped") == 1


CONSOLE_PAGES = ["/", "/agents/", "/actions/", "/rules/", "/passports/new"]


def test_every_console_page_shows_a_banner_while_a_global_or_fleet_kill_is_active(
    signed_in, operator, agent
):
    for url in CONSOLE_PAGES:
        assert 'id="kill-banner"' not in signed_in.get(url).content.decode(), url
    fleet = kill(operator, {"fleet": "gpu-a"}, reason="fleet incident")
    everything = kill(operator, {"all": True}, reason="credential leak")
    for url in [*CONSOLE_PAGES, f"/agents/{agent.pk}/", f"/revocations/{fleet.pk}/"]:
        page = signed_in.get(url).content.decode()
        banner = page[page.index('id="kill-banner"') : page.index("</aside>")]
        assert "All agents are stopped" in banner and "credential leak" in banner, url
        assert f'href="/revocations/{everything.pk}/"' in banner
        assert "Fleet gpu-a is stopped" in banner and f"/revocations/{fleet.pk}/" in banner
    killswitch.lift(revocation=everything, actor=operator)
    page = signed_in.get("/agents/").content.decode()
    assert "All agents are stopped" not in page and "Fleet gpu-a is stopped" in page


TIME = re.compile(
    r'<time datetime="([^"]+)" title="[^"]+">(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)</time>'
)


def test_times_have_one_format_on_every_page(signed_in, operator, agent, issue):
    passport = issue()
    Agent.objects.filter(pk=agent.pk).update(last_seen_at=timezone.now())
    revocation = kill(operator, {"agent": str(agent.pk)})
    pages = {
        "/agents/": 1,  # last seen
        f"/agents/{agent.pk}/": 3,  # last heartbeat, passport expiry, the kill in the timeline
        f"/revocations/{revocation.pk}/": 1,  # created
        "/": 1,  # the revocation
    }
    for url, at_least in pages.items():
        page = signed_in.get(url).content.decode()
        times = TIME.findall(page)
        assert len(times) >= at_least, (url, times)
        assert not re.search(r"\b[ap]\.m\.|\d\d:\d\d:\d\d\.\d{3}\b|\+00:00<", page), url
    expiry = datetime.fromtimestamp(passport["claims"]["exp"], UTC)
    agent_page = signed_in.get(f"/agents/{agent.pk}/").content.decode()
    assert expiry.strftime("%Y-%m-%d %H:%M:%S UTC") in [
        shown for _, shown in TIME.findall(agent_page)
    ]


def test_passport_ids_are_shown_in_full_and_linked(signed_in, operator, agent, issue):
    jti = issue()["jti"]
    page = signed_in.get(f"/agents/{agent.pk}/").content.decode()
    assert f'<a href="/api/v1/passports/{jti}"' in page and f">{jti}</a>" in page
    assert f'id="passport-{jti}"' in page
    revocation = kill(operator, {"passport": jti}, reason="leaked")
    page = signed_in.get(f"/revocations/{revocation.pk}/").content.decode()
    assert f'href="/api/v1/passports/{jti}">{jti}</a>' in page
    assert f'href="/agents/{agent.pk}/#passport-{jti}">{agent.name}</a>' in page


def test_timeline_rows_say_what_each_revocation_stopped(signed_in, operator, agent):
    kill(operator, {"agent": str(agent.pk)}, reason="one agent")
    killswitch.lift(revocation=Revocation.objects.get(), actor=operator)
    kill(operator, {"all": True}, reason="everyone")
    rows = {
        row["what"]: row["detail"]
        for row in signed_in.get(f"/agents/{agent.pk}/live.json").json()["timeline"]
        if row["type"] == "revocation"
    }
    assert rows == {
        f"agent {agent.name} stopped: one agent": rows[f"agent {agent.name} stopped: one agent"],
        "all agents stopped: everyone": rows["all agents stopped: everyone"],
    }
    assert all(detail.startswith("revocation #") for detail in rows.values())


def test_a_new_agents_timeline_has_only_the_revocations_of_its_lifetime(signed_in, operator, agent):
    old = kill(operator, {"all": True}, reason="yesterday's drill")
    killswitch.lift(revocation=old, actor=operator)
    kill(operator, {"all": True}, reason="still in force")
    newcomer = Agent.objects.create(name="newcomer", owner=operator)
    timeline = signed_in.get(f"/agents/{newcomer.pk}/live.json").json()["timeline"]
    assert [row["what"] for row in timeline] == ["all agents stopped: still in force"]
    assert "already in force when this agent was registered" in timeline[0]["detail"]


def test_action_log_filters_by_agent_name(signed_in, operator, agent, issue):
    other = Agent.objects.create(name="scraper-7", fleet="web", owner=operator)
    report(issue()["token"], event("fs:read:/workspace/a", "allow", time.time()))
    report(issue(agent=str(other.pk))["token"], event("fs:read:/srv/b", "allow", time.time()))
    page = signed_in.get("/actions/", {"agent": "TRAINER"}).content.decode()
    assert "/workspace/a" in page and "/srv/b" not in page
    by_id = signed_in.get("/actions/", {"agent": str(other.pk)}).content.decode()
    assert "/srv/b" in by_id and "/workspace/a" not in by_id
    nobody = signed_in.get("/actions/", {"agent": "nobody"}).content.decode()
    assert "No actions match." in nobody


@pytest.mark.parametrize(
    "since", ["2026-02-30T10:00:00Z", "2026-01-01T25:00:00Z", "2026-01-01T10:00:00+99:00"]
)
def test_action_log_with_an_impossible_date_says_so(signed_in, since):
    response = signed_in.get("/actions/", {"since": since})
    assert response.status_code == 200
    assert "since:" in response.content.decode()


def test_content_security_policy_on_console_and_api_docs(signed_in):
    for url in ["/", "/agents/", "/login/"]:
        policy = dict(
            directive.strip().split(" ", 1)
            for directive in signed_in.get(url)["Content-Security-Policy"].split(";")
        )
        assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'"
        assert policy["style-src"] == "'self'" and policy["object-src"] == "'none'"
        assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
        assert policy["form-action"] == "'self'"
    docs = signed_in.get("/api/docs/")
    assert "script-src 'self';" in docs["Content-Security-Policy"] + ";"
    assert b"<script>" not in docs.content and b"<style" not in docs.content


def test_console_pages_have_no_inline_script_style_or_handler(signed_in, agent, issue):
    issue()
    for url in [*CONSOLE_PAGES, f"/agents/{agent.pk}/", "/kill/?all=1", f"/kill/?agent={agent.pk}"]:
        page = signed_in.get(url).content.decode()
        assert not re.search(
            r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=|javascript:", page
        ), url


def test_the_favicon_is_linked_and_served(signed_in):
    page = signed_in.get("/").content.decode()
    href = re.search(r'<link rel="icon" [^>]*href="([^"]+)"', page).group(1)
    icon = Client().get(href)
    assert icon.status_code == 200 and icon["Content-Type"].startswith("image/")
    favicon = Client().get("/favicon.ico", follow=True)
    assert favicon.status_code == 200 and favicon["Content-Type"].startswith("image/")
