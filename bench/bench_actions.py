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
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg import sql

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.reporter import MAX_BATCH_EVENTS, ActionReporter  # noqa: E402
from bench._server import (  # noqa: E402
    Api,
    clean_redis_keys,
    drop_database,
    free_port,
    gunicorn_command,
    machine_basics,
    machine_cpu_seconds,
    percentile,
    problems_in,
    process_cpu,
    redis_version,
    remove_workdir,
    setup_registry,
    shield_cleanup,
    start_logged,
    stop_group,
    stop_leftovers,
    stop_on_sigterm,
    timer_overhead_ns,
    wait_healthy,
    wait_until_quiet,
    with_database,
)
from registry.devserver import ensure_redis  # noqa: E402

RESULTS_PATH = BASE_DIR / "bench" / "results" / "actions.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DB_NAME = "aps_bench_actions"
EVENT_TABLE = "actions_actionevent"
AUDIENCE = "agent-passport"
ISSUER = "http://aps-bench-actions.invalid"  # fixed: tokens stay valid across server restarts
# DRF's throttles keep every request of the window in one cached list; a one-second window
# never limits and keeps that list short (see bench_passports.py).
HIGH_RATE = "100000000/second"

TARGET_EVENTS_PER_S = 5_000
NOISY_CORES = 0.3  # CPU of other processes during a window above which it counts as disturbed
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


# --- CPU accounting from /proc ----------------------------------------------------------------


@dataclass
class CpuSnapshot:
    """CPU seconds so far of: this (client) process, gunicorn (master + workers), PostgreSQL
    (the bench database's backends plus the server's own writer processes), Redis, machine."""

    at: float
    client: float
    groups: dict[str, dict[str, float]]
    machine: float | None

    @classmethod
    def take(cls, server_pid: int | None) -> CpuSnapshot:
        groups: dict[str, dict[str, float]] = {"gunicorn": {}, "postgres": {}, "redis": {}}
        if server_pid is not None:
            try:
                path = Path(f"/proc/{server_pid}/task/{server_pid}/children")
                for pid in [str(server_pid), *path.read_text().split()]:
                    groups["gunicorn"][pid] = process_cpu(pid)
            except OSError:
                pass
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                title = (proc / "cmdline").read_bytes()
                if title.startswith(b"postgres: "):
                    # our database's backends, and the writers (WAL, checkpoints) without a
                    # client address; other databases' backends are not ours
                    if f" {DB_NAME} ".encode() in title or b"(" not in title:
                        groups["postgres"][proc.name] = process_cpu(proc.name)
                elif title.startswith(b"redis-server"):
                    groups["redis"][proc.name] = process_cpu(proc.name)
            except OSError:
                continue  # ended meanwhile
        return cls(time.monotonic(), time.process_time(), groups, machine_cpu_seconds())

    def cores_since(self, before: CpuSnapshot) -> dict[str, float | None]:
        elapsed = self.at - before.at
        if elapsed <= 0:
            return {}
        cores: dict[str, float | None] = {"client": (self.client - before.client) / elapsed}
        for name, now in self.groups.items():
            then = before.groups.get(name, {})
            used = sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items())
            cores[name] = used / elapsed if now else None
        machine = None
        if self.machine is not None and before.machine is not None:
            machine = (self.machine - before.machine) / elapsed
            cores["other"] = max(0.0, machine - sum(v for v in cores.values() if v is not None))
        cores["machine"] = machine
        return {k: None if v is None else round(v, 2) for k, v in cores.items()}


# --- the database -------------------------------------------------------------------------------


def create_database(admin_url: str) -> tuple[str, str]:
    """A fresh ``aps_bench_actions`` (dropped first if an earlier run left it); (url, version)."""
    name = sql.Identifier(DB_NAME)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return with_database(admin_url, DB_NAME), version


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


