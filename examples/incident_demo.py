"""The incident this product exists for, end to end, against a running registry.

    make run            # in another terminal; copy the demo (admin) token it prints
    .venv/bin/python -m examples.incident_demo --token aps_...

An agent allowed only ``fs:*:/workspace/**`` and ``tool:python:*`` tries to open an SSH
connection out and to start a crypto miner. Both are denied and recorded. The firewall then
reports crypto-mining traffic from the agent's host; a kill rule stops the agent; its guard
refuses at once; the timeline shows it all in order; the audit log verifies.

With ``--uncooperative`` the agent does not use the SDK at all: it is
``examples/uncooperative_agent.py``, a plain script that imports nothing of ours, run under
``agent-passport run --egress-proxy``. Its reverse tunnel to ``…:22`` goes through the egress
proxy (denied: 403, logged), it starts a double-forked ``setsid`` miner and a helper that
ignores SIGTERM; the firewall's signal kills the agent and the supervisor stops its whole process
tree, then acknowledges it ("process tree stopped: N processes") in the agent's status.

It refuses to start while a fleet or global kill would stop its agent (and names the one to
lift), and says in a sentence if its agent is stopped before the incident plays out.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from agent_passport.errors import GuardError, PassportRevoked, ScopeDenied
from agent_passport.guard import Guard
from agent_passport.jwks import JWKSClient
from agent_passport.reporter import ActionReporter

AGENT_HOST = "10.20.30.40"
FLEET = "rl-training"
UNCOOPERATIVE_AGENT = Path(__file__).resolve().parent / "uncooperative_agent.py"
GRACE = 1  # seconds the supervisor waits between SIGTERM and SIGKILL


class Registry:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(
                method, f"{self.url}/api/v1/{path}", timeout=10, **kwargs
            )
        except requests.ConnectionError as exc:
            raise SystemExit(
                f"Cannot reach the registry at {self.url} (is `make run` running?): {exc}"
            ) from None
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path} failed: {response.status_code} {response.text}")
        return response.json()


def refuse_if_stopped_already(registry: Registry) -> None:
    """Exit with a sentence if an active fleet or global kill would stop the demo's agent."""
    active = registry.call("GET", "killswitch?active=true&page_size=1000")["results"]
    for revocation in active:
        if revocation["target"] in ({"all": True}, {"fleet": FLEET}):
            what = "every agent" if "all" in revocation["target"] else f"fleet {FLEET!r}"
            raise SystemExit(
                f"{what.capitalize()} is stopped by revocation #{revocation['id']} "
                f"({revocation['reason']}), so the demo's agent would be dead on arrival. Lift it "
                f"first: POST {registry.url}/api/v1/killswitch/{revocation['id']}/lift"
            )


def prepare(registry: Registry, say: Callable[[str], None]) -> tuple[dict, dict]:
    """Register the agent, the kill rule and the passport. Returns (agent, passport)."""
    suffix = uuid.uuid4().hex[:6]
    agent = registry.call(
        "POST", "agents", json={"name": f"trainer-{suffix}", "fleet": FLEET, "host": AGENT_HOST}
    )
    say(f"1. registered agent {agent['name']} on host {AGENT_HOST}")
    rule = registry.call(
        "POST",
        "rules",
        json={"name": f"cryptomining-{suffix}", "kind": "signal", "category": "cryptomining"},
    )
    say(f"2. kill rule {rule['name']!r}: an external cryptomining signal kills the agent")
    passport = registry.call(
        "POST",
        "passports",
        json={
            "agent": agent["id"],
            "scope": ["fs:*:/workspace/**", "tool:python:*"],
            "jurisdiction": ["EU"],
            "ttl_seconds": 900,
        },
    )
    say(f"3. issued passport {passport['jti']} (scope fs:*:/workspace/**, tool:python:*)")
    return agent, passport


def play_incident(
    registry: Registry, guard: Guard, reporter: ActionReporter, say: Callable[[str], None]
) -> tuple[dict | None, float | None]:
    """The agent acts, the firewall reports it, the rule kills it. Returns (signal, seconds from
    the signal to the guard's refusal); (None, None) if the agent was stopped before."""
    try:
        guard.check("tool:python", resource="train.py")
        say("4. agent: tool:python:train.py → allowed")
        for action in ("net:connect:198.51.100.7:22", "proc:exec:xmrig"):
            try:
                guard.check(action)
            except ScopeDenied as exc:
                say(f"5. agent: {action} → DENIED ({exc})")
    except GuardError as exc:
        say(f"The agent was stopped before the incident could play out: {exc}")
        return None, None
    reporter.flush(timeout=10)
    signal = firewall_signal(registry)
    signalled = time.monotonic()
    say(f"6. firewall: cryptomining traffic from {AGENT_HOST} (matched {signal['matched_agent']})")
    while time.monotonic() - signalled < 5:
        try:
            guard.check("fs:read", resource="/workspace/data.csv")
        except PassportRevoked as exc:
            refused_after = time.monotonic() - signalled
            after = f"{refused_after * 1000:.0f} ms after the signal"
            say(f"7. agent: next action refused {after}: {exc}")
            return signal, refused_after
        time.sleep(0.005)
    say("7. the agent was NOT stopped within 5 s of the signal")
    return signal, None


