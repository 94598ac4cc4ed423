"""``agent-passport run --egress-proxy``: the command's proxy variables point at a proxy that
checks every connection with the supervisor's passport; a deny_pattern rule on what the proxy
refused kills the agent and the supervisor stops its whole tree."""

import sys
from pathlib import Path

import psutil
import pytest

from actions.models import ActionEvent
from agent_passport.supervisor import EXIT_KILLED
from killswitch import publisher
from passports.models import Agent
from tests.conftest import api_client_for
from tests.killswitch.conftest import wait_until
from tests.killswitch.test_supervisor import alive, run  # noqa: F401 (the run fixture)
from tests.sdk.test_egress import origin  # noqa: F401 (the origin fixture)

pytestmark = pytest.mark.django_db(transaction=True)

AGENT = Path(__file__).resolve().parents[2] / "examples" / "uncooperative_agent.py"
SCOPE = ["fs:*:/workspace/**", "net:connect:127.0.0.1:*"]


@pytest.fixture
def passport(issue, live_server, settings):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    return issue(scope=SCOPE, jurisdiction=["EU"])


def test_the_child_connects_through_the_proxy_and_a_denied_tunnel_kills_the_tree(
    passport,
    run,  # noqa: F811
    origin,  # noqa: F811
    agent,
    admin_user,
    tmp_path,
):
    created = api_client_for(admin_user).post(
        "/api/v1/rules",
        {"name": "no-ssh", "kind": "deny_pattern", "pattern": "net:connect:*:22"},
        format="json",
    )
    assert created.status_code == 201, created.content
    pids = tmp_path / "agent-pids"
    output = tmp_path / "agent-output"
    command = [
        "sh", "-c",
        f'env > {tmp_path / "env"}; exec "$@" > {output}', "sh",
        sys.executable, str(AGENT), "--pids", str(pids),
        "--fetch", f"http://127.0.0.1:{origin}/allowed",
    ]  # fmt: skip
    supervised = run(passport["token"], "--egress-proxy", "--grace", "1", command=command)

    assert supervised.wait(20) == EXIT_KILLED
    stderr = supervised.stderr()
    said = output.read_text()
    assert "reverse tunnel: CONNECT 198.51.100.7:22 through http://127.0.0.1:" in said, said
    assert "failed (Tunnel connection failed: 403 Forbidden)" in said, said
    assert f"fetch http://127.0.0.1:{origin}/allowed: 200" in said, said
    assert "egress proxy http://127.0.0.1:" in stderr, stderr
    env = dict(
        line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line
    )
    url = env["HTTPS_PROXY"]
    assert url.startswith("http://127.0.0.1:") and f"egress proxy {url}" in stderr
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        assert env[name] == env[name.lower()] == url
    assert env["NO_PROXY"] == env["no_proxy"] == ""
    assert "no-ssh" in stderr and "process tree stopped: " in stderr, stderr

    # Every process the agent started is gone, the double-forked setsid miner included.
    roles = dict(line.split() for line in pids.read_text().splitlines())
    assert {"miner", "stubborn"} <= set(roles), roles
    assert not any(alive(int(pid)) for pid in roles.values())
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if str(pids) in (p.info["cmdline"] or [])
    ]

    agent.refresh_from_db()
    assert agent.status == Agent.Status.KILLED
    connects = ActionEvent.objects.filter(agent=agent, action="net:connect").order_by("seq")
    decisions = {(e.resource, e.decision) for e in connects}
    assert ("198.51.100.7:22", "deny") in decisions
    assert (f"127.0.0.1:{origin}", "allow") in decisions
    assert wait_until(lambda: ActionEvent.objects.filter(agent=agent, action="proc:kill"), 5)


def test_without_the_flag_the_child_gets_no_proxy(passport, run, tmp_path):  # noqa: F811
    output = tmp_path / "env"
    command = ["sh", "-c", f"env > {output}"]
    assert run(passport["token"], command=command).wait(20) == 0
    assert "_PROXY=" not in output.read_text().upper()


def test_after_a_renewal_the_proxy_checks_with_the_new_passport(
    operator_api,
    agent,
    live_server,
    settings,
    run,  # noqa: F811
    origin,  # noqa: F811
    tmp_path,
):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    body = {"agent": str(agent.id), "scope": SCOPE, "jurisdiction": ["EU"], "ttl_seconds": 6}
    response = operator_api.post(
        "/api/v1/passports", {**body, "agent_may_renew": True}, format="json"
    )
    assert response.status_code == 201, response.content
    output = tmp_path / "agent-output"
    (tmp_path / "pids").touch()
    # Once the token file holds the new passport (and the old one, superseded, is revoked on the
    # channel), the agent opens a tunnel and fetches through the proxy.
    command = [
        "sh", "-c",
        'while [ "$(cat "$AGENT_PASSPORT_TOKEN_FILE")" = "$AGENT_PASSPORT_TOKEN" ]; do sleep 0.1; '
        f'done; sleep 1; exec "$@" > {output}', "sh",
        sys.executable, str(AGENT), "--pids", str(tmp_path / "pids"),
        "--tunnel", f"127.0.0.1:{origin}", "--fetch", f"http://127.0.0.1:{origin}/renewed",
    ]  # fmt: skip
    supervised = run(response.json()["token"], "--renew", "--egress-proxy", command=command)
    assert wait_until(lambda: "ready" in (tmp_path / "pids").read_text(), timeout=15), (
        supervised.stderr()
    )
    said = output.read_text()
    assert f"CONNECT 127.0.0.1:{origin} through http://127.0.0.1:" in said, said
    assert ": OPEN" in said and f"fetch http://127.0.0.1:{origin}/renewed: 200" in said, said
