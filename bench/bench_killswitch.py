"""Benchmark: the kill switch, end to end, against the real service.

1. **Propagation.** gunicorn + a Celery worker with beat (PostgreSQL, the machine's Redis with a
   key prefix of this run's own) and ~1,000 SDK guards in 2 processes (one shared
   RevocationWatcher per process, the intended deployment). Each guard process checks its
   targeted guards in a tight loop and notes ``time.time()`` of each guard's first refusal
   (PassportRevoked). Latency = that moment minus the moment ``POST /api/v1/killswitch``
   returned in the coordinator, for a one-agent kill, a fleet kill and a global kill (each lifted
   afterwards, and the recovery timed too). Targets: p99 <= 100 ms, max <= 250 ms.
2. **Check path.** ``guard.check`` on a 50-rule passport (allows with wildcards, some denies),
   20 distinct actions, one thread pinned to one core, with a reporter attached; p50/p99 per
   call and checks/s from 1,000-call batches — versus the naive path (verify the JWT, one Redis
   read, ``Policy(...).decide`` uncached per check). Targets: >= 100,000 checks/s, >= 20x naive.
3. **Outage.** The service and 100 guards on a private redis-server (started here, on a free
   port). Kill it: time until every guard fails closed (target <= max_staleness 2 s + 0.5 s).
   Restart it empty: time until guards resume (the Celery beat reconciliation rewrites the
   snapshot, period REVOCATION_RECONCILE_SECONDS = 10 s; target <= period + 1 s), and an agent
   revoked before the outage must stay refused throughout.

The database is a dedicated PostgreSQL database ``aps_bench_killswitch`` (not ``aps_bench``: a
global kill there would make a concurrently running bench_passports.py fail). Everything runs on
the same cores; the background load is sampled and reported.

    .venv/bin/python bench/bench_killswitch.py [--quick] [--only propagation|check|outage]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
import requests

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.errors import PassportRevoked, RevocationStateStale, ScopeDenied  # noqa: E402
from agent_passport.guard import Guard  # noqa: E402
from agent_passport.protocol import RevocationChannel  # noqa: E402
from agent_passport.rules import Policy  # noqa: E402
from agent_passport.tokens import keys_from_jwks, verify_token  # noqa: E402
from agent_passport.watcher import RevocationWatcher  # noqa: E402
from bench._server import (  # noqa: E402
    Api,
    Database,
    PrivateRedis,
    Service,
    busy_cores,
    clean_redis_keys,
    empty_redis_db,
    free_port,
    machine_basics,
    manage,
    percentile,
    policy_rules,
    prepare_database,
    redis_url_with_db,
    redis_version,
    remove_workdir,
    setup_registry,
    shield_cleanup,
    stop_leftovers,
    stop_on_sigterm,
    timer_overhead_ns,
)
from registry.devserver import ensure_redis  # noqa: E402

RESULTS_PATH = BASE_DIR / "bench" / "results" / "killswitch.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DB_NAME = "aps_bench_killswitch"
AUDIENCE = "agent-passport"
REASON = "bench_killswitch"

# The SDK defaults the targets refer to (RevocationWatcher.block_ms, Guard.max_staleness).
WATCHER_BLOCK_MS = 100
MAX_STALENESS_S = 2.0

TARGET_P99_MS = 100.0
TARGET_MAX_MS = 250.0
TARGET_CHECKS_PER_S = 100_000
TARGET_RATIO = 20.0
TARGET_STALE_MARGIN_S = 0.5
TARGET_RESUME_MARGIN_S = 1.0

GUARD_SCOPE = ["fs:*:/workspace/**", "tool:python:*", "!net:connect:*:22"]
GUARD_ACTION = "fs:read:/workspace/data.csv"
GUARD_REGION = "DE"

# Part 2: 20 distinct checks against policy_rules() (50 rules), 15 allowed and 5 denied.
CHECK_QUERIES: list[tuple[str, str | None, str]] = [
    ("fs:read", "/srv/data/team3/reports/q1.csv", "DE"),
    ("fs:read", "/srv/data/team7/model/weights.bin", "FR"),
    ("fs:read", "/srv/data/team11/a/b/c/d.parquet", "US-CA"),
    ("fs:write", "/srv/out/team2/result.json", "DE"),
    ("fs:write", "/srv/out/team5/log.txt", "US-CA"),
    ("net:connect", "svc3.internal.example.com:443", "US"),
    ("net:connect", "svc8.internal.example.com:443", "NL"),
    ("tool:shell", "exec", "DE"),
    ("tool:python", "train.py", "DE"),
    ("tool:git", "push", "US-NY"),
    ("data:read", "tenant2/orders", "DE"),
    ("data:read", "tenant4/invoices", "IE"),
    ("gpu:use", None, "DE"),
    ("proc:exec", "/usr/bin/python3", "DE"),
    ("fs:read", "/public/docs/readme.md", "US"),
    ("fs:read", "/srv/data/team1/secrets/key.pem", "DE"),  # denied: secrets
    ("net:connect", "c2.evil.example.com:443", "DE"),  # denied: evil
    ("fs:write", "/etc/passwd", "DE"),  # denied: /etc
    ("data:read", "tenant0/vip-acme", "DE"),  # denied: vip
    ("tool:shell", "exec", "JP"),  # denied: jurisdiction
]


# ==============================================================================================
# Guard processes (spawned; they talk to the coordinator over a Pipe)
# ==============================================================================================


def _outcome(guard: Guard) -> str:
    try:
        guard.check(GUARD_ACTION)
    except PassportRevoked:
        return "revoked"
    except RevocationStateStale:
        return "stale"
    except Exception as exc:
        return type(exc).__name__
    return "allowed"


def _until(
    conn: Connection, guards: list[Guard], changes: list[float], msg: dict[str, Any]
) -> None:
    """Check ``targets`` in a tight loop until each one's outcome is ``expect``.
    ``changes``: time.time() of every state swap of the watcher (appended by a listener)."""
    targets, expect, before = msg["targets"], msg["expect"], msg["before"]
    initial = Counter(_outcome(guards[i]) for i in targets)
    seen = len(changes)
    conn.send({"armed": time.time(), "initial": dict(initial)})
    pending = list(targets)
    first: dict[int, float] = {}
    unexpected: Counter[str] = Counter()
    deadline = time.monotonic() + msg["timeout"]
    sweeps = 0
    while pending and time.monotonic() < deadline:
        remaining = []
        for i in pending:
            outcome = _outcome(guards[i])
            if outcome == expect:
                first[i] = time.time()
            else:
                remaining.append(i)
                if outcome != before:
                    unexpected[outcome] += 1
        pending = remaining
        sweeps += 1
    conn.send(
        {
            "first": first,
            "missing": pending,
            "unexpected": dict(unexpected),
            "sweeps": sweeps,
            "state_swapped_at": changes[seen] if len(changes) > seen else None,
        }
    )


def _outage(conn: Connection, guards: list[Guard], msg: dict[str, Any]) -> None:
    """Check every guard in a loop through an outage. ``revoked``: guards of an agent revoked
    before the outage (must never be allowed). ``later``: guards of an agent the coordinator
    tries to revoke while Redis is down (once stale they must never be allowed again). The rest
    (live): note when each first fails closed and when it first resumes."""
    revoked = sorted(msg["revoked"])
    later = sorted(msg["later"])
    special = set(revoked) | set(later)
    live = [i for i in range(len(guards)) if i not in special]
    initial = Counter(_outcome(g) for g in guards)
    conn.send({"armed": time.time(), "initial": dict(initial)})
    stale_at: dict[int, float] = {}
    resumed_at: dict[int, float] = {}
    refused_at: dict[int, float] = {}  # later guards: first PassportRevoked after stale
    allowed_at: dict[int, float] = {}  # later guards: first allowed check after stale
    revoked_outcomes: Counter[str] = Counter()
    later_outcomes: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    deadline = time.monotonic() + msg["timeout"]
    told_stale = False
    while time.monotonic() < deadline and (
        len(resumed_at) < len(live) or len(refused_at) + len(allowed_at) < len(later)
    ):
        for i in revoked:
            revoked_outcomes[_outcome(guards[i])] += 1
        for i in later:
            if i in refused_at or i in allowed_at:
                continue
            outcome = _outcome(guards[i])
            if i not in stale_at:
                if outcome == "stale":
                    stale_at[i] = time.time()
                elif outcome != "allowed":
                    unexpected[f"later-revoked, before outage: {outcome}"] += 1
                continue
            later_outcomes[outcome] += 1
            if outcome == "revoked":
                refused_at[i] = time.time()
            elif outcome == "allowed":
                allowed_at[i] = time.time()
        for i in live:
            outcome = _outcome(guards[i])
            if i not in stale_at:
                if outcome == "stale":
                    stale_at[i] = time.time()
                elif outcome != "allowed":
                    unexpected[f"before outage: {outcome}"] += 1
            elif i not in resumed_at:
                if outcome == "allowed":
                    resumed_at[i] = time.time()
                elif outcome != "stale":
                    unexpected[f"during outage: {outcome}"] += 1
            elif outcome != "allowed":
                unexpected[f"after resuming: {outcome}"] += 1
        if not told_stale and len(stale_at) == len(live) + len(later):
            conn.send({"all_stale": time.time()})
            told_stale = True
    if not told_stale:
        conn.send({"all_stale": None})
    conn.send(
        {
            "stale_at": {i: t for i, t in stale_at.items() if i not in special},
            "resumed_at": resumed_at,
            "refused_at": refused_at,
            "allowed_at": allowed_at,
            "live": len(live),
            "revoked_outcomes": dict(revoked_outcomes),
            "later_outcomes_after_stale": dict(later_outcomes),
            "unexpected": dict(unexpected),
        }
    )


def guard_worker(conn: Connection, config: dict[str, Any]) -> None:
    """One agent process: a shared RevocationWatcher and many guards; obeys the coordinator."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when we stop
    if config.get("switch_interval"):
        sys.setswitchinterval(config["switch_interval"])
    logging.basicConfig(
        filename=config["log_path"],
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    keys = keys_from_jwks(config["jwks"])
    watcher = RevocationWatcher(
        config["redis_url"], channel=RevocationChannel(config["prefix"])
    ).start()
    ready = watcher.wait_until_ready(15)
    changes: list[float] = []  # first listener: called right after the watcher swaps its state
    watcher.add_listener(lambda state: changes.append(time.time()))
    started = time.perf_counter()
    guards = [
        Guard(
            token,
            keys=keys,
            issuer=config["issuer"],
            audience=AUDIENCE,
            watcher=watcher,
            jurisdiction=GUARD_REGION,
        )
        for token in config["tokens"]
    ]
    conn.send({"ready": ready, "guards": len(guards), "load_s": time.perf_counter() - started})
    try:
        while True:
            msg = conn.recv()
            command = msg["cmd"]
            if command == "stop":
                break
            if command == "until":
                _until(conn, guards, changes, msg)
            elif command == "outage":
                _outage(conn, guards, msg)
            elif command == "probe":
                indices = msg.get("indices")
                chosen = range(len(guards)) if indices is None else indices
                skip = set(msg.get("skip", ()))
                conn.send(dict(Counter(_outcome(guards[i]) for i in chosen if i not in skip)))
    except (EOFError, OSError):
        pass
    finally:
        watcher.stop()


@dataclass
class GuardProcess:
    process: Any
    conn: Connection
    count: int
    load_s: float = 0.0

    def send(self, msg: dict[str, Any]) -> None:
        self.conn.send(msg)

    def recv(self, timeout: float = 60.0) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"guard process {self.process.pid} did not answer in {timeout} s")
        return self.conn.recv()


