"""Benchmark: what ``kill -9`` of an agent loses while the registry is down.

What is measured, in one run:

1. **Loss on SIGKILL.** An agent process (tests/sdk/outage_agent.py) records events at a fixed
   rate through ``ActionReporter`` while its registry is down, and is SIGKILLed at a random
   moment 0.5-1.5 s after its first event reached the spill file. It publishes how many events
   it had recorded in a shared-memory counter after each ``record()``; the spill file is read
   after the kill. Lost = recorded - on disk, and in milliseconds: from the moment the first
   lost event was recorded (the agent publishes each event's moment too) to the kill.
   Two outages: *refused* (nothing listens on the port: every post fails at once) and
   *hanging* (a socket that accepts connections and never answers: the post in flight stalls
   until the reporter's 5 s timeout; after STALLED_POST = 0.5 s the spill writer takes over, so
   the batch in flight, up to 1,000 events, is what such a kill can lose beyond the bound).
2. **record() during an outage** (in this process): ns per call with no thread running, and
   while the spill writer is writing to disk every 5 ms, against the bare loop — and the naive
   alternative that makes each event durable itself (append + fsync in ``record()``), which is
   what a 0 ms bound would cost the agent. Then the spill writer's capacity: events/s it moves
   from a full buffer to disk (above that rate the backlog grows and the bound no longer holds).

    .venv/bin/python bench/bench_reporter_crash.py [--quick] [--kills 8] [--rates 20000,100000]

Options: ``--quick`` (3 kills per rate and outage, 200,000 record() calls instead of 1,000,000),
``--kills N`` (kills per rate and outage; 8), ``--rates LIST`` (events/s the agent records;
20000,100000), ``--output PATH`` (bench/results/reporter_crash.json).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent_passport.reporter import SPILL_INTERVAL, ActionReporter
from bench.harness.machine import busy_cores, machine_basics
from bench.harness.report import RESULTS_DIR, Column, table, write_json
from registry.devserver import free_port
from tests.sdk.outage_agent import kill_during_outage

RESULTS_PATH = RESULTS_DIR / "reporter_crash.json"
COLUMNS = (
    Column("outage", 10, left=True),
    Column("events/s", 9, ",.0f"),
    Column("kills", 6),
    Column("recorded", 10, ","),
    Column("lost", 9, ","),
    Column("lost ms p50", 12),
    Column("max", 7),
    Column("  lost per kill", 2, left=True),
)


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/api/v1/actions"


def kills(url: str, rate: float, count: int, workdir: Path) -> dict[str, Any]:
    outcomes = [kill_during_outage(url, workdir / f"kill-{i}", rate=rate) for i in range(count)]
    lost_ms = sorted(o.lost_ms for o in outcomes)
    return {
        "rate": rate,
        "kills": count,
        "recorded": sum(o.recorded for o in outcomes),
        "lost": sum(o.lost for o in outcomes),
        "lost_ms_median": round(statistics.median(lost_ms), 1),
        "lost_ms_max": round(lost_ms[-1], 1),
        "lost_per_kill": [o.lost for o in outcomes],
        "contiguous": all(o.contiguous for o in outcomes),
    }


def record_ns(reporter: ActionReporter | None, calls: int, spill: Path | None = None) -> float:
    """ns per call of record() (None: the bare loop; ``spill``: the naive durable record)."""
    now = time.time()
    if spill is not None:
        descriptor = os.open(spill, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    began = time.perf_counter_ns()
    for _ in range(calls):
        if reporter is not None:
            reporter.record(now, "fs:write", "/workspace/x", "DE", True, "allowed")
        elif spill is not None:
            os.write(descriptor, b'{"action":"fs:write","resource":"/workspace/x"}\n')
            os.fsync(descriptor)
    elapsed = time.perf_counter_ns() - began
    if spill is not None:
        os.close(descriptor)
    return elapsed / calls


def record_during_outage(calls: int, workdir: Path) -> dict[str, Any]:
    def reporter() -> ActionReporter:
        spill = workdir / f"outage-{time.monotonic_ns()}.jsonl"
        return ActionReporter(
            refused_url(), "bench.not-a.token", spill_path=spill, max_buffer=calls + 1
        )

    idle = min(record_ns(reporter(), calls) for _ in range(3))  # no thread: the check path alone
    outage = reporter().start()
    time.sleep(0.3)  # the first post failed: the spill writer is on
    try:
        during = min(record_ns(outage, calls) for _ in range(3))
    finally:
        outage.close(timeout=10)
    backlog = reporter()
    record_ns(backlog, calls // 5)
    began = time.perf_counter()
    backlog.start()
    while backlog.buffered:
        time.sleep(0.001)
    writer_rate = calls // 5 / (time.perf_counter() - began)
    backlog.close(timeout=10)
    naive_calls = max(200, calls // 500)
    return {
        "spill_writer_events_per_s": round(writer_rate),
        "bare_loop_ns": round(min(record_ns(None, calls) for _ in range(3)), 1),
        "record_no_thread_ns": round(idle, 1),
        "record_during_outage_ns": round(during, 1),
        "naive_fsync_per_event_ns": round(record_ns(None, naive_calls, workdir / "naive"), 1),
        "spilled_events": outage.spilled,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kills", type=int, help="kills per rate and outage (8; quick 3)")
    parser.add_argument("--rates", default="20000,100000", help="events/s the agent records")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    return parser.parse_args()


def kills_per_outage(rates: list[float], count: int, workdir: Path) -> list[dict[str, Any]]:
    """``count`` kills at each rate, during each kind of outage."""
    rows = []
    with closing(socket.create_server(("127.0.0.1", 0), backlog=64)) as hanging:
        hanging_url = f"http://127.0.0.1:{hanging.getsockname()[1]}/api/v1/actions"
        for outage, url in (("refused", None), ("hanging", hanging_url)):
            for rate in rates:
                print(f"{outage}: {count} kills at {rate:,.0f} events/s…", file=sys.stderr)
                row = kills(url or refused_url(), rate, count, workdir / f"{outage}-{rate:.0f}")
                rows.append({"outage": outage, **row})
    return rows


def print_report(report: dict[str, Any]) -> None:
    rows, recording = report["kills"], report["record"]
    print(f"\nkill -9 during a registry outage  (spill writer every {SPILL_INTERVAL * 1000:g} ms)")
    print(
        f"machine: {report['machine'].get('cpu_count', '?')} cores; "
        f"background {report['background_busy_cores']} cores"
    )
    print(
        table(
            COLUMNS,
            [
                [
                    *(
                        r[k]
                        for k in (
                            "outage",
                            "rate",
                            "kills",
                            "recorded",
                            "lost",
                            "lost_ms_median",
                            "lost_ms_max",
                        )
                    ),
                    f"  {r['lost_per_kill']}",
                ]
                for r in rows
            ],
        )
    )
    print(
        f"\nrecord(): {recording['record_no_thread_ns']} ns/call alone, "
        f"{recording['record_during_outage_ns']} ns/call during an outage, i.e. while the spill "
        f"writer encodes the same events (bare loop {recording['bare_loop_ns']} ns); "
        "naive append+fsync per event: "
        f"{recording['naive_fsync_per_event_ns'] / 1000:,.1f} us/call"
    )
    print(
        f"spill writer: {recording['spill_writer_events_per_s']:,} events/s to disk (the loss "
        "bound holds while the agent records fewer)"
    )


def main() -> int:
    args = parse_args()
    count = args.kills or (3 if args.quick else 8)
    background = busy_cores(1.0)
    with tempfile.TemporaryDirectory(prefix="aps-bench-reporter-crash-") as tmp:
        workdir = Path(tmp)  # spill files of the killed agents and of the outages
        rows = kills_per_outage([float(r) for r in args.rates.split(",")], count, workdir)
        recording = record_during_outage(200_000 if args.quick else 1_000_000, workdir)
    report = {
        "machine": machine_basics(),
        "background_busy_cores": background,
        "spill_interval_ms": SPILL_INTERVAL * 1000,
        "kills": rows,
        "record": recording,
    }
    print_report(report)
    write_json(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
