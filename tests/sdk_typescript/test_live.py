"""The TypeScript SDK against the real registry: an API kill makes a TypeScript guard refuse.

The agent is sdk/typescript/test/live_agent.ts (built by ``npm test``; built here if missing):
a Guard with a reporter on a passport issued through the API, following the registry's Redis.
Propagation (the guard's first refusal minus the moment the kill API call returned) is printed;
its figures come from bench/bench_sdk_check.py, not from this test's timings.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from actions.models import ActionEvent
from killswitch import publisher
from passports.auth import create_api_token

pytestmark = pytest.mark.django_db(transaction=True)
SDK_DIR = Path(__file__).resolve().parents[2] / "sdk" / "typescript"
AGENT = SDK_DIR / "dist" / "test" / "live_agent.js"
ROUNDS = 5


@pytest.fixture
def registry_api(live_server, live_server_connection, operator) -> requests.Session:
    """The operator's API over HTTP: every write then goes through the live server, which on
    in-memory SQLite serves one request at a time (the agent's reporter posts meanwhile)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Token {create_api_token(user=operator)}"
    return session


@pytest.fixture(scope="session")
def typescript_agent() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node 20 and npm are required for the TypeScript SDK tests")
    if not (SDK_DIR / "node_modules").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SDK_DIR, check=True)
    subprocess.run([npm, "run", "build"], cwd=SDK_DIR, check=True, capture_output=True)
    return AGENT


class AgentProcess:
    """The Node agent; ``next_line()`` returns its next ``(outcome, at_ms, epoch)``."""

    def __init__(self, agent: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["node", str(agent)],
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def next_line(self, timeout: float = 10.0) -> tuple[str, float, int]:
        try:
            outcome, at_ms, epoch = self.lines.get(timeout=timeout).split()
        except queue.Empty as exc:
            self.process.kill()
            stderr = self.process.stderr.read()
            raise AssertionError(f"the agent said nothing; stderr: {stderr}") from exc
        return outcome, float(at_ms), int(epoch)

    def finish(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def test_api_kill_makes_a_typescript_guard_refuse(
    typescript_agent, live_server, registry_api, issue, agent, settings, revocation_heartbeat
):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    token = issue(scope=["tool:python:run"], jurisdiction=["GLOBAL"])["token"]
    node = AgentProcess(
        typescript_agent,
        {
            "APS_TOKEN": token,
            "APS_REGISTRY": live_server.url,
            "APS_REDIS": settings.REDIS_URL,
            "APS_ACTION": "tool:python:run",
        },
    )
    latencies = []
    try:
        assert node.next_line()[0] == "allowed"
        for _ in range(ROUNDS):
            killed = registry_api.post(
                f"{live_server.url}/api/v1/killswitch",
                json={"target": {"agent": str(agent.id)}, "reason": "live test"},
            )
            returned_ms = time.time() * 1000
            assert killed.status_code == 201, killed.content
            outcome, at_ms, epoch = node.next_line()
            assert (outcome, epoch) == ("PassportRevoked", killed.json()["epoch"])
            latencies.append(at_ms - returned_ms)
            lifted = registry_api.post(
                f"{live_server.url}/api/v1/killswitch/{killed.json()['id']}/lift", json={}
            )
            assert lifted.status_code == 200, lifted.content
            assert node.next_line()[0] == "allowed"
        node.finish()
    finally:
        if node.process.poll() is None:
            node.process.kill()
    assert node.process.returncode == 0, node.process.stderr.read()
    print(f"propagation to the TypeScript guard (ms): {sorted(latencies)}")
    assert max(latencies) < 2000  # a generous bound: the figures are measured in bench/

    decisions = ActionEvent.objects.filter(agent=agent).values_list("decision", "reason")
    refusals = [reason for decision, reason in decisions if decision == "deny"]
    assert len(refusals) == ROUNDS and all("live test" in reason for reason in refusals)
    assert sum(decision == "allow" for decision, _ in decisions) == ROUNDS + 1
    agent.refresh_from_db()
    assert agent.last_seen_epoch is not None and agent.last_seen_epoch >= killed.json()["epoch"]
    assert len(agent.last_seen_digest) == 64


def test_typescript_cli_verifies_with_the_registry_jwks_and_checks_live_revocations(
    typescript_agent, live_server, registry_api, issue, agent, settings, revocation_heartbeat
):
    settings.PASSPORT_ISSUER = live_server.url
    publisher.reconcile()
    token = issue(scope=["fs:*:/workspace/**"], jurisdiction=["EU"])["token"]
    cli = [
        "node",
        str(SDK_DIR / "dist" / "src" / "cli.js"),
        "check",
        token,
        "fs:write:/workspace/model.pt",
        "--jurisdiction",
        "DE",
        "--registry",
        live_server.url,
    ]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *extra], capture_output=True, text=True, timeout=30)

    allowed = run("--redis", settings.REDIS_URL)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == "allowed: allowed by rule 'fs:*:/workspace/**' in DE\n"
    killed = registry_api.post(
        f"{live_server.url}/api/v1/killswitch",
        json={"target": {"agent": str(agent.id)}, "reason": "cli"},
    )
    assert killed.status_code == 201, killed.content
    refused = run("--redis", settings.REDIS_URL)
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout.startswith("refused: fs:write:/workspace/model.pt refused: revocation #")
    assert run().returncode == 0  # without --redis: the scope alone (it still allows)