def firewall_signal(registry: Registry) -> dict:
    """The firewall reports crypto-mining traffic from the agent's host."""
    result: dict = registry.call(
        "POST",
        "signals",
        json={
            "occurred_at": datetime.now(UTC).isoformat(),
            "source_ip": AGENT_HOST,
            "destination": "pool.minexmr.example:4444",
            "category": "cryptomining",
            "raw": {"firewall": "fw-edge-1", "bytes_out": 1_839_204},
        },
    )
    return result


def show_timeline(
    registry: Registry, agent: dict, say: Callable[[str], None], number: int = 8
) -> list[dict]:
    timeline = registry.call("GET", f"agents/{agent['id']}/timeline")["items"]
    say(f"{number}. timeline:")
    for item in timeline:
        what = (
            item.get("action")
            or item.get("category")
            or item.get("reason")
            or item.get("trigger", "")
        )
        if item["type"] == "action":
            what = f"{item['action']}:{item['resource']} {item['decision']}"
        mark = "!" if item.get("highlight") or item["type"] in ("revocation", "rule_match") else " "
        say(f"   {mark} {item['at']}  {item['type']:<10} {what}")
    return timeline


def run_scenario(
    registry_url: str,
    operator_token: str,
    redis_url: str,
    *,
    issuer: str | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Play the incident; returns what happened (used by the end-to-end test)."""
    registry = Registry(registry_url, operator_token)
    refuse_if_stopped_already(registry)
    agent, passport = prepare(registry, say)
    token = passport["token"]
    with tempfile.TemporaryDirectory(prefix="aps-demo-") as spill_dir:
        spill = os.path.join(spill_dir, "spill.jsonl")
        reporter = ActionReporter(f"{registry.url}/api/v1/actions", token, spill_path=spill)
        reporter.start()
        guard = Guard(
            token,
            keys=JWKSClient(f"{registry.url}/.well-known/jwks.json"),
            issuer=issuer or registry.url,
            redis_url=redis_url,
            jurisdiction="DE",
            reporter=reporter,
        )
        try:
            signal, refused_after = play_incident(registry, guard, reporter, say)
            reporter.flush(timeout=10)
        finally:
            reporter.close()
            guard.close()
    timeline = show_timeline(registry, agent, say)
    audit_status = registry.call("GET", "audit")
    say(
        f"9. audit log: {'intact' if audit_status['ok'] else 'TAMPERED'} "
        f"({audit_status['events']} events)"
    )
    return {
        "agent": agent,
        "passport": passport,
        "signal": signal,
        "refused_after": refused_after,
        "timeline": timeline,
        "audit": audit_status,
    }


def wait_for(predicate: Callable[[], Any], timeout: float, every: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie), as Linux's /proc says."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def supervised_copy(registry: Registry, agent: dict, stopped: bool) -> dict | None:
    """The agent's supervised copy from its status (once its tree is stopped, if ``stopped``)."""
    for copy in registry.call("GET", f"agents/{agent['id']}/status")["copies"]:
        if copy["supervised"] and (copy["stopped"] is not None or not stopped):
            return dict(copy)
    return None


def supervise(
    registry: Registry, token_file: str, redis_url: str, issuer: str | None, work: str
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Start the uncooperative agent under ``agent-passport run --egress-proxy`` in a session
    of its own; the files its processes, its output and the supervisor's log go to."""
    files = {name: os.path.join(work, name) for name in ("pids", "agent.out", "supervisor.log")}
    argv = [
        sys.executable, "-m", "agent_passport", "run",
        "--token-file", token_file, "--registry", registry.url, "--redis", redis_url,
        "--jurisdiction", "DE", "--egress-proxy", "--grace", str(GRACE),
        *(["--issuer", issuer] if issuer else []),
        "--", sys.executable, str(UNCOOPERATIVE_AGENT), "--pids", files["pids"],
    ]  # fmt: skip
    open(files["pids"], "w").close()
    with open(files["agent.out"], "wb") as out, open(files["supervisor.log"], "wb") as log:
        process = subprocess.Popen(argv, stdout=out, stderr=log, start_new_session=True)
    return process, files


def read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def play_uncooperative(
    registry: Registry,
    agent: dict,
    process: subprocess.Popen[bytes],
    files: dict[str, str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The agent (no SDK) acts under the supervisor, the firewall reports it, the rule kills it,
    the supervisor stops the tree. Returns what happened; raises SystemExit if it cannot start."""

    def started() -> bool:
        return "ready" in read(files["pids"]) or process.poll() is not None

    if not wait_for(started, 30) or process.poll() is not None:
        raise SystemExit(
            f"The supervised agent did not start:\n{read(files['supervisor.log']).strip()}"
        )
    roles = {
        role: int(pid) for role, pid in (line.split() for line in read(files["pids"]).splitlines())
    }
    owned = [line for line in read(files["supervisor.log"]).splitlines() if "owned by" in line]
    say(f"4. supervisor: {owned[0].removeprefix('agent-passport run: ') if owned else '?'}")
    for line in read(files["agent.out"]).splitlines():
        say(f"5. {line}")
    say(
        f"   (agent pid {roles['ready']}, miner pid {roles['miner']} in a session of its own, "
        f"helper pid {roles['stubborn']})"
    )
    # The deny is in the action log and the supervisor's copy reported before the firewall speaks.
    wait_for(lambda: supervised_copy(registry, agent, stopped=False), 10, every=0.1)
    signalled = time.monotonic()  # the rule kills while the signal's POST is answered
    alert = firewall_signal(registry)
    say(f"6. firewall: cryptomining traffic from {AGENT_HOST} (matched {alert['matched_agent']})")
    every_gone = wait_for(lambda: all(gone(pid) for pid in roles.values()), 10, every=0.005)
    stopped_after = time.monotonic() - signalled if every_gone else None
    try:
        exit_code: int | None = process.wait(15)
    except subprocess.TimeoutExpired:
        exit_code = None
    copy = wait_for(lambda: supervised_copy(registry, agent, stopped=True), 10, every=0.1)
    if stopped_after is None or copy is None:
        say(f"7. the supervised tree was NOT stopped:\n{read(files['supervisor.log']).strip()}")
    else:
        stop = copy["stopped"]
        say(
            f"7. supervisor ({copy['mechanism']}, pid {copy['pid']} on {copy['host']}): "
            f"process tree stopped: {stop['processes']} processes, {stop['sigkilled']} needed "
            f"SIGKILL after {GRACE} s; the last was gone {stopped_after * 1000:.0f} ms after "
            f"the signal (exit code {exit_code})"
        )
    return {
        "roles": roles,
        "signal": alert,
        "stopped_after": stopped_after,
        "exit_code": exit_code,
        "copy": copy,
        "supervisor_log": read(files["supervisor.log"]),
        "agent_output": read(files["agent.out"]),
        "pids_file": files["pids"],
    }


def run_uncooperative_scenario(
    registry_url: str,
    operator_token: str,
    redis_url: str,
    *,
    issuer: str | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The incident with an agent that does not use the SDK, contained from outside its code."""
    registry = Registry(registry_url, operator_token)
    with registry.session:  # its keep-alive connection ends with the demo, even an early exit
        return _run_uncooperative(registry, redis_url, issuer, say)


def _run_uncooperative(
    registry: Registry, redis_url: str, issuer: str | None, say: Callable[[str], None]
) -> dict[str, Any]:
    refuse_if_stopped_already(registry)
    agent, passport = prepare(registry, say)
    with tempfile.TemporaryDirectory(prefix="aps-demo-") as work:
        token_file = os.path.join(work, "passport.jwt")
        descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(passport["token"])
        process, files = supervise(registry, token_file, redis_url, issuer, work)
        try:
            result = play_uncooperative(registry, agent, process, files, say)
        finally:
            if process.poll() is None:  # something went wrong: the supervisor stops its tree
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(15)
    timeline = show_timeline(registry, agent, say, number=8)
    audit_status = registry.call("GET", "audit")
    say(
        f"9. audit log: {'intact' if audit_status['ok'] else 'TAMPERED'} "
        f"({audit_status['events']} events)"
    )
    return {
        **result,
        "agent": agent,
        "passport": passport,
        "timeline": timeline,
        "audit": audit_status,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--registry", default=os.environ.get("AGENT_PASSPORT_REGISTRY", "http://127.0.0.1:8000")
    )
    parser.add_argument("--token", default=os.environ.get("APS_TOKEN"), help="admin API token")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--uncooperative",
        action="store_true",
        help="the agent does not use the SDK: it runs under agent-passport run --egress-proxy",
    )
    args = parser.parse_args()
    if not args.token:
        parser.error("give --token (the demo admin token printed by `make run`)")
    if args.uncooperative:
        result = run_uncooperative_scenario(args.registry, args.token, args.redis)
        stopped = result["stopped_after"] is not None and result["copy"] is not None
        return 0 if stopped and result["audit"]["ok"] else 1
    result = run_scenario(args.registry, args.token, args.redis)
    return 0 if result["refused_after"] is not None and result["audit"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
