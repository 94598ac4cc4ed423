"""An agent that runs shell commands only through its passport guard.

    AGENT_PASSPORT_TOKEN=... .venv/bin/python -m examples.shell_agent \
        --registry http://127.0.0.1:8000 --redis redis://127.0.0.1:6379/0 \
        "echo hello" "sleep 5" "curl http://203.0.113.9:22"

Each command is checked as ``proc:exec:<program>`` (the program name is the resource;
the passport needs e.g. ``proc:exec:echo`` or ``proc:exec:*``). When the agent is killed
through the registry, the running command is terminated at once and no further command starts.
Exit codes: 0 done, 1 a command was refused by scope, 3 killed (revoked), 4 fail-closed (stale).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading

from agent_passport.errors import PassportRevoked, RevocationStateStale, ScopeDenied
from agent_passport.guard import Guard
from agent_passport.jwks import JWKSClient
from agent_passport.revocations import RevocationEntry


class ShellAgent:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self._running: subprocess.Popen | None = None
        self._lock = threading.Lock()
        guard.on_kill(self._terminate_running)

    def _terminate_running(self, entry: RevocationEntry) -> None:
        with self._lock:
            if self._running is not None and self._running.poll() is None:
                print(f"kill switch: terminating pid {self._running.pid}", flush=True)
                os.killpg(self._running.pid, signal.SIGKILL)  # the shell and its children

    def run(self, command: str) -> int:
        program = shlex.split(command)[0]
        self.guard.check("proc:exec", resource=program)
        with self._lock:
            self._running = subprocess.Popen(["/bin/sh", "-c", command], start_new_session=True)
        return self._running.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="+")
    parser.add_argument("--registry", default=os.environ.get("AGENT_PASSPORT_REGISTRY"))
    parser.add_argument("--issuer", default=os.environ.get("AGENT_PASSPORT_ISSUER"))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--jurisdiction", default=os.environ.get("AGENT_JURISDICTION"))
    args = parser.parse_args()
    token = os.environ.get("AGENT_PASSPORT_TOKEN")
    if not token or not args.registry:
        parser.error("set AGENT_PASSPORT_TOKEN and --registry (or AGENT_PASSPORT_REGISTRY)")

    guard = Guard(
        token,
        keys=JWKSClient(args.registry.rstrip("/") + "/.well-known/jwks.json"),
        issuer=args.issuer or args.registry,
        redis_url=args.redis,
        jurisdiction=args.jurisdiction,
    )
    agent = ShellAgent(guard)
    try:
        for command in args.commands:
            print(f"$ {command}", flush=True)
            agent.run(command)
        # One last check: a kill during the final command must not read as success.
        guard.check("proc:exec", resource="true")
    except PassportRevoked as exc:
        print(f"stopped: {exc}", flush=True)
        return 3
    except RevocationStateStale as exc:
        print(f"stopped (fail closed): {exc}", flush=True)
        return 4
    except ScopeDenied as exc:
        print(f"refused: {exc}", flush=True)
        return 1
    finally:
        guard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