# --- gunicorn ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GunicornConfig:
    worker_class: str
    workers: int
    threads: int

    @classmethod
    def parse(cls, text: str) -> GunicornConfig:
        """``gthread:2x4`` (workers x threads) or ``sync:3`` (workers)."""
        match = re.fullmatch(r"(sync|gthread):(\d+)(?:x(\d+))?", text.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"bad gunicorn config {text!r} (gthread:2x4, sync:3)")
        kind, workers, threads = match.group(1), int(match.group(2)), int(match.group(3) or 1)
        if kind == "sync" and threads != 1:
            raise argparse.ArgumentTypeError("sync workers have no threads (sync:3)")
        return cls(kind, workers, threads)

    @property
    def name(self) -> str:
        if self.worker_class == "sync":
            return f"sync:{self.workers}"
        return f"gthread:{self.workers}x{self.threads}"

    def describe(self) -> str:
        if self.worker_class == "sync":
            return f"sync, {self.workers} workers"
        return f"gthread, {self.workers} workers x {self.threads} threads"


@dataclass
class Server:
    config: GunicornConfig
    process: subprocess.Popen
    base_url: str
    log_path: Path

    @property
    def actions_url(self) -> str:
        return self.base_url + "/api/v1/actions"

    def problems(self) -> list[str]:
        return problems_in(self.log_path)