@contextmanager
def guard_processes(
    tokens: list[str], nproc: int, config: dict[str, Any], workdir: Path, tag: str
) -> Iterator[list[GuardProcess]]:
    """Spawn ``nproc`` guard processes; token ``g`` goes to process ``g % nproc``."""
    ctx = mp.get_context("spawn")
    procs: list[GuardProcess] = []
    try:
        for w in range(nproc):
            mine = tokens[w::nproc]
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=guard_worker,
                args=(
                    child,
                    {**config, "tokens": mine, "log_path": str(workdir / f"{tag}-guards-{w}.log")},
                ),
                daemon=True,
            )
            process.start()
            child.close()
            procs.append(GuardProcess(process, parent, len(mine)))
        for proc in procs:
            hello = proc.recv(120)
            if not hello["ready"]:
                raise RuntimeError("a guard process's watcher found no revocation snapshot")
            proc.load_s = hello["load_s"]
        yield procs
    finally:
        for proc in procs:
            try:
                proc.send({"cmd": "stop"})
            except (OSError, ValueError):
                pass
        for proc in procs:
            proc.process.join(5)
            if proc.process.is_alive():
                proc.process.terminate()
                proc.process.join(5)


# ==============================================================================================
# Setting up the population of agents and passports
# ==============================================================================================


@dataclass
class Population:
    agents: list[str]  # agent ids
    fleets: list[str]  # fleet labels; agent a is in fleets[a % len(fleets)]
    tokens: list[str]  # passport g belongs to agent g // per_agent
    per_agent: int

    def agent_of(self, g: int) -> int:
        return g // self.per_agent

    def guards_of_agent(self, a: int) -> list[int]:
        return list(range(a * self.per_agent, (a + 1) * self.per_agent))

    def guards_of_fleet(self, f: int) -> list[int]:
        n = len(self.fleets)
        return [g for g in range(len(self.tokens)) if self.agent_of(g) % n == f]


