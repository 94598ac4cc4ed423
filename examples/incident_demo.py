"""The incident this product exists for, end to end, against a running registry.

    make run            # in another terminal; copy the demo (admin) token it prints
    .venv/bin/python examples/incident_demo.py --token aps_...

An agent allowed only ``fs:*:/workspace/**`` and ``tool:python:*`` tries to open an SSH
connection out and to start a crypto miner. Both are denied and recorded. The firewall then
reports crypto-mining traffic from the agent's host; a kill rule stops the agent; its guard
refuses at once; the timeline shows it all in order; the audit log verifies.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import requests

from agent_passport.errors import PassportRevoked, ScopeDenied
from agent_passport.guard import Guard
from agent_passport.jwks import JWKSClient
from agent_passport.reporter import ActionReporter

AGENT_HOST = "10.20.30.40"


class Registry:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.url}/api/v1/{path}", timeout=10, **kwargs)
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path} failed: {response.status_code} {response.text}")
        return response.json()


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
    suffix = uuid.uuid4().hex[:6]
    agent = registry.call(
        "POST",
        "agents",
        json={"name": f"trainer-{suffix}", "fleet": "rl-training", "host": AGENT_HOST},
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

    token = passport["token"]
    spill = os.path.join(tempfile.mkdtemp(prefix="aps-demo-"), "spill.jsonl")
    reporter = ActionReporter(f"{registry.url}/api/v1/actions", token, spill_path=spill).start()
    guard = Guard(
        token,
        keys=JWKSClient(f"{registry.url}/.well-known/jwks.json"),
        issuer=issuer or registry.url,
        redis_url=redis_url,
        jurisdiction="DE",
        reporter=reporter,
    )
    try:
        guard.check("tool:python", resource="train.py")
        say("4. agent: tool:python:train.py → allowed")
        for action in ("net:connect:198.51.100.7:22", "proc:exec:xmrig"):
            try:
                guard.check(action)
            except ScopeDenied as exc:
                say(f"5. agent: {action} → DENIED ({exc})")
        reporter.flush(timeout=10)

        signal = registry.call(
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
        signalled = time.monotonic()
        say(
            f"6. firewall: cryptomining traffic from {AGENT_HOST} "
            f"(matched agent {signal['matched_agent']})"
        )
        refused_after = None
        while time.monotonic() - signalled < 5:
            try:
                guard.check("fs:read", resource="/workspace/data.csv")
            except PassportRevoked as exc:
                refused_after = time.monotonic() - signalled
                say(
                    f"7. agent: next action refused {refused_after * 1000:.0f} ms after the "
                    f"signal: {exc}"
                )
                break
            time.sleep(0.005)
        reporter.flush(timeout=10)
    finally:
        reporter.close()
        guard.close()

    timeline = registry.call("GET", f"agents/{agent['id']}/timeline")["items"]
    say("8. timeline:")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("APS_TOKEN"), help="admin API token")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    if not args.token:
        parser.error("give --token (the demo admin token printed by `make run`)")
    result = run_scenario(args.registry, args.token, args.redis)
    return 0 if result["refused_after"] is not None and result["audit"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
