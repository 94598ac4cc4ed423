"""An agent that records action events during a registry outage, and a harness that kills it.

Run as a script, it records event ``i`` (resource ``/n/<i>``) at ``rate`` events per second with
an ``ActionReporter`` whose registry is ``url``, and after each ``record()`` returns it writes
the moment it was recorded (``time.monotonic()``, system-wide on Linux) into a ring of
``_RING`` slots and ``i + 1`` into a counter, both in a file mapped ``MAP_SHARED``: the page
cache keeps the last values when the process is killed with SIGKILL, so the harness knows exactly
how many events the agent had handed to the reporter, and when, without asking the dead process.

    python tests/sdk/outage_agent.py URL SPILL_PATH COUNTER_PATH RATE

``kill_during_outage`` starts it, SIGKILLs it at a random moment and compares the counter with
what is in the spill file. Used by tests/sdk/test_reporter_crash.py and
bench/bench_reporter_crash.py. Plain Python (no Django).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve()
BASE_DIR = SCRIPT.parents[2]
_COUNTER = struct.Struct("<Q")
_MOMENT = struct.Struct("<d")
_RING = 1 << 16  # recording moments kept: 3 s at 20,000 events/s, far more than is ever lost
_MAP_SIZE = _COUNTER.size + _RING * _MOMENT.size
# A passport-shaped token (never verified: the registry is down).
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJqdGkiOiJvdXRhZ2UtYWdlbnQifQ.c2ln"


@dataclass(frozen=True)
class KillOutcome:
    """One SIGKILL: how many events the agent had recorded and how many were on disk."""

    recorded: int  # the counter after the kill: events 0 .. recorded-1 had been recorded
    on_disk: int  # events in the spill file, all with ids below ``recorded``
    contiguous: bool  # the spill file holds exactly events 0 .. on_disk-1 (no hole)
    rate: float  # events per second the agent recorded
    lost_ms: float  # from the recording of the first event not on disk to the kill (0: none)

    @property
    def lost(self) -> int:
        return max(0, self.recorded - self.on_disk)


def run_agent(url: str, spill_path: str, counter_path: str, rate: float) -> None:
    """Record events forever (until killed) at ``rate`` per second, in 1 ms steps."""
    sys.path.insert(0, str(BASE_DIR))
    from agent_passport.reporter import ActionReporter

    reporter = ActionReporter(url, TOKEN, spill_path=spill_path, flush_interval=0.05).start()
    with open(counter_path, "r+b") as file:
        shared = mmap.mmap(file.fileno(), _MAP_SIZE)
    started = time.perf_counter()
    recorded = 0
    while True:
        due = int((time.perf_counter() - started) * rate)
        while recorded < due:
            reporter.record(time.time(), "fs:write", f"/n/{recorded}", "DE", False, "denied")
            _MOMENT.pack_into(shared, _moment_offset(recorded), time.monotonic())
            recorded += 1
            _COUNTER.pack_into(shared, 0, recorded)
        time.sleep(0.0005)


def _moment_offset(event: int) -> int:
    return _COUNTER.size + (event % _RING) * _MOMENT.size


def kill_during_outage(
    url: str, workdir: Path, *, rate: float, run_for: tuple[float, float] = (0.5, 1.5)
) -> KillOutcome:
    """Start an agent recording while ``url`` is down, SIGKILL it after a random time in
    ``run_for`` (seconds after its first event reached the disk), count what survived."""
    workdir.mkdir(parents=True, exist_ok=True)
    spill_path, counter_path = workdir / "spill.jsonl", workdir / "counter"
    spill_path.unlink(missing_ok=True)
    counter_path.write_bytes(bytes(_MAP_SIZE))
    agent = subprocess.Popen(
        [sys.executable, str(SCRIPT), url, str(spill_path), str(counter_path), str(rate)],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not spill_path.exists() or spill_path.stat().st_size == 0:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent never spilled an event")
            time.sleep(0.01)
        time.sleep(random.uniform(*run_for))
    finally:
        os.killpg(agent.pid, signal.SIGKILL)
        killed_at = time.monotonic()  # after the signal: the window is never understated
        agent.wait()
    shared = counter_path.read_bytes()
    recorded = _COUNTER.unpack_from(shared)[0]
    ids = [int(event["resource"][3:]) for event in _complete_events(spill_path)]
    return KillOutcome(
        recorded=recorded,
        on_disk=len(ids),
        contiguous=sorted(ids) == list(range(len(ids))),
        rate=rate,
        lost_ms=_lost_ms(shared, recorded, len(ids), killed_at),
    )


def _lost_ms(shared: bytes, recorded: int, on_disk: int, killed_at: float) -> float:
    """How long before the kill the first event missing from disk was recorded: the window of
    events a crash lost. Measured, not derived from the nominal rate: an agent descheduled for
    a while records the events it owes in a burst, and those few milliseconds of real time are
    what a crash can lose, not the 'rate' time the burst stands for."""
    if recorded <= on_disk:
        return 0.0
    if recorded - on_disk > _RING:
        return math.inf  # lost more than the ring holds: far beyond any bound
    (first_lost,) = _MOMENT.unpack_from(shared, _moment_offset(on_disk))
    return max(0.0, killed_at - first_lost) * 1000


def _complete_events(spill_path: Path) -> list[dict]:
    """The spill file's events; a line cut by the kill (no newline yet) is not counted."""
    data = spill_path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


if __name__ == "__main__":
    run_agent(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