def create_population(
    api: Api, *, agents: int, per_agent: int, fleets: int, tag: str, concurrency: int = 8
) -> Population:
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = api.new_session()
        return local.session

    fleet_names = [f"{tag}-f{f}" for f in range(fleets)]

    def make_agent(a: int) -> str:
        body = {
            "name": f"{tag}-agent-{a}",
            "fleet": fleet_names[a % fleets],
            "description": "bench_killswitch",
        }
        return api.post("/api/v1/agents", body, 201, session())["id"]

    def issue(g: int) -> str:
        body = {
            "agent": agent_ids[g // per_agent],
            "scope": GUARD_SCOPE,
            "jurisdiction": ["EU"],
            "ttl_seconds": 3600,
        }
        return api.post("/api/v1/passports", body, 201, session())["token"]

    with ThreadPoolExecutor(concurrency) as pool:
        agent_ids = list(pool.map(make_agent, range(agents)))
        tokens = list(pool.map(issue, range(agents * per_agent)))
    return Population(agent_ids, fleet_names, tokens, per_agent)


def lift_leftovers(api: Api) -> int:
    """Lift global kills left active by an interrupted earlier run (they would stop everyone)."""
    lifted = 0
    page = api.get("/api/v1/killswitch", {"active": "true", "target_type": "all"})
    for revocation in page.get("results", []):
        if revocation["reason"].startswith(REASON):
            api.post(f"/api/v1/killswitch/{revocation['id']}/lift", {"reason": REASON}, 200)
            lifted += 1
    return lifted


# ==============================================================================================
# Part 1: propagation
# ==============================================================================================


def stats_ms(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "min": round(ordered[0], 2),
        "p50": round(percentile(ordered, 50), 2),
        "p90": round(percentile(ordered, 90), 2),
        "p99": round(percentile(ordered, 99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
    }


def split_targets(targets: list[int], nproc: int) -> dict[int, list[int]]:
    by_worker: dict[int, list[int]] = {}
    for g in targets:
        by_worker.setdefault(g % nproc, []).append(g // nproc)
    return by_worker


def timed_change(
    procs: list[GuardProcess],
    targets: list[int],
    *,
    expect: str,
    before: str,
    request: Callable[[], dict[str, Any]],
    timeout: float,
    published_at: Callable[[], float | None] | None = None,
) -> dict[str, Any]:
    """Arm the guard loops on ``targets``, make the API call, and collect when each guard
    reached ``expect``. Latencies in ms from the moment the call returned (and was sent).

    Breakdown: ``publish_ms`` (the stream entry's XADD time, from its id), ``swap_ms`` (each
    process's watcher swapping its state), ``after_swap_ms`` (guard refusal after its process's
    swap: the check loop's share)."""
    nproc = len(procs)
    by_worker = split_targets(targets, nproc)
    for w, local in by_worker.items():
        procs[w].send(
            {
                "cmd": "until",
                "targets": local,
                "expect": expect,
                "before": before,
                "timeout": timeout,
            }
        )
    initial: Counter[str] = Counter()
    for w in by_worker:
        initial.update(procs[w].recv()["initial"])
    sent = time.time()
    answer = request()
    returned = time.time()
    firsts: list[float] = []
    swaps: list[float] = []
    after_swap: list[float] = []
    missing = 0
    unexpected: Counter[str] = Counter()
    sweeps = []
    for w in by_worker:
        result = procs[w].recv(timeout + 30)
        firsts.extend(result["first"].values())
        swapped = result["state_swapped_at"]
        if swapped is not None:
            swaps.append(swapped)
            after_swap.extend((t - swapped) * 1e3 for t in result["first"].values())
        missing += len(result["missing"])
        unexpected.update(result["unexpected"])
        sweeps.append(result["sweeps"])
    published = published_at() if published_at is not None else None
    return {
        "publish_ms": None if published is None else published - returned * 1e3,
        "swap_ms": [(t - returned) * 1e3 for t in swaps],
        "swap_after_xadd_ms": [] if published is None else [t * 1e3 - published for t in swaps],
        "after_swap_ms": after_swap,
        "answer": answer,
        "request_ms": (returned - sent) * 1e3,
        "from_return_ms": [(t - returned) * 1e3 for t in firsts],
        "from_sent_ms": [(t - sent) * 1e3 for t in firsts],
        "missing": missing,
        "initial": dict(initial),
        "initial_ok": set(initial) <= {before},
        "unexpected": dict(unexpected),
        "sweeps": sweeps,
    }


def probe_others(procs: list[GuardProcess], targets: list[int]) -> dict[str, int]:
    """One check of every guard that is not a target (they must all still be allowed)."""
    by_worker = split_targets(targets, len(procs))
    totals: Counter[str] = Counter()
    for w, proc in enumerate(procs):
        proc.send({"cmd": "probe", "indices": None, "skip": by_worker.get(w, [])})
    for proc in procs:
        totals.update(proc.recv())
    return dict(totals)


@dataclass
class Scenario:
    name: str
    kind: str  # agent | fleet | all
    rounds: int


def last_publish_ms(redis_url: str, prefix: str) -> Callable[[], float | None]:
    """Reads the newest revocation stream entry's id: its first part is the XADD time in ms."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stream = RevocationChannel(prefix).stream_key

    def read() -> float | None:
        last = client.xrevrange(stream, count=1)
        return float(last[0][0].split("-")[0]) if last else None

    return read


def run_propagation(
    api: Api,
    pop: Population,
    procs: list[GuardProcess],
    scenarios: list[Scenario],
    published_at: Callable[[], float | None],
) -> tuple[list[dict[str, Any]], list[int]]:
    active: list[int] = []  # revocation ids to lift if we stop half-way
    rows = []
    kill_timeout, lift_timeout = 5.0, 10.0
    for scenario in scenarios:
        kill_lat, kill_sent, lift_lat, post_ms = [], [], [], []
        publish, swap, swap_after_xadd, after_swap = [], [], [], []
        row: dict[str, Any] = {
            "scenario": scenario.name,
            "rounds": scenario.rounds,
            "missing": 0,
            "unexpected": {},
            "bad_initial": 0,
            "collateral": {},
            "lift_missing": 0,
        }
        for r in range(scenario.rounds):
            if scenario.kind == "agent":
                a = r * 7 % len(pop.agents)  # different agents, spread over fleets
                target, targets = {"agent": pop.agents[a]}, pop.guards_of_agent(a)
            elif scenario.kind == "fleet":
                f = r % len(pop.fleets)
                target, targets = {"fleet": pop.fleets[f]}, pop.guards_of_fleet(f)
            else:
                target, targets = {"all": True}, list(range(len(pop.tokens)))
            reason = f"{REASON} {scenario.name} round {r}"
            kill = timed_change(
                procs,
                targets,
                expect="revoked",
                before="allowed",
                request=lambda t=target, why=reason: api.post(
                    "/api/v1/killswitch", {"target": t, "reason": why}, 201
                ),
                timeout=kill_timeout,
                published_at=published_at,
            )
            revocation_id = kill["answer"]["id"]
            if kill["publish_ms"] is not None:
                publish.append(kill["publish_ms"])
            swap += kill["swap_ms"]
            swap_after_xadd += kill["swap_after_xadd_ms"]
            after_swap += kill["after_swap_ms"]
            active.append(revocation_id)
            kill_lat += kill["from_return_ms"]
            kill_sent += kill["from_sent_ms"]
            post_ms.append(kill["request_ms"])
            row["missing"] += kill["missing"]
            row["bad_initial"] += 0 if kill["initial_ok"] else 1
            for key, value in kill["unexpected"].items():
                row["unexpected"][key] = row["unexpected"].get(key, 0) + value
            if scenario.kind != "all":
                others = probe_others(procs, targets)
                wrong = {k: v for k, v in others.items() if k != "allowed"}
                for key, value in wrong.items():
                    row["collateral"][key] = row["collateral"].get(key, 0) + value
            lift = timed_change(
                procs,
                targets,
                expect="allowed",
                before="revoked",
                request=lambda rid=revocation_id: api.post(
                    f"/api/v1/killswitch/{rid}/lift", {"reason": f"{REASON} lift"}, 200
                ),
                timeout=lift_timeout,
            )
            active.remove(revocation_id)
            lift_lat += lift["from_return_ms"]
            row["lift_missing"] += lift["missing"]
        row.update(
            guards_per_round=len(kill_lat) // max(1, scenario.rounds),
            kill_from_return_ms=stats_ms(kill_lat),
            kill_from_sent_ms=stats_ms(kill_sent),
            breakdown_ms={
                "redis_xadd_vs_post_return": stats_ms(publish),
                "watcher_swap_vs_post_return": stats_ms(swap),
                "watcher_swap_after_xadd": stats_ms(swap_after_xadd),
                "refusal_after_swap": stats_ms(after_swap),
            },
            post_killswitch_ms=stats_ms(post_ms),
            lift_recovery_ms=stats_ms(lift_lat),
            raw_kill_from_return_ms=[round(v, 2) for v in kill_lat],
        )
        k = row["kill_from_return_ms"]
        row["pass"] = bool(
            k.get("n")
            and k["p99"] <= TARGET_P99_MS
            and k["max"] <= TARGET_MAX_MS
            and row["missing"] == 0
            and not row["unexpected"]
            and not row["collateral"]
            and row["bad_initial"] == 0
        )
        rows.append(row)
        print(
            f"  {scenario.name}: p50 {k.get('p50')} ms  p99 {k.get('p99')} ms  "
            f"max {k.get('max')} ms  ({k.get('n')} refusals, {row['missing']} missing)",
            file=sys.stderr,
        )
    return rows, active


# ==============================================================================================
# Part 2: check path (spawned, pinned to one core)
# ==============================================================================================


class ListReporter:
    """A minimal reporter: appends to a list (used if agent_passport.reporter is missing)."""

    heartbeat = None  # the guard sets its own

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def heartbeat_now(self) -> None:
        pass

    def record(self, at, action, resource, jurisdiction, allowed, reason) -> None:
        self.events.append((at, action, resource, jurisdiction, allowed, reason))


def _measure(
    op: Callable[[int], object],
    *,
    sample_calls: int,
    batch: int,
    seconds: float,
    between: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Per-call timings (perf_counter_ns around each call) for the percentiles, then timed
    batches of ``batch`` calls for the throughput. ``between`` runs between batches, untimed."""
    now = time.perf_counter_ns
    samples: list[int] = []
    i = 0
    while len(samples) < sample_calls:
        for _ in range(batch):
            start = now()
            op(i)
            samples.append(now() - start)
            i += 1
        if between is not None:
            between()
    batch_ns: list[int] = []
    end = now() + int(seconds * 1e9)
    while now() < end:
        start = now()
        for j in range(i, i + batch):
            op(j)
        batch_ns.append(now() - start)
        i += batch
        if between is not None:
            between()
    samples.sort()
    per_call_batches = sorted(b / batch for b in batch_ns)
    calls = len(batch_ns) * batch
    return {
        "sampled_calls": len(samples),
        "throughput_calls": calls,
        "batch_size": batch,
        "per_s": round(calls / (sum(batch_ns) / 1e9), 1),
        "p50_us": round(percentile([float(s) for s in samples], 50) / 1e3, 3),
        "p90_us": round(percentile([float(s) for s in samples], 90) / 1e3, 3),
        "p99_us": round(percentile([float(s) for s in samples], 99) / 1e3, 3),
        "p999_us": round(percentile([float(s) for s in samples], 99.9) / 1e3, 3),
        "max_us": round(samples[-1] / 1e3, 3),
        "batch_mean_us_p50": round(percentile(per_call_batches, 50) / 1e3, 3),
        "batch_mean_us_max": round(per_call_batches[-1] / 1e3, 3),
    }


def check_worker(conn: Connection, config: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cpu = config["cpu"]
    try:
        os.sched_setaffinity(0, {cpu})  # before any thread starts: they inherit it
    except (AttributeError, OSError):
        cpu = None
    logging.basicConfig(filename=config["log_path"], level=logging.WARNING)
    try:
        conn.send(_check_path(config, cpu))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _check_path(config: dict[str, Any], cpu: int | None) -> dict[str, Any]:
    token, issuer, quick = config["token"], config["issuer"], config["quick"]
    keys = keys_from_jwks(config["jwks"])
    channel = RevocationChannel(config["prefix"])
    watcher = RevocationWatcher(config["redis_url"], channel=channel).start()
    if not watcher.wait_until_ready(15):
        raise RuntimeError("no revocation snapshot")
    spill = Path(config["workdir"]) / "reporter-spill.jsonl"
    try:
        from agent_passport.reporter import ActionReporter

        def make_reporter() -> Any:
            # Not started: record() only appends to its deque; a fresh one per 1,000-call batch
            # stands in for the delivery thread draining it (delivery is not measured here).
            return ActionReporter(config["actions_url"], token, spill_path=spill)

        reporter_kind = (
            "agent_passport.reporter.ActionReporter (pointed at the running server's "
            "/api/v1/actions, delivery thread not started; replaced by a fresh one between "
            "1,000-call batches, untimed)"
        )
    except ImportError:

        def make_reporter() -> Any:
            return ListReporter()

        reporter_kind = "in-memory list-append reporter (agent_passport.reporter missing)"

    guard = Guard(token, keys=keys, issuer=issuer, audience=AUDIENCE, watcher=watcher)
    guard.reporter = make_reporter()
    queries = CHECK_QUERIES
    n = len(queries)
    allowed = 0
    for action, resource, region in queries:  # warm the decision cache; count the mix
        try:
            guard.check(action, resource, region)
            allowed += 1
        except ScopeDenied:
            pass

    def check(i: int) -> None:
        action, resource, region = queries[i % n]
        try:
            guard.check(action, resource, region)
        except ScopeDenied:
            pass

    def swap_reporter() -> None:
        guard.reporter = make_reporter()

    bare = Guard(token, keys=keys, issuer=issuer, audience=AUDIENCE, watcher=watcher)

    def check_bare(i: int) -> None:
        action, resource, region = queries[i % n]
        try:
            bare.check(action, resource, region)
        except ScopeDenied:
            pass

    client = redis.Redis.from_url(config["redis_url"])
    snapshot_key = channel.snapshot_key

    def naive(i: int) -> None:
        action, resource, region = queries[i % n]
        claims = verify_token(token, keys, issuer=issuer, audience=AUDIENCE)
        client.hgetall(snapshot_key)
        Policy.from_claims(claims).decide(action, resource, region)

    seconds = 1.0 if quick else 4.0
    samples = 50_000 if quick else 300_000
    rows = {
        "guard_with_reporter": _measure(
            check, sample_calls=samples, batch=1000, seconds=seconds, between=swap_reporter
        ),
        "guard_no_reporter": _measure(
            check_bare, sample_calls=samples // 2, batch=1000, seconds=seconds / 2
        ),
        "naive": _measure(
            naive, sample_calls=500 if quick else 3000, batch=100, seconds=seconds / 2
        ),
    }
    watcher.stop()
    return {
        "cpu": cpu,
        "reporter": reporter_kind,
        "rules": len(guard.policy.rules),
        "distinct_checks": n,
        "allowed_in_mix": allowed,
        "denied_in_mix": n - allowed,
        "timer_overhead_ns": timer_overhead_ns(),
        "rows": rows,
    }


def run_check_path(
    api: Api, service: Service, machine_redis: str, prefix: str, workdir: Path, quick: bool
) -> dict[str, Any]:
    agent = api.post(
        "/api/v1/agents", {"name": "check-path", "description": "bench_killswitch"}, 201
    )
    issued = api.post(
        "/api/v1/passports",
        {
            "agent": agent["id"],
            "scope": policy_rules(),
            "jurisdiction": ["EU", "US"],
            "ttl_seconds": 3600,
        },
        201,
    )
    jwks = requests.get(service.base_url + "/.well-known/jwks.json", timeout=10).json()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    config = {
        "token": issued["token"],
        "jwks": jwks,
        "issuer": service.base_url,
        "redis_url": machine_redis,
        "prefix": prefix,
        "actions_url": service.base_url + "/api/v1/actions",
        "workdir": str(workdir),
        "log_path": str(workdir / "check-path.log"),
        "cpu": max(os.sched_getaffinity(0)),
        "quick": quick,
    }
    process = ctx.Process(target=check_worker, args=(child, config), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(300):
            raise RuntimeError("the check-path process did not finish")
        result = parent.recv()
    finally:
        process.join(10)
        if process.is_alive():
            process.terminate()
    if "error" in result:
        raise RuntimeError(f"check path failed: {result['error']}")
    rows = result["rows"]
    guard, naive = rows["guard_with_reporter"], rows["naive"]
    result["ratio_throughput"] = round(guard["per_s"] / naive["per_s"], 1)
    result["ratio_p50_latency"] = round(naive["p50_us"] / guard["p50_us"], 1)
    result["targets"] = {"checks_per_s": TARGET_CHECKS_PER_S, "ratio_vs_naive": TARGET_RATIO}
    result["pass"] = {
        "checks_per_s": guard["per_s"] >= TARGET_CHECKS_PER_S,
        "ratio_vs_naive": result["ratio_throughput"] >= TARGET_RATIO,
    }
    return result


# ==============================================================================================
# Part 3: outage
# ==============================================================================================


def run_outage(
    base_env: dict[str, str],
    token: str,
    workdir: Path,
    prefix: str,
    reconcile_seconds: float,
    agents: int,
    per_agent: int,
    nproc: int,
) -> dict[str, Any]:
    private = PrivateRedis(workdir)
    service: Service | None = None
    try:
        private.start()
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = {
            **base_env,
            "REDIS_URL": private.url,
            "CELERY_BROKER_URL": private.url,
            "PASSPORT_ISSUER": base_url,
            "REVOCATION_RECONCILE_SECONDS": str(reconcile_seconds),
        }
        manage(env, "reconcile_revocations")
        print(
            f"  private redis-server on port {private.port}; starting the service…", file=sys.stderr
        )
        service = Service(env, base_url).start(workdir, "outage")
        service.wait_ready()
        api = Api(base_url, token)
        tag = f"{prefix}-out"
        pop = create_population(api, agents=agents, per_agent=per_agent, fleets=1, tag=tag)
        jwks = requests.get(base_url + "/.well-known/jwks.json", timeout=10).json()
        config = {"jwks": jwks, "issuer": base_url, "redis_url": private.url, "prefix": prefix}
        with guard_processes(pop.tokens, nproc, config, workdir, "outage") as procs:
            # An agent revoked before the outage: its guards must never come back.
            victim, later = pop.guards_of_agent(0), pop.guards_of_agent(1)
            kill = timed_change(
                procs,
                victim,
                expect="revoked",
                before="allowed",
                request=lambda: api.post(
                    "/api/v1/killswitch",
                    {"target": {"agent": pop.agents[0]}, "reason": f"{REASON} outage victim"},
                    201,
                ),
                timeout=5.0,
            )
            lift_ids = [kill["answer"]["id"]]
            victims, laters = split_targets(victim, nproc), split_targets(later, nproc)
            timeout = MAX_STALENESS_S + reconcile_seconds + 40
            for w, proc in enumerate(procs):
                proc.send(
                    {
                        "cmd": "outage",
                        "revoked": victims.get(w, []),
                        "later": laters.get(w, []),
                        "timeout": timeout,
                    }
                )
            initial: Counter[str] = Counter()
            for proc in procs:
                initial.update(proc.recv()["initial"])
            time.sleep(0.5)
            print("  killing redis-server…", file=sys.stderr)
            offsets = service.log_offsets()
            stopped = private.kill()
            all_stale = [proc.recv(MAX_STALENESS_S + 15)["all_stale"] for proc in procs]
            # While Redis is down: try to kill another agent through the API.
            sent = time.time()
            try:
                response = api.session.post(
                    base_url + "/api/v1/killswitch",
                    json={"target": {"agent": pop.agents[1]}, "reason": f"{REASON} during outage"},
                    timeout=30,
                )
                during = {"status": response.status_code, "body": response.text[:300]}
                if response.status_code == 201:
                    lift_ids.append(response.json()["id"])
            except requests.RequestException as exc:
                during = {"status": None, "body": f"{type(exc).__name__}: {exc}"[:300]}
            during["seconds"] = round(time.time() - sent, 3)
            print("  restarting redis-server empty…", file=sys.stderr)
            restarted = private.start()
            results = [proc.recv(timeout + 30) for proc in procs]
            after: Counter[str] = Counter()
            for w, proc in enumerate(procs):
                groups = (
                    ("revoked before", victims.get(w, []), None),
                    ("revoked during", laters.get(w, []), None),
                    ("others", None, victims.get(w, []) + laters.get(w, [])),
                )
                for label, indices, skip in groups:
                    proc.send({"cmd": "probe", "indices": indices, "skip": skip or []})
                    for key, value in proc.recv().items():
                        after[f"{label}: {key}"] += value
        for revocation_id in lift_ids:
            api.post(f"/api/v1/killswitch/{revocation_id}/lift", {"reason": f"{REASON} lift"}, 200)
        stale_s = [t - stopped for r in results for t in r["stale_at"].values()]
        resume_s = [t - restarted for r in results for t in r["resumed_at"].values()]
        later_refused_s = [t - restarted for r in results for t in r["refused_at"].values()]
        later_allowed = sum(len(r["allowed_at"]) for r in results)
        live = sum(r["live"] for r in results)
        revoked_outcomes: Counter[str] = Counter()
        later_outcomes: Counter[str] = Counter()
        unexpected: Counter[str] = Counter()
        for r in results:
            revoked_outcomes.update(r["revoked_outcomes"])
            later_outcomes.update(r["later_outcomes_after_stale"])
            unexpected.update(r["unexpected"])
        stale_stats = stats_ms([v * 1e3 for v in stale_s])
        resume_stats = stats_ms([v * 1e3 for v in resume_s])
        stale_target = (MAX_STALENESS_S + TARGET_STALE_MARGIN_S) * 1e3
        resume_target = (reconcile_seconds + TARGET_RESUME_MARGIN_S) * 1e3
        violations = revoked_outcomes.get("allowed", 0)
        others = len(pop.tokens) - len(victim) - len(later)
        during_ok = during["status"] == 201
        after_ok = (
            after["revoked before: revoked"] == len(victim)
            and after["others: allowed"] == others
            and after["revoked during: revoked" if during_ok else "revoked during: allowed"]
            == len(later)
        )
        problems_before = service.problems(until=offsets)
        problems_after = service.problems(since=offsets)
        celery_log = service.logs["celery"].read_text(errors="replace")
        return {
            "guards": len(pop.tokens),
            "processes": nproc,
            "live_guards": live,
            "revoked_guards": len(victim),
            "initial": dict(initial),
            "redis_port": private.port,
            "reconcile_seconds": reconcile_seconds,
            "fail_closed_ms": stale_stats,
            "all_stale_after_ms": [
                None if t is None else round((t - stopped) * 1e3, 1) for t in all_stale
            ],
            "resume_ms": resume_stats,
            "stale_missing": live - len(stale_s),
            "resume_missing": live - len(resume_s),
            "revoked_checks_during_outage": dict(revoked_outcomes),
            "revoked_allowed_violations": violations,
            "revoke_during_outage": {
                **during,
                "guards": len(later),
                "checks_after_stale": dict(later_outcomes),
                "refused_after_restart_ms": stats_ms([v * 1e3 for v in later_refused_s]),
                "allowed_after_stale": later_allowed,
            },
            "unexpected": dict(unexpected),
            "after_recovery": dict(after),
            "reconcile_tasks_succeeded": sum(
                1
                for line in celery_log.splitlines()
                if "killswitch.tasks.reconcile_revocations[" in line and " succeeded " in line
            ),
            "targets_ms": {"fail_closed_max": stale_target, "resume_max": resume_target},
            "pass": {
                "fail_closed": bool(
                    stale_stats.get("n") == live and stale_stats["max"] <= stale_target
                ),
                "resume": bool(
                    resume_stats.get("n") == live and resume_stats["max"] <= resume_target
                ),
                "nothing_revoked_comes_back": violations == 0
                and after_ok
                and not (during_ok and later_allowed),
            },
            "service_problems": problems_before,
            "service_log_lines_after_redis_kill": {k: len(v) for k, v in problems_after.items()},
        }
    finally:
        if service is not None:
            service.stop()
        private.stop()


# ==============================================================================================
# Report
# ==============================================================================================


def machine_info(db: Database, redis_url: str) -> dict[str, Any]:
    return {
        **machine_basics(),
        "db_engine": db.engine,
        "db_version": db.version,
        "db_name": db.name,
        "redis_version": redis_version(redis_url),
    }


def findings(report: dict[str, Any]) -> list[str]:
    """Observations outside the targets that an operator should know about."""
    notes = []
    during = report.get("outage", {}).get("revoke_during_outage")
    if during and during["status"] != 201:
        notes.append(
            f"POST /api/v1/killswitch while Redis is down answered HTTP {during['status']} "
            f"({during['body'][:120]}) instead of recording the revocation for a later push "
            "(see the outage service log: the DRF throttle reads the Redis cache first)"
        )
    return notes


def yes(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_report(report: dict[str, Any]) -> None:
    info, s = report["machine"], report["settings"]
    print()
    print(f"Kill-switch benchmark  {info['timestamp']}  commit {info['git_commit']}")
    print(
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"{info['db_engine']} {info['db_version']}, Redis {info['redis_version']}; "
        f"gunicorn gthread {s['gunicorn_workers']}x{s['gunicorn_threads']}, celery worker "
        f"--beat (concurrency 1), reconcile every {s['reconcile_seconds']:g} s"
    )
    bg = report["background_busy_cores"]
    print(f"Background load before the run: {bg} busy cores (1 s sample)")
    if "propagation" in report:
        p = report["propagation"]
        print()
        print(
            f"1. Propagation: {p['guards']} guards in {p['processes']} processes "
            f"({p['guards_per_process']} each, one shared watcher per process, block_ms "
            f"{WATCHER_BLOCK_MS}); {p['agents']} agents x {p['per_agent']} passports, "
            f"{p['fleets']} fleets"
        )
        print(
            f"   latency from POST /api/v1/killswitch returning to each targeted guard's first "
            f"refusal; targets p99 <= {TARGET_P99_MS:g} ms, max <= {TARGET_MAX_MS:g} ms"
        )
        header = (
            f"   {'scenario':<12}{'rounds':>7}{'guards':>8}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'max ms':>9}{'min ms':>9}{'POST ms':>9}{'lift p50/max ms':>17}{'miss':>6}  result"
        )
        print(header)
        print("   " + "-" * (len(header) - 3))
        for row in p["scenarios"]:
            k, lift = row["kill_from_return_ms"], row["lift_recovery_ms"]
            print(
                f"   {row['scenario']:<12}{row['rounds']:>7}{row['guards_per_round']:>8}"
                f"{k.get('p50', 0):>9.1f}{k.get('p99', 0):>9.1f}{k.get('max', 0):>9.1f}"
                f"{k.get('min', 0):>9.1f}{row['post_killswitch_ms'].get('p50', 0):>9.1f}"
                f"{lift.get('p50', 0):>9.1f}/{lift.get('max', 0):<7.1f}{row['missing']:>6}  "
                f"{yes(row['pass'])}"
            )
            extra = {
                key: row[key] for key in ("unexpected", "collateral", "bad_initial") if row[key]
            }
            if extra or row["lift_missing"]:
                print(f"      problems: {extra} lift_missing={row['lift_missing']}")
        print(
            "   (min < 0: the push to Redis happens before the HTTP answer is sent, so a guard "
            "can refuse before the coordinator sees the POST return)"
        )
        print(
            "   where the time goes (p50 / max ms): XADD in Redis relative to the POST returning "
            "| watcher swaps its state after the XADD | guard refuses after the swap"
        )
        for row in p["scenarios"]:
            b = row["breakdown_ms"]
            pub, swap, after = (
                b["redis_xadd_vs_post_return"],
                b["watcher_swap_after_xadd"],
                b["refusal_after_swap"],
            )
            print(
                f"   {row['scenario']:<12} XADD {pub.get('p50', 0):>6.1f} / "
                f"{pub.get('max', 0):<6.1f}"
                f"  swap after XADD {swap.get('p50', 0):>5.1f} / {swap.get('max', 0):<6.1f}"
                f"  refusal after swap {after.get('p50', 0):>5.1f} / {after.get('max', 0):.1f}"
            )
        print("   (XADD times come from stream ids: 1 ms resolution; all on one clock)")
    if "check_path" in report:
        c = report["check_path"]
        rows = c["rows"]
        print()
        print(
            f"2. Check path: 1 thread pinned to CPU {c['cpu']}, {c['rules']}-rule passport, "
            f"{c['distinct_checks']} distinct checks ({c['allowed_in_mix']} allowed, "
            f"{c['denied_in_mix']} denied)"
        )
        print(f"   reporter: {c['reporter']}")
        header = f"   {'path':<46}{'checks/s':>12}{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}"
        print(header)
        print("   " + "-" * (len(header) - 3))
        names = {
            "guard_with_reporter": "guard.check + reporter",
            "guard_no_reporter": "guard.check, no reporter",
            "naive": "naive: verify_token + HGETALL + Policy()",
        }
        for key, label in names.items():
            row = rows[key]
            print(
                f"   {label:<46}{row['per_s']:>12,.0f}{row['p50_us']:>9.2f}{row['p99_us']:>9.2f}"
                f"{row['p999_us']:>10.2f}"
            )
        print(
            f"   guard vs naive: {c['ratio_throughput']:.1f}x throughput, "
            f"{c['ratio_p50_latency']:.1f}x p50 latency; targets >= {TARGET_CHECKS_PER_S:,} "
            f"checks/s: {yes(c['pass']['checks_per_s'])}, >= {TARGET_RATIO:g}x: "
            f"{yes(c['pass']['ratio_vs_naive'])}"
        )
        print(f"   (per-call timings include ~{c['timer_overhead_ns']:.0f} ns of timer overhead)")
    if "outage" in report:
        o = report["outage"]
        print()
        print(
            f"3. Outage: private redis-server (port {o['redis_port']}), {o['guards']} guards in "
            f"{o['processes']} processes, {o['revoked_guards']} of them belong to an agent "
            f"revoked before the outage"
        )
        header = f"   {'measure':<52}{'p50':>9}{'max':>9}{'target':>10}  result"
        print(header)
        print("   " + "-" * (len(header) - 3))
        f, r = o["fail_closed_ms"], o["resume_ms"]
        t = o["targets_ms"]
        print(
            f"   {'Redis killed -> every live guard fails closed (s)':<52}"
            f"{f.get('p50', 0) / 1e3:>9.2f}{f.get('max', 0) / 1e3:>9.2f}"
            f"{t['fail_closed_max'] / 1e3:>9.1f}s  {yes(o['pass']['fail_closed'])}"
        )
        print(
            f"   {'Redis back (empty) -> guards resume (s)':<52}"
            f"{r.get('p50', 0) / 1e3:>9.2f}{r.get('max', 0) / 1e3:>9.2f}"
            f"{t['resume_max'] / 1e3:>9.1f}s  {yes(o['pass']['resume'])}"
        )
        d = o["revoke_during_outage"]
        refused = d["refused_after_restart_ms"]
        print(
            f"   {'agent killed via API while Redis is down (HTTP ' + str(d['status']) + ')':<52}"
            + (
                f"{refused.get('p50', 0) / 1e3:>9.2f}{refused.get('max', 0) / 1e3:>9.2f}"
                "   (s from restart until its guards refuse)"
                if refused.get("n")
                else f"   answer: {d['body'][:80]}"
            )
        )
        print(
            "   guards of the agent revoked before the outage, checks during it: "
            f"{o['revoked_checks_during_outage']}"
        )
        print(f"   one check of every guard after recovery: {o['after_recovery']}")
        print(
            f"   -> nothing revoked came back: {yes(o['pass']['nothing_revoked_comes_back'])}; "
            f"error lines logged by the service after the kill (expected: lost broker/Redis "
            f"connections): {o['service_log_lines_after_redis_kill']}"
        )
        if o["unexpected"] or o["stale_missing"] or o["resume_missing"]:
            print(
                f"   problems: unexpected {o['unexpected']}, never stale {o['stale_missing']}, "
                f"never resumed {o['resume_missing']}"
            )
    problems = report.get("service_problems", {})
    lines = [line for group in problems.values() for line in group]
    print()
    for note in report.get("findings", []):
        print(f"Finding: {note}")
    if lines:
        print(f"Service logs: {len(lines)} error lines, first ones:")
        for line in lines[:8]:
            print(f"  {line[:200]}")
    else:
        print("Service logs: no errors or tracebacks")


# ==============================================================================================
# Orchestration
# ==============================================================================================


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (under ~1 minute)")
    parser.add_argument("--only", choices=["propagation", "check", "outage"])
    parser.add_argument("--processes", type=int, default=2, help="guard processes")
    parser.add_argument("--guards", type=int, help="guards in total (default 1000, quick 200)")
    parser.add_argument("--per-agent", type=int, default=4, help="passports per agent")
    parser.add_argument("--fleets", type=int, default=5)
    parser.add_argument("--reconcile-seconds", type=float, default=10.0)
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="sys.setswitchinterval in the guard processes (diagnosis; default Python's 5 ms)",
    )
    parser.add_argument("--fresh-db", action="store_true", help=f"drop and recreate {DB_NAME}")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    parts = [args.only] if args.only else ["propagation", "check", "outage"]
    guards = args.guards or (200 if args.quick else 1000)
    agents = max(1, guards // args.per_agent)
    guards = agents * args.per_agent
    rounds = (5, 2, 1) if args.quick else (30, 5, 5)
    outage_agents = 10 if args.quick else 25
    prefix = f"aps-bench-{secrets.token_hex(4)}"
    settings: dict[str, Any] = {
        "quick": args.quick,
        "parts": parts,
        "redis_prefix": prefix,
        "reconcile_seconds": args.reconcile_seconds,
        "gunicorn_workers": 2,
        "gunicorn_threads": 4,
        "celery": "worker --beat --concurrency 1",
        "watcher_block_ms": WATCHER_BLOCK_MS,
        "max_staleness_s": MAX_STALENESS_S,
        "guards": guards,
        "processes": args.processes,
        "agents": agents,
        "per_agent": args.per_agent,
        "fleets": args.fleets,
        "rounds": {"one_agent": rounds[0], "fleet": rounds[1], "global": rounds[2]},
        "outage_guards": outage_agents * args.per_agent,
        "guard_scope": GUARD_SCOPE,
        "guard_action": GUARD_ACTION,
        "guard_process_switch_interval_s": args.switch_interval or sys.getswitchinterval(),
    }
    started = time.monotonic()
    background = busy_cores(1.0)
    workdir = Path(tempfile.mkdtemp(prefix="aps-bench-ks-"))
    machine_redis, redis_process = ensure_redis(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    cache_prefix = f"{prefix}-cache"
    broker_url: str | None = None
    service: Service | None = None
    report: dict[str, Any] = {}
    failed = False
    try:
        db = prepare_database(
            os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), DB_NAME, args.fresh_db, workdir
        )
        broker_db = empty_redis_db(machine_redis)
        broker_url = redis_url_with_db(machine_redis, broker_db)
        settings["celery_broker_db"] = broker_db
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env.update(
            DATABASE_URL=db.url,
            REDIS_URL=machine_redis,
            CELERY_BROKER_URL=broker_url,
            CACHE_KEY_PREFIX=cache_prefix,
            REVOCATION_REDIS_PREFIX=prefix,
            REVOCATION_RECONCILE_SECONDS=str(args.reconcile_seconds),
            THROTTLE_USER="100000000/second",  # a short window keeps the history small
            PASSPORT_ISSUER=base_url,
            PASSPORT_AUDIENCE=AUDIENCE,
            LOG_LEVEL="WARNING",
            DEBUG="false",
        )
        print(f"preparing {db.engine} database {db.name} (prefix {prefix})…", file=sys.stderr)
        token = setup_registry(env)
        manage(env, "reconcile_revocations")  # the snapshot exists before any agent starts
        report["machine"] = machine_info(db, machine_redis)
        report["settings"] = settings
        report["background_busy_cores"] = background
        service_problems: dict[str, list[str]] = {}
        if "propagation" in parts or "check" in parts:
            service = Service(env, base_url).start(workdir, "main")
            service.wait_ready()
            api = Api(base_url, token)
            if lifted := lift_leftovers(api):
                print(f"  lifted {lifted} global kill(s) left by an earlier run", file=sys.stderr)
            if "propagation" in parts:
                print(f"creating {agents} agents x {args.per_agent} passports…", file=sys.stderr)
                pop = create_population(
                    api, agents=agents, per_agent=args.per_agent, fleets=args.fleets, tag=prefix
                )
                jwks = requests.get(base_url + "/.well-known/jwks.json", timeout=10).json()
                config = {
                    "jwks": jwks,
                    "issuer": base_url,
                    "redis_url": machine_redis,
                    "prefix": prefix,
                    "switch_interval": args.switch_interval,
                }
                print(f"starting {args.processes} guard processes…", file=sys.stderr)
                scenarios = [
                    Scenario("one agent", "agent", rounds[0]),
                    Scenario("fleet", "fleet", rounds[1]),
                    Scenario("global", "all", rounds[2]),
                ]
                with guard_processes(pop.tokens, args.processes, config, workdir, "prop") as procs:
                    active: list[int] = []
                    try:
                        rows, active = run_propagation(
                            api, pop, procs, scenarios, last_publish_ms(machine_redis, prefix)
                        )
                    finally:
                        for revocation_id in active:
                            api.post(
                                f"/api/v1/killswitch/{revocation_id}/lift",
                                {"reason": f"{REASON} cleanup"},
                                200,
                            )
                    load_s = [round(p.load_s, 3) for p in procs]
                report["propagation"] = {
                    "guards": len(pop.tokens),
                    "processes": args.processes,
                    "guards_per_process": [p.count for p in procs],
                    "guard_load_s": load_s,
                    "agents": len(pop.agents),
                    "per_agent": args.per_agent,
                    "fleets": len(pop.fleets),
                    "targets_ms": {"p99": TARGET_P99_MS, "max": TARGET_MAX_MS},
                    "scenarios": rows,
                    "pass": all(row["pass"] for row in rows),
                }
            if "check" in parts:
                print("measuring the check path (1 pinned core)…", file=sys.stderr)
                report["check_path"] = run_check_path(
                    api, service, machine_redis, prefix, workdir, args.quick
                )
            service_problems.update({f"main {k}": v for k, v in service.problems().items()})
            service.stop()
            service = None
        if "outage" in parts:
            print("outage: private redis-server, service and guards…", file=sys.stderr)
            report["outage"] = run_outage(
                env,
                token,
                workdir,
                prefix,
                args.reconcile_seconds,
                outage_agents,
                args.per_agent,
                args.processes,
            )
            service_problems.update(
                {f"outage {k}": v for k, v in report["outage"].pop("service_problems").items()}
            )
        report["service_problems"] = service_problems
        report["runtime_s"] = round(time.monotonic() - started, 1)
        verdicts = []
        if "propagation" in report:
            verdicts.append(report["propagation"]["pass"])
        if "check_path" in report:
            verdicts += list(report["check_path"]["pass"].values())
        if "outage" in report:
            verdicts += list(report["outage"]["pass"].values())
        report["all_targets_met"] = all(verdicts)
        report["findings"] = findings(report)
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
        if service is not None:
            service.stop()
        stop_leftovers()
        keys = [(machine_redis, [f"{prefix}:*", f"{cache_prefix}:*"])]
        if broker_url is not None:
            keys.append((broker_url, ["_kombu*", "celery*", "unacked*", "*reply.celery.pidbox*"]))
        clean_redis_keys(keys)
        if redis_process is not None:
            redis_process.terminate()
        remove_workdir(workdir, keep=args.keep_logs or failed)


if __name__ == "__main__":
    sys.exit(main())
