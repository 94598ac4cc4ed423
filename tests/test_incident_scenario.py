"""The incident, end to end: denied actions, a firewall signal, a rule kill, the timeline, audit."""

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from actions import audit, transparency
from actions.models import ActionEvent
from agent_passport.guard import Guard
from agent_passport.jwks import JWKSClient
from agent_passport.reporter import ActionReporter
from agent_passport.supervisor import EXIT_KILLED
from examples.incident_demo import (
    Registry,
    play_incident,
    run_scenario,
    run_uncooperative_scenario,
)
from killswitch import publisher, services
from killswitch.models import Revocation
from passports.auth import create_api_token
from passports.models import Agent
from passports.roles import Role
from tests.actions.test_audit import maintenance
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)
BASE_DIR = Path(__file__).resolve().parent.parent


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
    transparency.sign_tree_head()  # until then the events are not yet covered (exit 3)
    call_command("verify_audit")
    with maintenance(open_=True):
        ActionEvent.objects.filter(agent=agent, resource="xmrig").update(decision="allow")
    with pytest.raises(CommandError):
        call_command("verify_audit")


def test_the_demo_as_readme_runs_it_names_an_active_global_kill(live_server, django_user_model):
    admin = make_user(django_user_model, "incident-admin", Role.ADMIN)
    revocation = services.revoke(
        target=services.Target("all", "*"), reason="big red button", actor=admin, source="api"
    )
    result = subprocess.run(
        [sys.executable, "-m", "examples.incident_demo", "--registry", live_server.url],
        cwd=BASE_DIR,
        env={**os.environ, "APS_TOKEN": create_api_token(user=admin)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 1 and "Traceback" not in said, said
    expected = f"Every agent is stopped by revocation #{revocation.pk} (big red button)"
    assert said.startswith(expected)
    assert f"/api/v1/killswitch/{revocation.pk}/lift" in said


def test_the_demo_says_in_a_sentence_when_its_agent_is_stopped_early(
    live_server, settings, issue, agent, operator
):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    token = issue(scope=["tool:python:*"])["token"]
    services.revoke(
        target=services.Target("agent", str(agent.pk)), reason="tunnel", actor=None, source="api"
    )
    guard = Guard(
        token,
        keys=JWKSClient(f"{live_server.url}/.well-known/jwks.json"),
        issuer=live_server.url,
        redis_url=settings.REDIS_URL,
        jurisdiction="DE",
    )
    lines: list[str] = []
    registry = Registry(live_server.url, create_api_token(user=operator))
    reporter = ActionReporter(f"{live_server.url}/api/v1/actions", token)
    try:
        assert play_incident(registry, guard, reporter, lines.append) == (None, None)
    finally:
        guard.close()
    (line,) = lines
    assert line.startswith("The agent was stopped before the incident could play out: ")
    assert "tunnel" in line


def tree_survivors(roles: dict[str, int], marker: str) -> list[psutil.Process]:
    """Processes of the demo's agent tree still alive: its pids, and anything whose command
    line names its pids file (a child the agent started that the pids file missed)."""
    survivors = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        named = process.info["pid"] in roles.values() or marker in (process.info["cmdline"] or [])
        if named and process.info["status"] != psutil.STATUS_ZOMBIE:
            survivors.append(process)
    return survivors


def test_the_incident_with_an_agent_that_does_not_use_the_sdk(
    live_server, settings, django_user_model, revocation_heartbeat
):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    admin = make_user(django_user_model, "incident-admin", Role.ADMIN)
    lines: list[str] = []
    result = run_uncooperative_scenario(
        live_server.url, create_api_token(user=admin), settings.REDIS_URL, say=lines.append
    )
    transcript = "\n".join(lines)

    # The tunnel went to the egress proxy, which refused it (403) and logged the deny.
    assert "reverse tunnel: CONNECT 198.51.100.7:22 through http://127.0.0.1:" in transcript
    assert "Tunnel connection failed: 403 Forbidden" in transcript
    agent = Agent.objects.get(pk=result["agent"]["id"])
    (tunnel,) = ActionEvent.objects.filter(agent=agent, action="net:connect")
    assert (tunnel.resource, tunnel.decision) == ("198.51.100.7:22", "deny")
    assert tunnel.details == {"proxy": "CONNECT"}

    # The firewall's signal killed the agent; the supervisor stopped the whole tree: the agent,
    # its double-forked setsid miner and the helper that ignores SIGTERM (SIGKILLed after grace).
    assert agent.status == Agent.Status.KILLED
    revocation = Revocation.objects.get(target_value=str(agent.pk))
    assert revocation.source == "rule" and "cryptomining" in revocation.reason
    assert result["exit_code"] == EXIT_KILLED, result["supervisor_log"]
    assert result["stopped_after"] is not None, transcript
    assert set(result["roles"]) == {"miner", "stubborn", "ready"}
    assert tree_survivors(result["roles"], result["pids_file"]) == []

    # The acknowledgement: the supervised copy applied the epoch and reported its tree stopped.
    copy = result["copy"]
    assert copy["supervised"] and copy["state"] == "stopped"
    assert copy["epoch"] is not None and copy["epoch"] >= revocation.epoch
    assert copy["stopped"]["processes"] == 3 and copy["stopped"]["sigkilled"] == 1
    assert copy["stopped"]["cause"] == "revoked" and copy["stopped"]["epoch"] == revocation.epoch
    assert "process tree stopped: 3 processes, 1 needed SIGKILL after 1 s" in transcript

    kinds = [item["type"] for item in result["timeline"]]
    actions = [
        (item["action"], item["decision"])
        for item in result["timeline"]
        if item["type"] == "action"
    ]
    assert ("net:connect", "deny") in actions and ("proc:kill", "deny") in actions
    assert actions.index(("proc:start", "allow")) < actions.index(("net:connect", "deny"))
    assert kinds.index("signal") < kinds.index("revocation")
    assert result["audit"]["ok"] is True


def test_the_uncooperative_demo_says_in_a_sentence_when_the_supervisor_refuses(
    live_server, settings, django_user_model
):
    settings.PASSPORT_ISSUER = live_server.url
    admin = make_user(django_user_model, "incident-admin", Role.ADMIN)
    unreachable = "redis://127.0.0.1:1/0"  # no revocation channel: the supervisor must refuse
    with pytest.raises(SystemExit) as stopped:
        run_uncooperative_scenario(
            live_server.url, create_api_token(user=admin), unreachable, say=lambda line: None
        )
    message = str(stopped.value.code)
    assert message.startswith("The supervised agent did not start:"), message
    assert "Traceback" not in message and "127.0.0.1:1" in message, message
