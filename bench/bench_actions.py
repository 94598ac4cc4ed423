"""Benchmark: sustained action-event ingestion into PostgreSQL through the real HTTP API.

What is measured, in one run:

1. **SDK side** (before any server runs, one thread): ``ActionReporter.record()`` — what every
   ``guard.check`` pays to report — 1,000,000 calls (per-call cost and single-call
   percentiles), and, for comparison, what the reporter's background thread spends per event
   turning the buffer into a JSON batch (never on the check path).
2. **Ingestion**: gunicorn ``registry.wsgi`` (no Celery) against a dedicated PostgreSQL database
   ``aps_bench_actions`` (created fresh, dropped at the end) and the machine's Redis with a key
   prefix of this run's own; the per-agent ingest throttle (``ACTIONS_RATE_LIMIT``) and the user
   throttle are raised so they never limit. N agents (default 8) get a passport each via the
   API; one client thread per agent (like real agents, each with its own connection) posts
   batches of 1,000 events (``Authorization: Bearer <passport>``, the SDK's wire format with a
   heartbeat) back to back for a sustained period after a warm-up. Events mix allow (80 %) and
   deny, actions of every domain, resources of 4 to ~420 characters (median ~30; some
   non-ASCII, some given inside the action) and small ``details`` on a third of them (~250 KB
   per batch). The server runs DEFAULT_CONFIG (the best of earlier sweeps on this host, see
   below); a full run then gives each other config of ``--configs`` a short trial and says
   whether one of them beat it.
   Reported: events/s (total, per agent, first vs second half of the window), batch latency
   p50/p99, errors, and the CPU (in cores) of the client, gunicorn, PostgreSQL, Redis and the
   rest of the machine over the window (from /proc), and CPU time per stored event.
3. **Naive alternative** on the same server: the same kind of events posted one per request.
4. **Chains**: a checkpoint is signed for every chain (``create_checkpoints``), then
   ``manage.py verify_audit`` runs against the bench database (timed: events verified/s) and
   must report the log intact; the number of rows must equal the number of accepted events.

Client, gunicorn, PostgreSQL and Redis share the machine's cores (2 on the bench host), so the
figures are a lower bound for a registry on a host of its own. Before each load phase the bench
waits (up to 10 s, quick 5 s) for other processes to go quiet; a window during which they
still took more than 0.3 cores is marked ``*`` (its rate understates the registry), and the
CPU time per event, which such neighbours barely change, is reported alongside.

Target: >= 5,000 events/s sustained with every chain intact afterwards.

    .venv/bin/python bench/bench_actions.py [--quick] [--configs sync:2,gthread:2x4] [--agents 8]

Options: ``--quick`` (8 s window, 3 s naive run, only DEFAULT_CONFIG: under ~1 minute),
``--configs LIST`` (gunicorn configs such as ``sync:2,gthread:2x4``; the first serves the
sustained and naive runs, the others get a 6 s trial each; default SWEEP_CONFIGS, quick
DEFAULT_CONFIG), ``--agents N`` (8), ``--duration S`` (the sustained window; 30, quick 8),
``--keep-db`` (do not drop aps_bench_actions), ``--keep-logs`` (keep the work directory),
``--output PATH`` (bench/results/actions.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg import sql

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.reporter import MAX_BATCH_EVENTS, ActionReporter  # noqa: E402
from bench.harness.load import BadAnswer, Call, Load, closed_loop  # noqa: E402
from bench.harness.machine import (  # noqa: E402
    NOISY_CORES,
    CpuSnapshot,
    machine_basics,
    wait_until_quiet,
)
from bench.harness.report import RESULTS_DIR, Column, cores_cells, table, write_json, yes  # noqa: E402
from bench.harness.run import Run, run_bench  # noqa: E402
from bench.harness.servers import (  # noqa: E402
    HIGH_RATE,
    Api,
    GunicornConfig,
    Server,
    drop_database,
    gunicorn,
    prepare_database,
    redis_version,
    registry_env,
    setup_registry,
)
from bench.harness.stats import percentile, timer_overhead_ns  # noqa: E402

RESULTS_PATH = RESULTS_DIR / "actions.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DB_NAME = "aps_bench_actions"
EVENT_TABLE = "actions_actionevent"
ISSUER = "http://aps-bench-actions.invalid"  # fixed: tokens stay valid across server restarts

TARGET_EVENTS_PER_S = 5_000
BATCH_EVENTS = MAX_BATCH_EVENTS  # 1,000: what the SDK sends when it is busy

# The gunicorn config of the sustained and naive runs (the first of --configs). Quiet 2-core
# bench host, 8 agents posting 1,000-event batches (commit 54e7bad, ~115 us of gunicorn CPU
# per event): sync:2 13,000 events/s, sync:3 12,875, gthread:2x4 11,833 (and the worst p99 and
# the most uneven share between agents). Ingestion is CPU-bound Python, so threads mostly
# contend for the GIL. A full run re-checks sync:3 and gthread:2x4 after the main runs.
DEFAULT_CONFIG = "sync:2"
SWEEP_CONFIGS = "sync:2,sync:3,gthread:2x4"

PASSPORT_SCOPE = ["fs:*:/srv/**", "net:connect:*", "tool:*:*", "data:read:*", "gpu:use"]

# --- realistic events -----------------------------------------------------------------------

WORDS = (
    "data",
    "reports",
    "2026",
    "q3",
    "model",
    "checkpoints",
    "team7",
    "raw",
    "parquet",
    "tmp",
    "Berichte",
    "Übersicht",
    "étude",
    "logs",
    "shard-00017",
    "a",
    "very-long-directory-name-for-a-nested-dataset",
)
DENY_REASONS = (
    "no rule of the passport allows {action} on {resource}",
    "denied by rule !fs:read:/srv/data/**/secrets/**",
    "jurisdiction JP is not allowed (passport: EU, US-CA)",
    "denied by rule !net:connect:*.evil.example.com:*",
)
ALLOW_REASONS = ("", "", "allowed by rule fs:read:/srv/data/**", "allowed by rule tool:*:*")
JURISDICTIONS = ("DE", "DE", "FR", "US-CA", "NL", None, "JP")


def _path(rng: random.Random, depth: int) -> str:
    return "/srv/" + "/".join(rng.choice(WORDS) for _ in range(depth)) + f"/f{rng.randrange(10**6)}"


def _event(rng: random.Random, now: float) -> dict[str, Any]:
    """One event in the SDK's wire form (plus small details), of a realistic mix."""
    kind = rng.random()
    resource: str | None
    if kind < 0.45:  # file access, resources from short to long (up to ~400 characters)
        action = rng.choice(("fs:read", "fs:read", "fs:write"))
        resource = _path(rng, rng.choice((1, 2, 3, 5, 8, 20)))
    elif kind < 0.65:  # network, resource inside the action (resource None, as guard sends it)
        host = rng.choice(("svc3.internal.example.com", "api.example.com", "c2.evil.example.com"))
        action, resource = f"net:connect:{host}:{rng.choice((443, 22, 8080))}", None
    elif kind < 0.85:
        action = rng.choice(("tool:shell", "tool:python", "tool:git", "tool:browser"))
        resource = rng.choice(("exec", "train.py", "push", "https://example.com/docs?page=3"))
    elif kind < 0.95:
        action, resource = "data:read", f"tenant{rng.randrange(40)}/orders/{rng.randrange(10**5)}"
    else:
        action, resource = "gpu:use", None
    allowed = rng.random() < 0.8
    reason = rng.choice(ALLOW_REASONS if allowed else DENY_REASONS)
    if "{" in reason:
        reason = reason.format(action=action, resource=resource)
    if rng.random() < 0.3:
        details: dict[str, Any] = {"rule": "fs:read:/srv/**", "latency_us": rng.randrange(1, 90)}
    elif rng.random() < 0.1:
        details = {"argv": ["python", "train.py", "--epochs", "3"], "cwd": "/workspace"}
    else:
        details = {}
    return {
        "id": str(uuid.uuid4()),
        "action": action,
        "resource": resource,
        "jurisdiction": rng.choice(JURISDICTIONS),
        "decision": "allow" if allowed else "deny",
        "reason": reason,
        "at": now - rng.random() * 0.5,
        "details": details,
    }


