"""A guard in a process of its own, checked in a tight loop (the fault tests pause it with SIGSTOP).

Prints ``<time.time()> <outcome>`` whenever the outcome changes, and after any gap of more than
50 ms between two checks (the process was paused), so the test sees the first check after a
resume. Outcomes: allow, revoked, stale, other. Configuration comes from the environment:
PROBE_TOKEN, PROBE_JWKS (JSON), PROBE_ISSUER, PROBE_AUDIENCE, PROBE_REDIS, PROBE_PREFIX and
PROBE_MAX_STALENESS. Uses only the SDK (no Django).
"""

import json
import os
import time

from agent_passport.errors import PassportRevoked, RevocationStateStale
from agent_passport.guard import Guard
from agent_passport.protocol import RevocationChannel
from agent_passport.tokens import keys_from_jwks
from agent_passport.watcher import RevocationWatcher

PAUSE_GAP = 0.05


def outcome(guard: Guard) -> str:
    try:
        guard.check("fs:read:/workspace/data.csv", jurisdiction="DE")
    except PassportRevoked:
        return "revoked"
    except RevocationStateStale:
        return "stale"
    except Exception:
        return "other"
    return "allow"


def main() -> None:
    env = os.environ
    watcher = RevocationWatcher(
        env["PROBE_REDIS"], channel=RevocationChannel(env["PROBE_PREFIX"])
    ).start()
    guard = Guard(
        env["PROBE_TOKEN"],
        keys=keys_from_jwks(json.loads(env["PROBE_JWKS"])),
        issuer=env["PROBE_ISSUER"],
        audience=env["PROBE_AUDIENCE"],
        watcher=watcher,
        max_staleness=float(env["PROBE_MAX_STALENESS"]),
    )
    last, last_at = "", time.time()
    while True:
        now = time.time()
        result = outcome(guard)
        if result != last or now - last_at > PAUSE_GAP:
            print(f"{now:.6f} {result}", flush=True)
        last, last_at = result, now


if __name__ == "__main__":
    main()
