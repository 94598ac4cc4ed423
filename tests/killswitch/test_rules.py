"""Automatic kill rules: denies and signals kill agents (or, in dry run, only say they would)."""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from agent_passport.errors import PassportRevoked
from agent_passport.guard import Guard
from agent_passport.rules import MAX_RULE_WILDCARDS
from killswitch import publisher
from killswitch.models import KillRule, Revocation, RuleMatch
from killswitch.notifications import notify_webhook
from passports.models import Agent
from registry.celery import app as celery_app
from tests.conftest import api_client_for
from tests.killswitch.conftest import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

SCOPE = ["fs:*:/workspace/**", "tool:python:*", "!net:connect:*:22"]


@pytest.fixture
def admin_api(admin_user) -> APIClient:
    return api_client_for(admin_user)


@pytest.fixture
def passport(issue):
    publisher.reconcile()  # a deployed service has written the snapshot before agents start
    return issue(scope=SCOPE, jurisdiction=["EU"])


@pytest.fixture
def agent_api(passport) -> APIClient:
    """The agent itself, authenticated by its passport, as the SDK's reporter posts."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {passport['token']}")
    return client


@pytest.fixture
def eager_celery():
    """Run Celery tasks in-process (the webhook is a real HTTP call to a local server)."""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


class Receiver:
    """A local HTTP server that records webhook POSTs; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[dict] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.received.append(
                    {"body": json.loads(self.rfile.read(length)), "headers": dict(self.headers)}
                )
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kill?secret=s3cr3t"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    started = []

    def _start(statuses=None) -> Receiver:
        started.append(Receiver(statuses))
        return started[-1]

    yield _start
    for server in started:
        server.close()


def create_rule(api, **body):
    response = api.post("/api/v1/rules", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def event(action: str, decision: str = "deny", at: float | None = None, **fields) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "action": action,
        "decision": decision,
        "reason": f"{action} is not in the passport's scope",
        "at": time.time() if at is None else at,
        **fields,
    }