def batch_body(rng: random.Random, count: int, heartbeat: dict[str, Any]) -> bytes:
    """A request body exactly as ActionReporter._post encodes it."""
    now = time.time()
    document = {"events": [_event(rng, now) for _ in range(count)], "heartbeat": heartbeat}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


# --- the database -------------------------------------------------------------------------------


def create_database(admin_url: str, workdir: Path) -> tuple[str, str]:
    """A fresh ``aps_bench_actions`` (dropped first if an earlier run left it); (url, version)."""
    db = prepare_database(admin_url, DB_NAME, True, workdir)
    if db.engine != "postgresql":
        raise RuntimeError("bench_actions.py needs PostgreSQL (DATABASE_URL)")
    return db.url, db.version


def postgres_settings(url: str) -> dict[str, str]:
    names = ("synchronous_commit", "shared_buffers", "wal_level", "fsync", "max_wal_size")
    with psycopg.connect(url, connect_timeout=5) as conn:
        return {
            n: str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(n))).fetchone()[0])
            for n in names
        }


def stored_events(url: str) -> tuple[int, int, int]:
    """(rows, agents with events, size of the event table with its indexes in bytes)."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows, agents = conn.execute(
            sql.SQL("SELECT count(*), count(DISTINCT agent_id) FROM {}").format(
                sql.Identifier(EVENT_TABLE)
            )
        ).fetchone()
        size = conn.execute("SELECT pg_total_relation_size(%s)", (EVENT_TABLE,)).fetchone()[0]
    return int(rows), int(agents), int(size)


def _disturbed(row: dict[str, Any]) -> bool:
    return (row["cores"].get("other") or 0) > NOISY_CORES


def compare_configs(
    main: GunicornConfig, sustained: dict[str, Any], trials: list[dict[str, Any]]
) -> dict[str, Any]:
    """Whether another config beat the one used, counting only undisturbed windows."""
    rates = {
        main.name: sustained["events_per_s"],
        **{r["config"]: r["events_per_s"] for r in trials},
    }
    quiet = {
        name: rate
        for name, rate in rates.items()
        if not _disturbed(
            sustained if name == main.name else next(r for r in trials if r["config"] == name)
        )
    }
    best = max(quiet, key=quiet.get) if quiet else None
    faster = bool(best and best != main.name and quiet[best] > 1.05 * quiet.get(main.name, 0))
    return {
        "events_per_s": rates,
        "undisturbed": sorted(quiet),
        "best_undisturbed": best,
        "another_config_faster_by_5pct": faster,
    }


# --- agents -----------------------------------------------------------------------------------


@dataclass
class Agent:
    index: int
    agent_id: str
    token: str


def create_agents(base_url: str, operator_token: str, count: int, tag: str) -> list[Agent]:
    api = Api(base_url, operator_token)
    agents = []
    for i in range(count):
        body = {"name": f"{tag}-agent-{i}", "fleet": f"{tag}-f{i % 2}", "description": "bench"}
        agent_id = api.create_agent(body)
        agents.append(Agent(i, agent_id, api.issue(agent_id, PASSPORT_SCOPE, ["EU", "US-CA"])))
    return agents


# --- load -------------------------------------------------------------------------------------


@dataclass
class Batch:
    """What the server answered to one batch."""

    sent: int
    accepted: int
    duplicates: int
    rejected: int  # per-event errors in a 200 answer
    errors: dict[str, Any]


def agent_client(server: Server, agent: Agent, batch_events: int, seed: int):
    """Agent ``agent`` posting batches of ``batch_events`` random events, as the SDK does."""
    rng = random.Random(seed * 1000 + agent.index)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"}
    heartbeat = {"epoch": 0, "host": f"bench-host-{agent.index}", "pid": 10_000 + agent.index}
    url = server.base_url + "/api/v1/actions"

    def post(sequence: int) -> Batch:
        body = batch_body(rng, batch_events, heartbeat)
        response = session.post(url, data=body, headers=headers, timeout=60)
        if response.status_code != 200:
            raise BadAnswer(f"HTTP {response.status_code}", response.text[:300])
        answer = response.json()
        errors = answer.get("errors") or {}
        return Batch(
            batch_events, int(answer["accepted"]), int(answer["duplicates"]), len(errors), errors
        )

    return post


def totals(calls: list[Call], batch_events: int) -> dict[str, int]:
    """Everything a phase posted, warm-up and tail included (what must be stored)."""
    ok = [c.result for c in calls if c.error is None]
    failed = [c for c in calls if c.error is not None]
    return {
        "batches": len(calls),
        "events_sent": sum(b.sent for b in ok),
        "accepted": sum(b.accepted for b in ok),
        "duplicates": sum(b.duplicates for b in ok),
        "rejected_events": sum(b.rejected for b in ok),
        "failed_batches": len(failed),
        "failed_events": len(failed) * batch_events,
    }


def summary(load: Load, label: str, batch_events: int, agents: int) -> dict[str, Any]:
    """Rates of the batches answered inside the window, latencies, CPU, and the totals."""
    start, window_s = load.window[0], round(load.window[1] - load.window[0], 3)
    ok = load.ok_in_window()
    accepted = sum(c.result.accepted for c in ok)
    first = sum(c.result.accepted for c in ok if c.ended < start + window_s / 2)
    per_agent = [
        sum(c.result.accepted for c in ok if c.client == a) / window_s for a in range(agents)
    ]
    latencies = sorted(c.latency_s * 1e3 for c in ok)
    cpu_us = {
        n: round(load.cores[n] / (accepted / window_s) * 1e6, 1)
        for n in ("client", "gunicorn", "postgres")
        if accepted and load.cores.get(n) is not None
    }
    rejected = [
        f"per-event errors: {json.dumps(c.result.errors)[:300]}"
        for c in load.calls
        if c.error is None and c.result.rejected
    ]
    return {
        "label": label,
        "batch_events": batch_events,
        "agents": agents,
        "warmup_s": round(start - load.started, 3),
        "window_s": window_s,
        "events_per_s": round(accepted / window_s, 1),
        "events_per_s_first_half": round(first / (window_s / 2), 1),
        "events_per_s_second_half": round((accepted - first) / (window_s / 2), 1),
        "per_agent_events_per_s": [round(v, 1) for v in per_agent],
        "per_agent_min": round(min(per_agent), 1) if per_agent else 0.0,
        "per_agent_max": round(max(per_agent), 1) if per_agent else 0.0,
        "batches_in_window": len(ok),
        "requests_per_s": round(len(ok) / window_s, 1),
        "latency_ms": {f"p{q}": round(percentile(latencies, q), 2) for q in (50, 90, 99)}
        | {"max": round(latencies[-1], 2) if latencies else 0.0},
        "cores": load.cores,
        "cpu_us_per_event": cpu_us,  # CPU time per stored event: what one event costs each side
        "total": totals(load.calls, batch_events),
        "errors": dict(Counter(c.error for c in load.calls if c.error is not None)),
        "error_samples": (load.error_samples + rejected)[:5],
    }


def run_load(
    server: Server,
    agents: list[Agent],
    *,
    label: str,
    batch_events: int,
    warmup_s: float,
    window_s: float,
    seed: int,
    quiet_wait_s: float,
) -> dict[str, Any]:
    """One client thread per agent posts batches back to back until the window ends.

    Waits up to ``quiet_wait_s`` for other processes to leave the machine alone first. Rates
    count the batches answered inside the window [warm-up end, warm-up end + window]; CPU is
    sampled at the window's edges. Batches answered during the warm-up or after the window are
    stored too (and counted in ``total``)."""
    background = wait_until_quiet(quiet_wait_s, NOISY_CORES)
    pid = server.process.pid
    load = closed_loop(
        [agent_client(server, agent, batch_events, seed) for agent in agents],
        duration=window_s,
        warmup=warmup_s,
        cpu=lambda: CpuSnapshot.take(pid, DB_NAME, postgres_writers=True, redis=True),
        pause_after_error=0.05,
    )
    return {**summary(load, label, batch_events, len(agents)), "busy_cores_before": background}


# --- SDK side ---------------------------------------------------------------------------------

Event = tuple[float, str, str, str, bool, str]


def recorded_events() -> list[Event]:
    """1,000 events as ``guard.check`` hands them to ``record()``."""
    rng = random.Random(7)
    now = time.time()
    wires = [_event(rng, now) for _ in range(1000)]
    return [
        (
            w["at"],
            w["action"],
            w["resource"],
            w["jurisdiction"],
            w["decision"] == "allow",
            w["reason"],
        )
        for w in wires
    ]


def timed_loop(function, events: list[Event], rounds: int) -> list[float]:
    """ns per call of ``function`` over each 1,000-call round."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(rounds):
        began = clock()
        for at, action, resource, jurisdiction, allowed, reason in events:
            function(at, action, resource, jurisdiction, allowed, reason)
        out.append((clock() - began) / 1000)
    return out