@contextmanager
def gunicorn(config: GunicornConfig, env: dict[str, str], workdir: Path) -> Iterator[Server]:
    port = free_port()
    log_path = workdir / f"gunicorn-{config.name.replace(':', '-')}.log"
    args = gunicorn_command(port, config.workers, config.threads, config.worker_class)
    process = start_logged(args, env, log_path)
    server = Server(config, process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_healthy(process, server.base_url, log_path, timeout=60)
        yield server
    finally:
        stop_group(process)


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
        agent_id = api.post("/api/v1/agents", body, 201)["id"]
        passport = {
            "agent": agent_id,
            "scope": PASSPORT_SCOPE,
            "jurisdiction": ["EU", "US-CA"],
            "ttl_seconds": 3600,
        }
        agents.append(Agent(i, agent_id, api.post("/api/v1/passports", passport, 201)["token"]))
    return agents


# --- load -------------------------------------------------------------------------------------


@dataclass
class Batch:
    agent: int
    done_at: float  # time.monotonic() when the answer arrived
    latency_s: float
    sent: int
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # per-event errors in a 200 answer
    error: str | None = None  # non-200 answer or transport error


@dataclass
class LoadResult:
    label: str
    batch_events: int
    agents: int
    warmup_s: float
    window_s: float
    batches: list[Batch] = field(default_factory=list)
    cores: dict[str, float | None] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)

    def in_window(self, start: float, end: float) -> list[Batch]:
        return [b for b in self.batches if start <= b.done_at < end]

    def summary(self, window_start: float) -> dict[str, Any]:
        end = window_start + self.window_s
        inside = self.in_window(window_start, end)
        ok = [b for b in inside if b.error is None]
        accepted = sum(b.accepted for b in ok)
        half = window_start + self.window_s / 2
        first = sum(b.accepted for b in ok if b.done_at < half)
        per_agent = [
            sum(b.accepted for b in ok if b.agent == a) / self.window_s for a in range(self.agents)
        ]
        latencies = sorted(b.latency_s * 1e3 for b in ok)
        errors = Counter(b.error for b in self.batches if b.error is not None)
        return {
            "label": self.label,
            "batch_events": self.batch_events,
            "agents": self.agents,
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
            "events_per_s": round(accepted / self.window_s, 1),
            "events_per_s_first_half": round(first / (self.window_s / 2), 1),
            "events_per_s_second_half": round((accepted - first) / (self.window_s / 2), 1),
            "per_agent_events_per_s": [round(v, 1) for v in per_agent],
            "per_agent_min": round(min(per_agent), 1) if per_agent else 0.0,
            "per_agent_max": round(max(per_agent), 1) if per_agent else 0.0,
            "batches_in_window": len(ok),
            "requests_per_s": round(len(ok) / self.window_s, 1),
            "latency_ms": {
                "p50": round(percentile(latencies, 50), 2),
                "p90": round(percentile(latencies, 90), 2),
                "p99": round(percentile(latencies, 99), 2),
                "max": round(latencies[-1], 2) if latencies else 0.0,
            },
            "cores": self.cores,
            # CPU time per stored event: what one event costs each side
            "cpu_us_per_event": {
                name: round(self.cores[name] / (accepted / self.window_s) * 1e6, 1)
                for name in ("client", "gunicorn", "postgres")
                if accepted and self.cores.get(name) is not None
            },
            # everything this phase posted, warm-up and tail included (what must be stored)
            "total": {
                "batches": len(self.batches),
                "events_sent": sum(b.sent for b in self.batches if b.error is None),
                "accepted": sum(b.accepted for b in self.batches),
                "duplicates": sum(b.duplicates for b in self.batches),
                "rejected_events": sum(b.rejected for b in self.batches),
                "failed_batches": sum(errors.values()),
                "failed_events": sum(b.sent for b in self.batches if b.error is not None),
            },
            "errors": dict(errors),
            "error_samples": self.error_samples[:5],
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
    quiet_wait_s: float = 0.0,
) -> dict[str, Any]:
    """One client thread per agent posts batches back to back until the window ends.

    Waits up to ``quiet_wait_s`` for other processes to leave the machine alone first. Rates
    count the batches answered inside the window [warm-up end, warm-up end + window]; CPU is
    sampled at the window's edges. Batches answered during the warm-up or after the window are
    stored too (and counted in ``total``)."""
    background = wait_until_quiet(quiet_wait_s, NOISY_CORES) if quiet_wait_s > 0 else None
    result = LoadResult(label, batch_events, len(agents), warmup_s, window_s)
    lock = threading.Lock()
    stop = threading.Event()
    start = time.monotonic()
    window_start = start + warmup_s
    window_end = window_start + window_s

    def agent_loop(agent: Agent) -> None:
        rng = random.Random(seed * 1000 + agent.index)
        session = requests.Session()
        headers = {"Authorization": f"Bearer {agent.token}", "Content-Type": "application/json"}
        heartbeat = {"epoch": 0, "host": f"bench-host-{agent.index}", "pid": 10_000 + agent.index}
        try:
            while not stop.is_set() and time.monotonic() < window_end:
                body = batch_body(rng, batch_events, heartbeat)
                began = time.monotonic()
                batch = Batch(agent.index, began, 0.0, batch_events)
                try:
                    response = session.post(
                        server.actions_url, data=body, headers=headers, timeout=60
                    )
                    if response.status_code == 200:
                        answer = response.json()
                        batch.accepted = int(answer["accepted"])
                        batch.duplicates = int(answer["duplicates"])
                        batch.rejected = len(answer.get("errors") or {})
                        if batch.rejected:
                            with lock:
                                result.error_samples.append(
                                    f"per-event errors: {json.dumps(answer['errors'])[:300]}"
                                )
                    else:
                        batch.error = f"HTTP {response.status_code}"
                        with lock:
                            result.error_samples.append(
                                f"HTTP {response.status_code}: {response.text[:300]}"
                            )
                except requests.RequestException as exc:
                    batch.error = type(exc).__name__
                    with lock:
                        result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
                batch.done_at = time.monotonic()
                batch.latency_s = batch.done_at - began
                with lock:
                    result.batches.append(batch)
                if batch.error is not None:
                    time.sleep(0.05)  # do not spin on a broken server
        finally:
            session.close()

    threads = [
        threading.Thread(target=agent_loop, args=(a,), name=f"agent-{a.index}", daemon=True)
        for a in agents
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(max(0.0, window_start - time.monotonic()))
        before = CpuSnapshot.take(server.process.pid)
        time.sleep(max(0.0, window_end - time.monotonic()))
        after = CpuSnapshot.take(server.process.pid)
        result.cores = after.cores_since(before)
        for thread in threads:
            thread.join(timeout=120)
    finally:
        stop.set()
    return {**result.summary(window_start), "busy_cores_before": background}


# --- SDK side ---------------------------------------------------------------------------------


def measure_record(calls: int, workdir: Path) -> dict[str, Any]:
    """``ActionReporter.record()`` as ``guard.check`` calls it (delivery thread not started)."""
    reporter = ActionReporter(
        "http://127.0.0.1:9/api/v1/actions",
        "bench.not-a.token",
        spill_path=workdir / "record-spill.jsonl",
        max_buffer=calls + 1,
    )
    rng = random.Random(7)
    now = time.time()
    events = []
    for _ in range(1000):
        wire = _event(rng, now)
        events.append(
            (
                wire["at"],
                wire["action"],
                wire["resource"],
                wire["jurisdiction"],
                wire["decision"] == "allow",
                wire["reason"],
            )
        )
    record = reporter.record

    def noop(at, action, resource, jurisdiction, allowed, reason):
        return None

    def timed_loop(function, rounds: int) -> list[float]:
        """ns per call of ``function`` over each 1,000-call round."""
        clock = time.perf_counter_ns
        out = []
        for _ in range(rounds):
            began = clock()
            for at, action, resource, jurisdiction, allowed, reason in events:
                function(at, action, resource, jurisdiction, allowed, reason)
            out.append((clock() - began) / 1000)
        return out

    rounds = calls // 1000
    timed_loop(noop, 50)  # warm up
    baseline = sorted(timed_loop(noop, max(1, rounds // 10)))
    per_round = timed_loop(record, rounds)
    buffered = reporter.buffered
    per_round_sorted = sorted(per_round)
    mean_ns = sum(per_round) / len(per_round)
    # single calls, each timed on its own (includes the timer's own overhead)
    reporter._buffer.clear()
    clock = time.perf_counter_ns
    singles = []
    for i in range(100_000):
        at, action, resource, jurisdiction, allowed, reason = events[i % 1000]
        began = clock()
        record(at, action, resource, jurisdiction, allowed, reason)
        singles.append(clock() - began)
    singles.sort()
    # what the background thread spends per event: buffer -> wire dicts -> JSON body
    reporter._buffer.clear()
    for i in range(100 * 1000):
        record(*events[i % 1000])
    began = time.perf_counter()
    for _ in range(100):
        batch = reporter._take(1000)
        json.dumps(
            {"events": batch, "heartbeat": {"epoch": 1, "host": "h", "pid": 1}},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
    encode_us = (time.perf_counter() - began) / (100 * 1000) * 1e6
    reporter._buffer.clear()
    reporter._session.close()  # never started, never closed: nothing is sent or spilled
    reference = guard_check_reference()
    return {
        "calls": rounds * 1000,
        "buffered_after": buffered,
        "mean_ns_per_call": round(mean_ns, 1),
        "loop_baseline_ns_per_call": round(percentile(baseline, 50), 1),
        "record_only_ns_per_call": round(mean_ns - percentile(baseline, 50), 1),
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
        "guard_check_reference": reference,
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
        "t = time.perf_counter(); n = create_checkpoints(); "
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


def _cores(row: dict[str, Any]) -> str:
    cores = row.get("cores", {})
    return "".join(
        f"{'?' if cores.get(k) is None else format(cores[k], '.2f'):>7}"
        for k in ("client", "gunicorn", "postgres", "redis", "other")
    )


def yes(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def print_report(report: dict[str, Any]) -> None:
    info, s = report["machine"], report["settings"]
    print()
    print(f"Action-log ingestion benchmark  {info['timestamp']}  commit {info['git_commit']}")
    print(
        f"machine: {info['cpu_count']} cores ({info['cpu_model']}), Python {info['python']}, "
        f"PostgreSQL {info['postgres_version'].split()[0]} "
        f"(synchronous_commit={info['postgres_settings'].get('synchronous_commit')}), "
        f"Redis {info['redis_version']}; background load {report['background_busy_cores']} cores"
    )
    if (report["background_busy_cores"] or 0) > 0.3:
        print(
            "WARNING: other processes kept the machine busy before the run; see the 'other' "
            "cores column for the load during each window"
        )
    print(
        f"server: gunicorn {s['server_config_description']} ({s['server_config']}; "
        f"{s['server_config_reason']}), no Celery; {s['agents']} agents, one client thread each"
    )
    print()
    header = (
        f"{'phase':<34}{'events/s':>10}{'per agent min-max':>20}{'req/s':>8}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'errors':>7}   cores: client  gunic  pgsql  redis  other"
    )
    print(header)
    print("-" * len(header))
    rows = [report["sustained"], report["naive"], *report.get("sweep", [])]
    disturbed = False
    for row in rows:
        errors = row["total"]["failed_batches"] + row["total"]["rejected_events"]
        per_agent = f"{row['per_agent_min']:,.0f}-{row['per_agent_max']:,.0f}"
        mark = " *" if (row["cores"].get("other") or 0) > NOISY_CORES else ""
        disturbed = disturbed or bool(mark)
        print(
            f"{row['label'] + mark:<36}{row['events_per_s']:>8,.0f}{per_agent:>20}"
            f"{row['requests_per_s']:>8,.1f}{row['latency_ms']['p50']:>8.1f}"
            f"{row['latency_ms']['p99']:>8.1f}{errors:>7}        {_cores(row)}"
        )
    if disturbed:
        print(
            f"* other processes used > {NOISY_CORES} cores during this window: its figures "
            "understate what the registry can do"
        )
    main = report["sustained"]
    print()
    cost = main["cpu_us_per_event"]
    print(
        "CPU per stored event (sustained): "
        + ", ".join(f"{name} {value:.0f} us" for name, value in cost.items())
        + f"; naive: gunicorn {report['naive']['cpu_us_per_event'].get('gunicorn', 0):,.0f} us"
    )
    print(
        f"sustained: {main['events_per_s']:,.0f} events/s over {main['window_s']:g} s "
        f"(first half {main['events_per_s_first_half']:,.0f}, second half "
        f"{main['events_per_s_second_half']:,.0f}); batch of {main['batch_events']:,} "
        f"p50 {main['latency_ms']['p50']:.0f} ms, p99 {main['latency_ms']['p99']:.0f} ms"
    )
    print(
        f"batched vs one event per request: {report['ratio_batched_vs_naive']:.1f}x the events/s "
        f"({main['events_per_s']:,.0f} vs {report['naive']['events_per_s']:,.0f} events/s); "
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
            verdict = f"no other config was > 5 % faster than {s['server_config']}"
        listing = ", ".join(f"{k} {v:,.0f}/s" for k, v in comparison["events_per_s"].items())
        print(f"configs: {listing} -> {verdict}")
    c = report["chains"]
    print(
        f"chains: verify_audit {'intact' if c['intact'] else 'FAILED'}: {c['chains']} chains, "
        f"{c['events_verified']:,} events, {c['checkpoints_verified']} checkpoints in "
        f"{c['verify_audit_wall_s']:.1f} s = {c['events_verified_per_s']:,} events/s "
        f"({c['events_verified_per_s_excluding_startup']:,}/s without Django's "
        f"{c['django_startup_s']:.1f} s start-up; peak RSS "
        f"{c['verify_audit_peak_rss_mib']} MiB)"
    )
    print(
        f"        rows in DB {c['rows_in_db']:,} vs accepted {c['accepted_by_api']:,}: "
        f"{'equal' if c['count_matches'] else 'MISMATCH'}; create_checkpoints "
        f"{c['create_checkpoints_s']:.2f} s for {c['checkpoints_signed']} chains; "
        f"{c['bytes_per_event']} bytes/event on disk (table + indexes)"
    )
    r = report["sdk_record"]
    ref = r.get("guard_check_reference")
    print(
        f"SDK: ActionReporter.record() {r['mean_ns_per_call']:.0f} ns/call over "
        f"{r['calls']:,} calls ({r['record_only_ns_per_call']:.0f} ns beyond the bare loop's "
        f"{r['loop_baseline_ns_per_call']:.0f} ns; single calls p50 "
        f"{r['single_call_ns']['p50']} / p99 {r['single_call_ns']['p99']} / p99.9 "
        f"{r['single_call_ns']['p999']} ns incl. ~{r['timer_overhead_ns']:.0f} ns timer)"
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
    t = report["pass"]
    print()
    print(
        f"target >= {TARGET_EVENTS_PER_S:,} events/s sustained: {yes(t['events_per_s'])}; "
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


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    configs = [
        GunicornConfig.parse(c)
        for c in (args.configs or (DEFAULT_CONFIG if args.quick else SWEEP_CONFIGS)).split(",")
    ]
    window_s = args.duration or (8.0 if args.quick else 30.0)
    warmup_s = 2.0
    trial_s = 6.0
    naive_s = 3.0 if args.quick else 8.0
    record_calls = 1_000_000
    quiet_wait_s = 5.0 if args.quick else 10.0  # before each load phase, for other processes
    tag = f"aps-bench-actions-{secrets.token_hex(4)}"
    cache_prefix = f"{tag}-cache"
    admin_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="aps-bench-actions-"))
    machine_redis, redis_process = ensure_redis(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    database_created = False
    failed = False
    report: dict[str, Any] = {}
    try:
        background = wait_until_quiet(10.0 if args.quick else 30.0, NOISY_CORES)
        print("SDK: ActionReporter.record() x 1,000,000…", file=sys.stderr)
        report["sdk_record"] = measure_record(record_calls, workdir)
        database_url, pg_version = create_database(admin_url)
        database_created = True
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=machine_redis,
            CACHE_KEY_PREFIX=cache_prefix,
            REVOCATION_REDIS_PREFIX=tag,
            THROTTLE_USER=HIGH_RATE,
            ACTIONS_RATE_LIMIT=HIGH_RATE,
            PASSPORT_ISSUER=ISSUER,
            PASSPORT_AUDIENCE=AUDIENCE,
            LOG_LEVEL="WARNING",
            DEBUG="false",
        )
        print(f"preparing PostgreSQL database {DB_NAME} (prefix {tag})…", file=sys.stderr)
        operator_token = setup_registry(env, operator="benchactions")
        report["machine"] = machine_info(pg_version, postgres_settings(database_url), machine_redis)
        report["background_busy_cores"] = background
        problems: list[str] = []
        # The sustained and naive runs come first, right after the machine was found quiet;
        # the other configs then get a short trial each, for comparison.
        main_config, alternatives = configs[0], configs[1:]
        report["settings"] = {
            "quick": args.quick,
            "agents": args.agents,
            "batch_events": BATCH_EVENTS,
            "warmup_s": warmup_s,
            "window_s": window_s,
            "trial_s": trial_s if alternatives else None,
            "naive_window_s": naive_s,
            "configs": [c.name for c in configs],
            "server_config": main_config.name,
            "server_config_description": main_config.describe(),
            "server_config_reason": (
                "the default" if main_config.name == DEFAULT_CONFIG else "chosen with --configs"
            ),
            "actions_rate_limit": HIGH_RATE,
            "throttle_user": HIGH_RATE,
            "redis_prefix": tag,
            "celery": "not running (one create_checkpoints after the load)",
            "client": f"requests {requests.__version__}, one thread and session per agent, "
            "in the bench process (same cores as the server)",
        }
        with gunicorn(main_config, env, workdir) as server:
            agents = create_agents(server.base_url, operator_token, args.agents, tag)
            print(
                f"sustained {main_config.name}: {warmup_s:g} s warm-up + {window_s:g} s…",
                file=sys.stderr,
            )
            report["sustained"] = run_load(
                server,
                agents,
                label=f"sustained, {BATCH_EVENTS:,}/batch ({main_config.name})",
                batch_events=BATCH_EVENTS,
                warmup_s=warmup_s,
                window_s=window_s,
                seed=1,
                quiet_wait_s=quiet_wait_s,
            )
            print(f"naive (1 event per request): {naive_s:g} s…", file=sys.stderr)
            report["naive"] = run_load(
                server,
                agents,
                label=f"naive, 1/request ({main_config.name})",
                batch_events=1,
                warmup_s=1.0,
                window_s=naive_s,
                seed=2,
                quiet_wait_s=quiet_wait_s,
            )
            problems += server.problems()
        sweep: list[dict[str, Any]] = []
        for seed, config in enumerate(alternatives, start=3):
            with gunicorn(config, env, workdir) as server:
                print(f"trial {config.name}: {trial_s:g} s…", file=sys.stderr)
                row = run_load(
                    server,
                    agents,
                    label=f"trial {config.name}",
                    batch_events=BATCH_EVENTS,
                    warmup_s=warmup_s,
                    window_s=trial_s,
                    seed=seed,
                    quiet_wait_s=quiet_wait_s,
                )
                row["config"] = config.name
                sweep.append(row)
                problems += server.problems()
        report["sweep"] = sweep
        report["config_comparison"] = compare_configs(main_config, report["sustained"], sweep)
        report["service_problems"] = problems
        main_rate = report["sustained"]["events_per_s"]
        naive_rate = report["naive"]["events_per_s"]
        report["ratio_batched_vs_naive"] = round(main_rate / naive_rate, 1) if naive_rate else None
        # the same comparison in server CPU per event (gunicorn + PostgreSQL): not skewed when
        # other processes take cores during one of the two windows
        server_cost = [
            sum(report[k]["cpu_us_per_event"].get(n, 0.0) for n in ("gunicorn", "postgres"))
            for k in ("sustained", "naive")
        ]
        report["server_cpu_ratio_naive_vs_batched"] = (
            round(server_cost[1] / server_cost[0], 1) if all(server_cost) else None
        )
        phases = [*sweep, report["sustained"], report["naive"]]
        accepted = sum(p["total"]["accepted"] for p in phases)
        print("signing checkpoints and running verify_audit…", file=sys.stderr)
        report["chains"] = verify_chains(env, database_url, accepted)
        no_errors = not problems and all(
            p["total"]["failed_batches"] == 0
            and p["total"]["rejected_events"] == 0
            and p["total"]["duplicates"] == 0
            and p["total"]["accepted"] == p["total"]["events_sent"]
            for p in phases
        )
        report["pass"] = {
            "events_per_s": main_rate >= TARGET_EVENTS_PER_S,
            "chains_intact": report["chains"]["intact"],
            "count_matches": report["chains"]["count_matches"],
            "no_errors": no_errors,
        }
        report["target_events_per_s"] = TARGET_EVENTS_PER_S
        report["all_targets_met"] = all(report["pass"].values())
        report["runtime_s"] = round(time.monotonic() - started, 1)
        print_report(report)
        print(f"\nruntime {report['runtime_s']} s")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"JSON: {args.output}")
        failed = not report["all_targets_met"]
        return 1 if failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up…", file=sys.stderr)
        failed = True
        return 130
    except Exception:
        failed = True
        raise
    finally:
        shield_cleanup()
        stop_leftovers()
        clean_redis_keys([(machine_redis, [f"{tag}:*", f"{cache_prefix}:*"])])
        if database_created and not args.keep_db:
            try:
                drop_database(admin_url, DB_NAME)
            except psycopg.Error as exc:
                print(f"could not drop {DB_NAME}: {exc}", file=sys.stderr)
        if redis_process is not None:
            redis_process.terminate()
        remove_workdir(workdir, keep=args.keep_logs or failed)


if __name__ == "__main__":
    sys.exit(main())