def post_events(agent_api, *events) -> None:
    response = agent_api.post("/api/v1/actions", {"events": list(events)}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == len(events)


def agent_status(agent) -> str:
    agent.refresh_from_db()
    return agent.status


# --- deny_pattern ------------------------------------------------------------------------------


def test_deny_pattern_rule_kills_the_agent_and_the_guard_refuses_within_a_second(
    admin_api, agent, agent_api, passport, pinned_keys, settings, watcher_for
):
    rule = create_rule(admin_api, name="no-tunnels", kind="deny_pattern", pattern="net:tunnel:*")
    guard = Guard(
        passport["token"],
        keys=pinned_keys,
        issuer=settings.PASSPORT_ISSUER,
        audience=settings.PASSPORT_AUDIENCE,
        watcher=watcher_for(),
        jurisdiction="DE",
    )
    assert guard.check("fs:read:/workspace/data.csv").allowed
    post_events(agent_api, event("net:tunnel:203.0.113.9:22", decision="allow"))  # not a deny
    assert agent_status(agent) == Agent.Status.ACTIVE and not RuleMatch.objects.exists()

    tunnel = event("net:tunnel:203.0.113.9:22")
    started = time.monotonic()
    post_events(agent_api, event("fs:read:/etc/shadow"), tunnel)

    def refused() -> bool:
        try:
            guard.check("fs:read:/workspace/data.csv")
        except PassportRevoked:
            return True
        return False

    assert wait_until(refused, timeout=1.0)
    assert time.monotonic() - started < 1.0
    assert agent_status(agent) == Agent.Status.KILLED
    revocation = Revocation.objects.get()
    assert revocation.source == "rule" and revocation.actor is None
    assert revocation.target_type == "agent" and revocation.target_value == str(agent.id)
    assert revocation.reason.startswith("rule 'no-tunnels': denied net:tunnel:203.0.113.9:22")
    assert tunnel["id"] in revocation.reason
    match = RuleMatch.objects.get()
    assert match.rule_id == rule["id"] and match.revocation == revocation
    assert match.event_ids == [tunnel["id"]] and match.dry_run is False
    with pytest.raises(PassportRevoked, match="no-tunnels"):
        guard.check("fs:read:/workspace/data.csv")


def test_deny_pattern_uses_the_scope_rule_globs(admin_api, agent, agent_api):
    create_rule(admin_api, name="miners", kind="deny_pattern", pattern="proc:exec:*miner*")
    post_events(agent_api, event("proc:exec:/usr/bin/xminer"))  # '*' never crosses '/'
    assert agent_status(agent) == Agent.Status.ACTIVE
    post_events(agent_api, event("proc:exec", resource="cpuminer-opt"))
    assert agent_status(agent) == Agent.Status.KILLED


@pytest.mark.parametrize("kind", ["deny_pattern", "deny_rate"])
def test_a_crafted_deny_does_not_stall_a_multi_wildcard_rule(admin_api, agent, agent_api, kind):
    """Before the fix the backtracking regex never finished on this event (issue 8)."""
    pattern = "proc:exec:" + "*a" * (MAX_RULE_WILDCARDS - 1) + "*b"  # at the bound
    extra = {"threshold": 1, "window_seconds": 60} if kind == "deny_rate" else {}
    create_rule(admin_api, name="wildcards", kind=kind, pattern=pattern, **extra)
    post_events(agent_api, event("proc:exec", resource="a" * 1000))
    post_events(agent_api, event("proc:exec", resource="a" * 999))
    assert agent_status(agent) == Agent.Status.ACTIVE
    post_events(agent_api, event("proc:exec", resource="a" * 40 + "b"))
    post_events(agent_api, event("proc:exec", resource="a" * 50 + "b"))
    assert agent_status(agent) == Agent.Status.KILLED


# --- deny_rate ---------------------------------------------------------------------------------


def test_deny_rate_triggers_on_more_than_threshold_denies_in_the_window(
    admin_api, agent, agent_api
):
    create_rule(admin_api, name="deny-storm", kind="deny_rate", threshold=3, window_seconds=60)
    now = time.time()
    post_events(agent_api, *(event(f"tool:shell:cmd{i}", at=now - 30 + i) for i in range(3)))
    post_events(agent_api, event("fs:write:/workspace/ok", decision="allow", at=now))
    assert agent_status(agent) == Agent.Status.ACTIVE  # 3 denies: not more than 3
    assert not RuleMatch.objects.exists()

    fourth = event("tool:shell:cmd3", at=now)
    post_events(agent_api, fourth)
    assert agent_status(agent) == Agent.Status.KILLED
    match = RuleMatch.objects.get()
    assert len(match.event_ids) == 4 and fourth["id"] in match.event_ids
    assert "4 denies within 60 s (more than 3)" in match.trigger
    assert Revocation.objects.get().reason.startswith("rule 'deny-storm': 4 denies")


def test_deny_rate_ignores_denies_spread_beyond_the_window(admin_api, agent, agent_api):
    create_rule(admin_api, name="deny-storm", kind="deny_rate", threshold=2, window_seconds=10)
    now = time.time()
    post_events(agent_api, *(event("tool:shell:x", at=now - 100 + 20 * i) for i in range(5)))
    assert agent_status(agent) == Agent.Status.ACTIVE
    # A late, out-of-order report completes a window in the past: that counts too.
    post_events(agent_api, event("tool:shell:y", at=now - 99), event("tool:shell:z", at=now - 98))
    assert agent_status(agent) == Agent.Status.KILLED


def test_deny_rate_with_a_pattern_counts_only_matching_denies(admin_api, agent, agent_api):
    create_rule(
        admin_api,
        name="ssh-probe",
        kind="deny_rate",
        pattern="net:connect:*:22",
        threshold=1,
        window_seconds=60,
    )
    post_events(agent_api, event("net:connect:10.0.0.1:22"), event("net:connect:10.0.0.1:80"))
    assert agent_status(agent) == Agent.Status.ACTIVE
    post_events(agent_api, event("net:connect:10.0.0.2:22"))
    assert agent_status(agent) == Agent.Status.KILLED


# --- signal ------------------------------------------------------------------------------------


def test_signal_rule_kills_the_agent_the_signal_matched(admin_api, operator_api, agent, passport):
    create_rule(admin_api, name="miner-alert", kind="signal", category="cryptomining")
    scan = operator_api.post(
        "/api/v1/signals",
        {
            "occurred_at": timezone.now().isoformat(),
            "source_ip": "10.0.0.5",
            "category": "port-scan",
        },
        format="json",
    )
    assert scan.status_code == 201 and agent_status(agent) == Agent.Status.ACTIVE
    alert = operator_api.post(
        "/api/v1/signals",
        {
            "occurred_at": timezone.now().isoformat(),
            "source_host": "10.0.0.5",
            "destination": "pool.example:3333",
            "category": "cryptomining",
        },
        format="json",
    ).json()
    assert alert["matched_agent"] == str(agent.id)
    assert agent_status(agent) == Agent.Status.KILLED
    match = RuleMatch.objects.get()
    assert match.signal_id == alert["id"] and match.event_ids == []
    reason = Revocation.objects.get().reason
    assert reason == (
        f"rule 'miner-alert': signal #{alert['id']} cryptomining from 10.0.0.5 to pool.example:3333"
    )
    introspected = operator_api.post(
        "/api/v1/passports/introspect", {"token": passport["token"]}, format="json"
    ).json()
    assert introspected["active"] is False and "miner-alert" in introspected["detail"]


# --- dry run, disabled, already killed, broken rules -------------------------------------------


def test_dry_run_records_what_it_would_have_done_without_revoking(
    admin_api, viewer_api, agent, agent_api
):
    rule = create_rule(
        admin_api, name="try-me", kind="deny_pattern", pattern="net:*:*:22", dry_run=True
    )
    denied = event("net:connect:203.0.113.9:22")
    post_events(agent_api, denied)
    assert agent_status(agent) == Agent.Status.ACTIVE
    assert not Revocation.objects.exists()
    match = RuleMatch.objects.get()
    assert match.dry_run is True and match.revocation is None and match.event_ids == [denied["id"]]
    listed = viewer_api.get("/api/v1/rules/matches", {"dry_run": "true"}).json()["results"]
    assert [(m["rule"]["id"], m["outcome"]) for m in listed] == [(rule["id"], "dry_run")]


def test_disabled_rule_does_nothing(admin_api, agent, agent_api):
    create_rule(admin_api, name="off", kind="deny_pattern", pattern="net:tunnel:*", enabled=False)
    post_events(agent_api, event("net:tunnel:203.0.113.9:22"))
    assert agent_status(agent) == Agent.Status.ACTIVE
    assert not RuleMatch.objects.exists() and not Revocation.objects.exists()


def test_already_killed_agent_records_the_match_without_a_second_revocation(
    admin_api, operator_api, agent, agent_api
):
    killed = operator_api.post(
        "/api/v1/killswitch",
        {"target": {"agent": str(agent.id)}, "reason": "manual"},
        format="json",
    )
    assert killed.status_code == 201
    create_rule(admin_api, name="no-tunnels", kind="deny_pattern", pattern="net:tunnel:*")
    post_events(agent_api, event("net:tunnel:203.0.113.9:22"))
    assert Revocation.objects.count() == 1
    match = RuleMatch.objects.get()
    assert match.revocation is None and match.dry_run is False
    body = operator_api.get(f"/api/v1/rules/matches/{match.pk}").json()
    assert body["outcome"] == "already_killed" and body["revocation"] is None


def test_two_rules_matching_one_batch_kill_once_and_record_both(admin_api, agent, agent_api):
    create_rule(admin_api, name="a-tunnels", kind="deny_pattern", pattern="net:tunnel:*")
    create_rule(admin_api, name="b-any-net", kind="deny_pattern", pattern="net:*")
    post_events(agent_api, event("net:tunnel:203.0.113.9:22"))
    assert Revocation.objects.count() == 1
    outcomes = {m.rule.name: m.revocation_id is not None for m in RuleMatch.objects.all()}
    assert outcomes == {"a-tunnels": True, "b-any-net": False}


def test_a_broken_rule_neither_fails_ingestion_nor_stops_other_rules(
    admin_api, admin_user, agent, agent_api
):
    # Written around the validation (as a bad migration or manual edit might).
    KillRule.objects.create(
        name="broken", kind="deny_pattern", pattern="not a pattern", created_by=admin_user
    )
    create_rule(admin_api, name="no-tunnels", kind="deny_pattern", pattern="net:tunnel:*")
    post_events(agent_api, event("net:tunnel:203.0.113.9:22"))
    assert agent_status(agent) == Agent.Status.KILLED
    assert [m.rule.name for m in RuleMatch.objects.all()] == ["no-tunnels"]


# --- notifications -----------------------------------------------------------------------------


def test_webhook_is_posted_when_a_rule_kills(
    admin_api, viewer_api, agent, agent_api, receiver, eager_celery
):
    hook = receiver()
    create_rule(
        admin_api,
        name="no-tunnels",
        kind="deny_pattern",
        pattern="net:tunnel:*",
        webhook_url=hook.url,
    )
    denied = event("net:tunnel:203.0.113.9:22")
    post_events(agent_api, denied)
    assert wait_until(lambda: len(hook.received) == 1)
    payload = hook.received[0]["body"]
    revocation = Revocation.objects.get()
    match = RuleMatch.objects.get()
    assert payload["rule"]["name"] == "no-tunnels" and payload["agent"]["id"] == str(agent.id)
    assert payload["revocation_epoch"] == revocation.epoch and payload["outcome"] == "revoked"
    assert denied["id"] in payload["trigger"] and payload["match"] == match.pk
    assert hook.received[0]["headers"]["Content-Type"] == "application/json"
    assert match.notified_at is not None
    # The console shows the match; viewers see the webhook's host, not its secret path.
    body = viewer_api.get("/api/v1/rules/matches").json()["results"][0]
    assert body["notified_at"] is not None and body["revocation"]["epoch"] == revocation.epoch
    shown = viewer_api.get("/api/v1/rules").json()["results"][0]["webhook_url"]
    assert "s3cr3t" not in shown and shown.startswith("http://127.0.0.1:")


def test_webhook_retries_server_errors_then_delivers_once(admin_api, admin_user, agent, receiver):
    hook = receiver(statuses=[503, 500])
    rule = KillRule.objects.get(
        pk=create_rule(
            admin_api, name="r", kind="signal", category="malware", webhook_url=hook.url
        )["id"]
    )
    match = RuleMatch.objects.create(
        rule=rule, agent=agent, matched_at=timezone.now(), dry_run=False, trigger="test"
    )
    result = notify_webhook.apply(args=[match.pk])
    assert result.successful() and result.get() is True
    assert len(hook.received) == 3
    match.refresh_from_db()
    assert match.notified_at is not None
    assert notify_webhook.apply(args=[match.pk]).get() is True  # redelivered: not posted again
    assert len(hook.received) == 3


def test_webhook_gives_up_on_client_errors_and_after_bounded_retries(admin_api, agent, receiver):
    rejecting = receiver(statuses=[404])
    rule = KillRule.objects.get(
        pk=create_rule(
            admin_api, name="r", kind="signal", category="malware", webhook_url=rejecting.url
        )["id"]
    )
    match = RuleMatch.objects.create(
        rule=rule, agent=agent, matched_at=timezone.now(), dry_run=True, trigger="t"
    )
    assert notify_webhook.apply(args=[match.pk]).get() is False
    assert len(rejecting.received) == 1

    failing = receiver(statuses=[500] * 10)
    KillRule.objects.filter(pk=rule.pk).update(webhook_url=failing.url)
    result = notify_webhook.apply(args=[match.pk])
    assert result.failed()
    assert len(failing.received) == 1 + notify_webhook.max_retries
    match.refresh_from_db()
    assert match.notified_at is None


# --- the rules API -----------------------------------------------------------------------------


def test_rules_are_listed_for_viewers_and_created_by_admins_only(
    admin_api, operator_api, viewer_api
):
    body = {"name": "no-tunnels", "kind": "deny_pattern", "pattern": "net:tunnel:*"}
    assert viewer_api.post("/api/v1/rules", body, format="json").status_code == 403
    assert operator_api.post("/api/v1/rules", body, format="json").status_code == 403
    assert APIClient().get("/api/v1/rules").status_code == 401
    created = create_rule(admin_api, **body)
    assert created["enabled"] is True and created["dry_run"] is False
    assert created["created_by"] == "ada-admin"
    assert [r["name"] for r in viewer_api.get("/api/v1/rules").json()["results"]] == ["no-tunnels"]
    assert viewer_api.get(f"/api/v1/rules/{created['id']}").json()["pattern"] == "net:tunnel:*"
    again = admin_api.post("/api/v1/rules", body, format="json")
    assert again.status_code == 409 and "name" in again.json()["errors"]


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"kind": "deny_rate", "window_seconds": 60}, "threshold", "required"),
        ({"kind": "deny_rate", "threshold": 5}, "window_seconds", "required"),
        ({"kind": "deny_rate", "threshold": 0, "window_seconds": 60}, "threshold", "between"),
        ({"kind": "deny_rate", "threshold": "5", "window_seconds": 60}, "threshold", ""),
        ({"kind": "deny_rate", "threshold": 5, "window_seconds": 10**6}, "window_seconds", ""),
        ({"kind": "signal"}, "category", "required"),
        ({"kind": "signal", "category": "bitcoin"}, "category", "cryptomining"),
        ({"kind": "deny_pattern"}, "pattern", "required"),
        ({"kind": "deny_pattern", "pattern": "net tunnel"}, "pattern", "'net tunnel'"),
        ({"kind": "deny_pattern", "pattern": "net:tun*:x"}, "pattern", "'net:tun*:x'"),
        ({"kind": "deny_pattern", "pattern": "!net:tunnel"}, "pattern", "'!'"),
        ({"kind": "deny_pattern", "pattern": "fs:read:**a*b**"}, "pattern", "between two '**'"),
        (
            {"kind": "deny_pattern", "pattern": "fs:read:" + "*a" * 17},
            "pattern",
            "more than 16 wildcards",
        ),
        ({"kind": "deny_pattern", "pattern": "net:tunnel", "threshold": 3}, "threshold", "not"),
        ({"kind": "signal", "category": "malware", "pattern": "a:b"}, "pattern", "not used"),
        ({"kind": "kill_everything"}, "kind", "deny_pattern"),
        ({"kind": "signal", "category": "malware", "webhook_url": "ftp://x/y"}, "webhook_url", ""),
        ({"kind": "signal", "category": "malware", "webhook_url": "http://"}, "webhook_url", ""),
        ({"kind": "signal", "category": "malware", "enabled": "yes"}, "enabled", ""),
        ({"kind": "signal", "category": "malware", "colour": "red"}, "colour", "unknown"),
        ({"kind": "signal", "category": "malware", "name": "  "}, "name", ""),
    ],
)
def test_invalid_rules_are_400_naming_the_field(admin_api, body, field, text):
    response = admin_api.post("/api/v1/rules", {"name": "r", **body}, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert field in errors, errors
    assert text in errors[field][0]
    assert not KillRule.objects.exists()


def test_admins_change_rules_operators_may_only_defuse_them(admin_api, operator_api, viewer_api):
    rule = create_rule(
        admin_api, name="deny-storm", kind="deny_rate", threshold=10, window_seconds=60
    )
    url = f"/api/v1/rules/{rule['id']}"
    changed = admin_api.patch(url, {"threshold": 20, "pattern": "tool:*"}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["threshold"] == 20 and changed.json()["pattern"] == "tool:*"

    assert viewer_api.patch(url, {"enabled": False}, format="json").status_code == 403
    assert operator_api.patch(url, {"threshold": 5}, format="json").status_code == 403
    defused = operator_api.patch(url, {"enabled": False, "dry_run": True}, format="json")
    assert defused.status_code == 200
    assert defused.json()["enabled"] is False and defused.json()["dry_run"] is True
    assert operator_api.patch(url, {"enabled": True}, format="json").status_code == 403
    assert admin_api.patch(url, {"enabled": True}, format="json").json()["enabled"] is True

    for body, field in [
        ({"threshold": None}, "threshold"),
        ({"category": "malware"}, "category"),
        ({"pattern": "bad pattern"}, "pattern"),
        ({"kind": "signal"}, "kind"),
        ({"webhook_url": "javascript:alert(1)"}, "webhook_url"),
    ]:
        response = admin_api.patch(url, body, format="json")
        assert response.status_code == 400 and field in response.json()["errors"], body
    assert admin_api.put(url, {"enabled": True}, format="json").status_code == 405
    assert KillRule.objects.get().threshold == 20


def test_matches_are_filtered_by_rule_agent_and_dry_run(
    admin_api, viewer_api, agent, agent_api, operator
):
    real = create_rule(admin_api, name="real", kind="deny_pattern", pattern="net:tunnel:*")
    dry = create_rule(admin_api, name="dry", kind="deny_pattern", pattern="net:*", dry_run=True)
    post_events(agent_api, event("net:tunnel:203.0.113.9:22"))
    url = "/api/v1/rules/matches"
    assert len(viewer_api.get(url).json()["results"]) == 2
    only_real = viewer_api.get(url, {"rule": real["id"]}).json()["results"]
    assert [m["outcome"] for m in only_real] == ["revoked"]
    assert [
        m["rule"]["name"] for m in viewer_api.get(url, {"dry_run": "true"}).json()["results"]
    ] == [dry["name"]]
    assert len(viewer_api.get(url, {"agent": str(agent.id)}).json()["results"]) == 2
    other = Agent.objects.create(name="other", owner=operator)
    assert viewer_api.get(url, {"agent": str(other.id)}).json()["results"] == []
    for params, field in [
        ({"rule": "x"}, "rule"),
        ({"agent": "x"}, "agent"),
        ({"dry_run": "1"}, "dry_run"),
    ]:
        response = viewer_api.get(url, params)
        assert response.status_code == 400 and field in response.json()["errors"]