def single_calls_ns(record, events: list[Event]) -> list[int]:
    """100,000 single calls, each timed on its own (includes the timer's own overhead)."""
    clock = time.perf_counter_ns
    singles = []
    for i in range(100_000):
        at, action, resource, jurisdiction, allowed, reason = events[i % 1000]
        began = clock()
        record(at, action, resource, jurisdiction, allowed, reason)
        singles.append(clock() - began)
    return sorted(singles)


def encode_us_per_event(reporter: ActionReporter, events: list[Event]) -> float:
    """What the background thread spends per event: buffer -> wire dicts -> JSON body."""
    for i in range(100 * 1000):
        reporter.record(*events[i % 1000])
    began = time.perf_counter()
    for _ in range(100):
        batch = reporter._take(1000)
        json.dumps(
            {"events": batch, "heartbeat": {"epoch": 1, "host": "h", "pid": 1}},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
    return (time.perf_counter() - began) / (100 * 1000) * 1e6


def noop(at, action, resource, jurisdiction, allowed, reason) -> None:
    return None


def measure_record(calls: int, workdir: Path) -> dict[str, Any]:
    """``ActionReporter.record()`` as ``guard.check`` calls it (delivery thread not started)."""
    reporter = ActionReporter(
        "http://127.0.0.1:9/api/v1/actions",
        "bench.not-a.token",
        spill_path=workdir / "record-spill.jsonl",
        max_buffer=calls + 1,
    )
    events = recorded_events()
    rounds = calls // 1000
    timed_loop(noop, events, 50)  # warm up
    baseline = percentile(sorted(timed_loop(noop, events, max(1, rounds // 10))), 50)
    per_round = timed_loop(reporter.record, events, rounds)
    buffered = reporter.buffered
    per_round_sorted = sorted(per_round)
    mean_ns = sum(per_round) / len(per_round)
    reporter._buffer.clear()
    singles = single_calls_ns(reporter.record, events)
    reporter._buffer.clear()
    encode_us = encode_us_per_event(reporter, events)
    reporter._buffer.clear()
    reporter._session.close()  # never started, never closed: nothing is sent or spilled
    return {
        "calls": rounds * 1000,
        "buffered_after": buffered,
        "mean_ns_per_call": round(mean_ns, 1),
        "loop_baseline_ns_per_call": round(baseline, 1),
        "record_only_ns_per_call": round(mean_ns - baseline, 1),
        "calls_per_s": round(1e9 / mean_ns),
        "round_mean_ns": {
            "p50": round(percentile(per_round_sorted, 50), 1),
            "p99": round(percentile(per_round_sorted, 99), 1),
            "max": round(per_round_sorted[-1], 1),
        },
        "single_call_ns": {
            "n": len(singles),
            "p50": singles[len(singles) // 2],
            "p99": round(percentile([float(v) for v in singles], 99)),
            "p999": round(percentile([float(v) for v in singles], 99.9)),
            "max": singles[-1],
        },
        "timer_overhead_ns": timer_overhead_ns(),
        "background_encode_us_per_event": round(encode_us, 2),
        "guard_check_reference": guard_check_reference(),
    }


def guard_check_reference() -> dict[str, Any] | None:
    """guard.check p50 from the last bench_killswitch.py run, if any (for scale only)."""
    path = BASE_DIR / "bench" / "results" / "killswitch.json"
    try:
        rows = json.loads(path.read_text())["check_path"]["rows"]
        return {
            "source": "bench/results/killswitch.json",
            "guard_check_p50_us_with_reporter": rows["guard_with_reporter"]["p50_us"],
            "guard_check_p50_us_no_reporter": rows["guard_no_reporter"]["p50_us"],
        }
    except (OSError, KeyError, ValueError, TypeError):
        return None


# --- chains -----------------------------------------------------------------------------------


def timed_manage(env: dict[str, str], *args: str) -> tuple[int, str, float, float | None]:
    """Run manage.py; (exit code, output, wall seconds, peak RSS of the process in MiB).

    The peak is the process's VmHWM (a high-water mark), read every 20 ms until it exits."""
    out_path = Path(tempfile.mkstemp(prefix="aps-bench-manage-")[1])
    try:
        with out_path.open("w") as out:
            began = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=BASE_DIR,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            peak_kib: int | None = None
            while process.poll() is None:
                try:
                    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak_kib = max(peak_kib or 0, int(line.split()[1]))
                except (OSError, ValueError, IndexError):
                    pass
                time.sleep(0.02)
            wall = time.perf_counter() - began
        output = out_path.read_text(errors="replace").strip()
    finally:
        out_path.unlink(missing_ok=True)
    return process.returncode, output, wall, None if peak_kib is None else peak_kib / 1024


def verify_chains(env: dict[str, str], database_url: str, accepted: int) -> dict[str, Any]:
    code = (
        "import time; from actions.audit import create_checkpoints; "
        "from actions.transparency import sign_tree_head; "
        "t = time.perf_counter(); n = create_checkpoints(); sign_tree_head(); "
        "print(n, round(time.perf_counter() - t, 3))"
    )
    rc, output, _, _ = timed_manage(env, "shell", "-c", code)
    if rc != 0:
        raise RuntimeError(f"create_checkpoints failed:\n{output}")
    signed, checkpoint_s = output.split()[-2:]
    _, _, startup_s, _ = timed_manage(env, "shell", "-c", "pass")  # Django start-up alone
    rc, output, wall, peak = timed_manage(env, "verify_audit")
    match = re.search(r"(\d+) chain\(s\), (\d+) event\(s\), (\d+) checkpoint\(s\)", output)
    events = int(match.group(2)) if match else 0
    rows, agents, size = stored_events(database_url)
    work_s = max(1e-6, wall - startup_s)
    return {
        "checkpoints_signed": int(signed),
        "create_checkpoints_s": float(checkpoint_s),
        "verify_audit_exit_code": rc,
        "verify_audit_output": output[-2000:],
        "intact": rc == 0 and "audit log intact" in output,
        "chains": int(match.group(1)) if match else 0,
        "events_verified": events,
        "checkpoints_verified": int(match.group(3)) if match else 0,
        "verify_audit_wall_s": round(wall, 2),
        "django_startup_s": round(startup_s, 2),
        "events_verified_per_s": round(events / wall),
        "events_verified_per_s_excluding_startup": round(events / work_s),
        "verify_audit_peak_rss_mib": None if peak is None else round(peak),
        "rows_in_db": rows,
        "agents_in_db": agents,
        "accepted_by_api": accepted,
        "count_matches": rows == accepted and events == accepted,
        "event_table_bytes": size,
        "bytes_per_event": round(size / rows) if rows else None,
    }


# --- report -----------------------------------------------------------------------------------


def machine_info(pg_version: str, pg_settings: dict[str, str], redis_url: str) -> dict[str, Any]:
    return {
        **machine_basics(),
        "postgres_version": pg_version,
        "postgres_settings": pg_settings,
        "db_name": DB_NAME,
        "redis_version": redis_version(redis_url),
    }


PHASE_COLUMNS = (
    Column("phase", 36, left=True),
    Column("events/s", 8, ",.0f"),
    Column("per agent min-max", 20),
    Column("req/s", 8, ",.1f"),
    Column("p50 ms", 8, ".1f"),
    Column("p99 ms", 8, ".1f"),
    Column("errors", 7),
    Column("   cores: client  gunic  pgsql  redis  other", 44),
)


def print_phases(report: dict[str, Any]) -> None:
    info, s = report["machine"], report["settings"]
    print(f"\nAction-log ingestion benchmark  {info['timestamp']}  commit {info['git_commit']}")
    print(
        f"machine: {info['cpu_count']} cores ({info['cpu_model']}), Python {info['python']}, "
        f"PostgreSQL {info['postgres_version'].split()[0]} "
        f"(synchronous_commit={info['postgres_settings'].get('synchronous_commit')}), "
        f"Redis {info['redis_version']}; background load {report['background_busy_cores']} cores"
    )
    if (report["background_busy_cores"] or 0) > NOISY_CORES:
        print(
            "WARNING: other processes kept the machine busy before the run; see the 'other' "
            "cores column for the load during each window"
        )
    print(
        f"server: gunicorn {s['server_config_description']} ({s['server_config']}; "
        f"{s['server_config_reason']}), no Celery; {s['agents']} agents, one client thread each\n"
    )
    rows = [report["sustained"], report["naive"], *report.get("sweep", [])]
    cores = ("client", "gunicorn", "postgres", "redis", "other")
    print(
        table(
            PHASE_COLUMNS,
            [
                [
                    r["label"] + (" *" if _disturbed(r) else ""),
                    r["events_per_s"],
                    f"{r['per_agent_min']:,.0f}-{r['per_agent_max']:,.0f}",
                    r["requests_per_s"],
                    r["latency_ms"]["p50"],
                    r["latency_ms"]["p99"],
                    r["total"]["failed_batches"] + r["total"]["rejected_events"],
                    "    " + cores_cells(r["cores"], cores, 7),
                ]
                for r in rows
            ],
        )
    )
    if any(_disturbed(r) for r in rows):
        print(
            f"* other processes used > {NOISY_CORES} cores during this window: its figures "
            "understate what the registry can do"
        )


def print_rates(report: dict[str, Any]) -> None:
    main, naive = report["sustained"], report["naive"]
    cost = main["cpu_us_per_event"]
    print(
        "\nCPU per stored event (sustained): "
        + ", ".join(f"{name} {value:.0f} us" for name, value in cost.items())
        + f"; naive: gunicorn {naive['cpu_us_per_event'].get('gunicorn', 0):,.0f} us"
    )
    print(
        f"sustained: {main['events_per_s']:,.0f} events/s over {main['window_s']:g} s "
        f"(first half {main['events_per_s_first_half']:,.0f}, second half "
        f"{main['events_per_s_second_half']:,.0f}); batch of {main['batch_events']:,} "
        f"p50 {main['latency_ms']['p50']:.0f} ms, p99 {main['latency_ms']['p99']:.0f} ms"
    )
    print(
        f"batched vs one event per request: {report['ratio_batched_vs_naive']:.1f}x the events/s "
        f"({main['events_per_s']:,.0f} vs {naive['events_per_s']:,.0f} events/s); "
        f"{report['server_cpu_ratio_naive_vs_batched']}x the server CPU per event when sent "
        "one by one"
    )
    comparison = report.get("config_comparison") or {}
    if len(comparison.get("events_per_s", {})) > 1:
        best = comparison["best_undisturbed"]
        if best is None:
            verdict = "every window disturbed: no verdict"
        elif comparison["another_config_faster_by_5pct"]:
            verdict = f"{best} was > 5 % faster: consider it for DEFAULT_CONFIG"
        else:
            verdict = f"no other config was > 5 % faster than {report['settings']['server_config']}"
        listing = ", ".join(f"{k} {v:,.0f}/s" for k, v in comparison["events_per_s"].items())
        print(f"configs: {listing} -> {verdict}")


def print_chains_and_sdk(report: dict[str, Any]) -> None:
    c, r = report["chains"], report["sdk_record"]
    print(
        f"chains: verify_audit {'intact' if c['intact'] else 'FAILED'}: {c['chains']} chains, "
        f"{c['events_verified']:,} events, {c['checkpoints_verified']} checkpoints in "
        f"{c['verify_audit_wall_s']:.1f} s = {c['events_verified_per_s']:,} events/s "
        f"({c['events_verified_per_s_excluding_startup']:,}/s without Django's "
        f"{c['django_startup_s']:.1f} s start-up; peak RSS {c['verify_audit_peak_rss_mib']} MiB)"
    )
    print(
        f"        rows in DB {c['rows_in_db']:,} vs accepted {c['accepted_by_api']:,}: "
        f"{'equal' if c['count_matches'] else 'MISMATCH'}; create_checkpoints "
        f"{c['create_checkpoints_s']:.2f} s for {c['checkpoints_signed']} chains; "
        f"{c['bytes_per_event']} bytes/event on disk (table + indexes)"
    )
    ref, single = r.get("guard_check_reference"), r["single_call_ns"]
    print(
        f"SDK: ActionReporter.record() {r['mean_ns_per_call']:.0f} ns/call over "
        f"{r['calls']:,} calls ({r['record_only_ns_per_call']:.0f} ns beyond the bare loop's "
        f"{r['loop_baseline_ns_per_call']:.0f} ns; single calls p50 {single['p50']} / p99 "
        f"{single['p99']} / p99.9 {single['p999']} ns incl. ~{r['timer_overhead_ns']:.0f} ns timer)"
        + (
            f"; guard.check p50 {ref['guard_check_p50_us_no_reporter']} us without / "
            f"{ref['guard_check_p50_us_with_reporter']} us with reporter ({ref['source']})"
            if ref
            else ""
        )
    )
    print(
        f"     background thread (not on the check path): "
        f"{r['background_encode_us_per_event']:.2f} us/event to build and encode batches"
    )


def print_verdict(report: dict[str, Any]) -> None:
    t = report["pass"]
    print(
        f"\ntarget >= {TARGET_EVENTS_PER_S:,} events/s sustained: {yes(t['events_per_s'])}; "
        f"chains intact: {yes(t['chains_intact'])}; count matches: {yes(t['count_matches'])}; "
        f"no errors: {yes(t['no_errors'])}"
    )
    lines = report.get("service_problems", [])
    if lines:
        print(f"server logs: {len(lines)} error lines, first ones:")
        for line in lines[:8]:
            print(f"  {line[:200]}")
    else:
        print("server logs: no errors or tracebacks")


# --- orchestration ----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (under ~1 minute)")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument(
        "--configs",
        help="gunicorn configs: the first serves the sustained and naive runs, the others get a "
        f"short trial for comparison (default: full {SWEEP_CONFIGS}, quick {DEFAULT_CONFIG})",
    )
    parser.add_argument("--duration", type=float, help="sustained window, s (30; quick 8)")
    parser.add_argument("--keep-db", action="store_true", help=f"do not drop {DB_NAME}")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    return parser.parse_args()


def settings_of(args: argparse.Namespace, tag: str) -> dict[str, Any]:
    configs = [
        GunicornConfig.parse(c)
        for c in (args.configs or (DEFAULT_CONFIG if args.quick else SWEEP_CONFIGS)).split(",")
    ]
    return {
        "quick": args.quick,
        "agents": args.agents,
        "batch_events": BATCH_EVENTS,
        "warmup_s": 2.0,
        "window_s": args.duration or (8.0 if args.quick else 30.0),
        "trial_s": 6.0 if len(configs) > 1 else None,
        "naive_window_s": 3.0 if args.quick else 8.0,
        "quiet_wait_s": 5.0 if args.quick else 10.0,  # before each load phase
        "configs": [c.name for c in configs],
        "server_config": configs[0].name,
        "server_config_description": configs[0].describe(),
        "server_config_reason": (
            "the default" if configs[0].name == DEFAULT_CONFIG else "chosen with --configs"
        ),
        "actions_rate_limit": HIGH_RATE,
        "throttle_user": HIGH_RATE,
        "redis_prefix": tag,
        "celery": "not running (one create_checkpoints after the load)",
        "client": f"requests {requests.__version__}, one thread and session per agent, "
        "in the bench process (same cores as the server)",
    }


def load_phases(
    env: dict[str, str], operator_token: str, workdir: Path, s: dict[str, Any], tag: str
) -> tuple[dict[str, Any], list[str]]:
    """The sustained and naive runs right after the machine was found quiet, then a short
    trial of each other config, for comparison. Returns the phases and the server log errors."""
    configs = [GunicornConfig.parse(c) for c in s["configs"]]
    phase = partial(run_load, warmup_s=s["warmup_s"], quiet_wait_s=s["quiet_wait_s"])
    problems: list[str] = []
    with gunicorn(configs[0], env, workdir) as server:
        agents = create_agents(server.base_url, operator_token, s["agents"], tag)
        print(
            f"sustained {configs[0].name}: {s['warmup_s']:g} s warm-up + {s['window_s']:g} s…",
            file=sys.stderr,
        )
        sustained = phase(
            server,
            agents,
            label=f"sustained, {BATCH_EVENTS:,}/batch ({configs[0].name})",
            batch_events=BATCH_EVENTS,
            window_s=s["window_s"],
            seed=1,
        )
        print(f"naive (1 event per request): {s['naive_window_s']:g} s…", file=sys.stderr)
        naive = run_load(
            server,
            agents,
            label=f"naive, 1/request ({configs[0].name})",
            batch_events=1,
            warmup_s=1.0,
            window_s=s["naive_window_s"],
            seed=2,
            quiet_wait_s=s["quiet_wait_s"],
        )
        problems += server.problems()
    sweep = []
    for seed, config in enumerate(configs[1:], start=3):
        with gunicorn(config, env, workdir) as server:
            print(f"trial {config.name}: {s['trial_s']:g} s…", file=sys.stderr)
            row = phase(
                server,
                agents,
                label=f"trial {config.name}",
                batch_events=BATCH_EVENTS,
                window_s=s["trial_s"],
                seed=seed,
            )
            sweep.append({**row, "config": config.name})
            problems += server.problems()
    comparison = compare_configs(configs[0], sustained, sweep)
    phases = {"sustained": sustained, "naive": naive, "sweep": sweep}
    return {**phases, "config_comparison": comparison}, problems


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    """Batched vs naive: events/s, and server CPU (gunicorn + PostgreSQL) per event, which is
    not skewed when other processes take cores during one of the two windows."""
    main_rate, naive_rate = report["sustained"]["events_per_s"], report["naive"]["events_per_s"]
    server_cost = [
        sum(report[k]["cpu_us_per_event"].get(n, 0.0) for n in ("gunicorn", "postgres"))
        for k in ("sustained", "naive")
    ]
    return {
        "ratio_batched_vs_naive": round(main_rate / naive_rate, 1) if naive_rate else None,
        "server_cpu_ratio_naive_vs_batched": (
            round(server_cost[1] / server_cost[0], 1) if all(server_cost) else None
        ),
    }


def verdicts(report: dict[str, Any], phases: list[dict[str, Any]]) -> dict[str, bool]:
    no_errors = not report["service_problems"] and all(
        p["total"]["failed_batches"] == 0
        and p["total"]["rejected_events"] == 0
        and p["total"]["duplicates"] == 0
        and p["total"]["accepted"] == p["total"]["events_sent"]
        for p in phases
    )
    return {
        "events_per_s": report["sustained"]["events_per_s"] >= TARGET_EVENTS_PER_S,
        "chains_intact": report["chains"]["intact"],
        "count_matches": report["chains"]["count_matches"],
        "no_errors": no_errors,
    }


def bench(run: Run, args: argparse.Namespace) -> int:
    started = time.monotonic()
    tag = f"aps-bench-actions-{secrets.token_hex(4)}"
    run.delete_keys_at_exit(run.redis_url, [f"{tag}:*", f"{tag}-cache:*"])
    s = settings_of(args, tag)
    background = wait_until_quiet(10.0 if args.quick else 30.0, NOISY_CORES)
    print("SDK: ActionReporter.record() x 1,000,000…", file=sys.stderr)
    report: dict[str, Any] = {"sdk_record": measure_record(1_000_000, run.workdir)}
    admin_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    database_url, pg_version = create_database(admin_url, run.workdir)
    if not args.keep_db:
        run.at_exit(lambda: drop_quietly(admin_url))
    env = registry_env(
        database_url=database_url,
        redis_url=run.redis_url,
        prefix=tag,
        issuer=ISSUER,
        ACTIONS_RATE_LIMIT=HIGH_RATE,
    )
    print(f"preparing PostgreSQL database {DB_NAME} (prefix {tag})…", file=sys.stderr)
    operator_token = setup_registry(env, operator="benchactions")
    report["machine"] = machine_info(pg_version, postgres_settings(database_url), run.redis_url)
    report["background_busy_cores"] = background
    report["settings"] = s
    phases, report["service_problems"] = load_phases(env, operator_token, run.workdir, s, tag)
    report.update(phases)
    report.update(ratios(report))
    measured = [*report["sweep"], report["sustained"], report["naive"]]
    print("signing checkpoints and running verify_audit…", file=sys.stderr)
    accepted = sum(p["total"]["accepted"] for p in measured)
    report["chains"] = verify_chains(env, database_url, accepted)
    report["pass"] = verdicts(report, measured)
    report["target_events_per_s"] = TARGET_EVENTS_PER_S
    report["all_targets_met"] = all(report["pass"].values())
    report["runtime_s"] = round(time.monotonic() - started, 1)
    for part in (print_phases, print_rates, print_chains_and_sdk, print_verdict):
        part(report)
    print(f"\nruntime {report['runtime_s']} s")
    write_json(report, args.output)
    return 0 if report["all_targets_met"] else 1


def drop_quietly(admin_url: str) -> None:
    try:
        drop_database(admin_url, DB_NAME)
    except psycopg.Error as exc:
        print(f"could not drop {DB_NAME}: {exc}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    return run_bench(partial(bench, args=args), name="aps-bench-actions", keep_logs=args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
