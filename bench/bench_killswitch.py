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

    .venv/bin/python bench/bench_killswitch.py [--quick] [--only propagation|check|outage] ...

Options: ``--quick`` (200 guards, 5/2/1 rounds, 40 outage guards, shorter check-path runs),
``--only propagation|check|outage`` (one part), ``--processes N`` (guard processes;
2), ``--guards N`` (in total; 1000, quick 200), ``--per-agent N`` (passports per agent; 4),
``--fleets N`` (5), ``--reconcile-seconds S`` (REVOCATION_RECONCILE_SECONDS of the service; 10),
``--switch-interval S`` (sys.setswitchinterval in the guard processes, for diagnosis),
``--fresh-db`` (drop and recreate aps_bench_killswitch), ``--keep-logs`` (keep the work
directory), ``--output PATH`` (bench/results/killswitch.json).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
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
from bench.harness.machine import busy_cores, machine_basics, pin_to_core  # noqa: E402
from bench.harness.report import RESULTS_DIR, Column, table, write_json, yes  # noqa: E402
from bench.harness.run import Run, run_bench  # noqa: E402
from bench.harness.servers import (  # noqa: E402
    AUDIENCE,
    Api,
    Database,
    PrivateRedis,
    Service,
    empty_redis_db,
    free_port,
    manage,
    prepare_database,
    redis_url_with_db,
    redis_version,
    registry_env,
    setup_registry,
)
from bench.harness.stats import percentile, summary, timer_overhead_ns  # noqa: E402
from bench.harness.workload import policy_rules  # noqa: E402

RESULTS_PATH = RESULTS_DIR / "killswitch.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DB_NAME = "aps_bench_killswitch"
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


@dataclass
class OutageLog:
    """What a guard process saw of each guard through an outage (time.time() of each first)."""

    stale_at: dict[int, float] = field(default_factory=dict)
    resumed_at: dict[int, float] = field(default_factory=dict)
    refused_at: dict[int, float] = field(default_factory=dict)  # later: PassportRevoked, stale
    allowed_at: dict[int, float] = field(default_factory=dict)  # later: allowed after stale
    revoked_outcomes: Counter[str] = field(default_factory=Counter)
    later_outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)

    def later(self, i: int, outcome: str) -> None:
        """A guard of the agent revoked while Redis is down: once stale, never allowed again."""
        if i not in self.stale_at:
            if outcome == "stale":
                self.stale_at[i] = time.time()
            elif outcome != "allowed":
                self.unexpected[f"later-revoked, before outage: {outcome}"] += 1
            return
        self.later_outcomes[outcome] += 1
        if outcome == "revoked":
            self.refused_at[i] = time.time()
        elif outcome == "allowed":
            self.allowed_at[i] = time.time()

    def live(self, i: int, outcome: str) -> None:
        """Any other guard: allowed, then stale (fails closed), then allowed again."""
        if i not in self.stale_at:
            if outcome == "stale":
                self.stale_at[i] = time.time()
            elif outcome != "allowed":
                self.unexpected[f"before outage: {outcome}"] += 1
        elif i not in self.resumed_at:
            if outcome == "allowed":
                self.resumed_at[i] = time.time()
            elif outcome != "stale":
                self.unexpected[f"during outage: {outcome}"] += 1
        elif outcome != "allowed":
            self.unexpected[f"after resuming: {outcome}"] += 1


def _outage(conn: Connection, guards: list[Guard], msg: dict[str, Any]) -> None:
    """Check every guard in a loop through an outage. ``revoked``: guards of an agent revoked
    before the outage (must never be allowed). ``later``: guards of an agent the coordinator
    tries to revoke while Redis is down (once stale they must never be allowed again). The rest
    (live): note when each first fails closed and when it first resumes."""
    revoked, later = sorted(msg["revoked"]), sorted(msg["later"])
    special = set(revoked) | set(later)
    live = [i for i in range(len(guards)) if i not in special]
    conn.send({"armed": time.time(), "initial": dict(Counter(_outcome(g) for g in guards))})
    log = OutageLog()
    deadline = time.monotonic() + msg["timeout"]
    told_stale = False
    while time.monotonic() < deadline and (
        len(log.resumed_at) < len(live) or len(log.refused_at) + len(log.allowed_at) < len(later)
    ):
        for i in revoked:
            log.revoked_outcomes[_outcome(guards[i])] += 1
        for i in later:
            if i not in log.refused_at and i not in log.allowed_at:
                log.later(i, _outcome(guards[i]))
        for i in live:
            log.live(i, _outcome(guards[i]))
        if not told_stale and len(log.stale_at) == len(live) + len(later):
            conn.send({"all_stale": time.time()})
            told_stale = True
    if not told_stale:
        conn.send({"all_stale": None})
    conn.send(
        {
            "stale_at": {i: t for i, t in log.stale_at.items() if i not in special},
            "resumed_at": log.resumed_at,
            "refused_at": log.refused_at,
            "allowed_at": log.allowed_at,
            "live": len(live),
            "revoked_outcomes": dict(log.revoked_outcomes),
            "later_outcomes_after_stale": dict(log.later_outcomes),
            "unexpected": dict(log.unexpected),
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
        return api.create_agent(body, session())

    def issue(g: int) -> str:
        return api.issue(agent_ids[g // per_agent], GUARD_SCOPE, ["EU"], session())

    with ThreadPoolExecutor(concurrency) as pool:
        agent_ids = list(pool.map(make_agent, range(agents)))
        tokens = list(pool.map(issue, range(agents * per_agent)))
    return Population(agent_ids, fleet_names, tokens, per_agent)


def post_kill(api: Api, target: dict[str, Any], reason: str) -> dict[str, Any]:
    return api.post("/api/v1/killswitch", {"target": target, "reason": f"{REASON} {reason}"}, 201)


def post_lift(api: Api, revocation_id: str, reason: str = "lift") -> None:
    api.post(f"/api/v1/killswitch/{revocation_id}/lift", {"reason": f"{REASON} {reason}"}, 200)


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


def split_targets(targets: list[int], nproc: int) -> dict[int, list[int]]:
    by_worker: dict[int, list[int]] = {}
    for g in targets:
        by_worker.setdefault(g % nproc, []).append(g // nproc)
    return by_worker


def arm(procs: list[GuardProcess], by_worker: dict[int, list[int]], **until: Any) -> Counter:
    """Start the guard loops on their targets (``expect``, ``before``, ``timeout``); returns
    the targets' outcomes before the change."""
    for w, local in by_worker.items():
        procs[w].send({"cmd": "until", "targets": local, **until})
    initial: Counter[str] = Counter()
    for w in by_worker:
        initial.update(procs[w].recv()["initial"])
    return initial


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
    by_worker = split_targets(targets, len(procs))
    initial = arm(procs, by_worker, expect=expect, before=before, timeout=timeout)
    sent = time.time()
    answer = request()
    returned = time.time()
    results = [procs[w].recv(timeout + 30) for w in by_worker]
    firsts = [t for r in results for t in r["first"].values()]
    swapped = [(r["state_swapped_at"], r) for r in results if r["state_swapped_at"] is not None]
    swaps = [t for t, _ in swapped]
    published = published_at() if published_at is not None else None
    unexpected: Counter[str] = Counter()
    for r in results:
        unexpected.update(r["unexpected"])
    return {
        "publish_ms": None if published is None else published - returned * 1e3,
        "swap_ms": [(t - returned) * 1e3 for t in swaps],
        "swap_after_xadd_ms": [] if published is None else [t * 1e3 - published for t in swaps],
        "after_swap_ms": [(t - s) * 1e3 for s, r in swapped for t in r["first"].values()],
        "answer": answer,
        "request_ms": (returned - sent) * 1e3,
        "from_return_ms": [(t - returned) * 1e3 for t in firsts],
        "from_sent_ms": [(t - sent) * 1e3 for t in firsts],
        "missing": sum(len(r["missing"]) for r in results),
        "initial": dict(initial),
        "initial_ok": set(initial) <= {before},
        "unexpected": dict(unexpected),
        "sweeps": [r["sweeps"] for r in results],
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

    def target(self, pop: Population, r: int) -> tuple[dict[str, Any], list[int]]:
        """Round ``r``'s kill target and the guards it stops."""
        if self.kind == "agent":
            a = r * 7 % len(pop.agents)  # different agents, spread over fleets
            return {"agent": pop.agents[a]}, pop.guards_of_agent(a)
        if self.kind == "fleet":
            f = r % len(pop.fleets)
            return {"fleet": pop.fleets[f]}, pop.guards_of_fleet(f)
        return {"all": True}, list(range(len(pop.tokens)))


def last_publish_ms(redis_url: str, prefix: str) -> Callable[[], float | None]:
    """Reads the newest revocation stream entry's id: its first part is the XADD time in ms."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stream = RevocationChannel(prefix).stream_key

    def read() -> float | None:
        last = client.xrevrange(stream, count=1)
        return float(last[0][0].split("-")[0]) if last else None

    return read


@dataclass
class Tally:
    """Every round of one scenario, added up."""

    kill: list[float] = field(default_factory=list)
    kill_sent: list[float] = field(default_factory=list)
    lift: list[float] = field(default_factory=list)
    post: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)
    swap: list[float] = field(default_factory=list)
    swap_after_xadd: list[float] = field(default_factory=list)
    after_swap: list[float] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)  # missing, bad_initial, lift_missing
    unexpected: Counter[str] = field(default_factory=Counter)
    collateral: Counter[str] = field(default_factory=Counter)

    def add_kill(self, kill: dict[str, Any]) -> None:
        if kill["publish_ms"] is not None:
            self.publish.append(kill["publish_ms"])
        self.swap += kill["swap_ms"]
        self.swap_after_xadd += kill["swap_after_xadd_ms"]
        self.after_swap += kill["after_swap_ms"]
        self.kill += kill["from_return_ms"]
        self.kill_sent += kill["from_sent_ms"]
        self.post.append(kill["request_ms"])
        self.problems["missing"] += kill["missing"]
        self.problems["bad_initial"] += 0 if kill["initial_ok"] else 1
        self.unexpected.update(kill["unexpected"])

    def row(self, scenario: Scenario) -> dict[str, Any]:
        row = {
            "scenario": scenario.name,
            "rounds": scenario.rounds,
            "missing": self.problems["missing"],
            "unexpected": dict(self.unexpected),
            "bad_initial": self.problems["bad_initial"],
            "collateral": dict(self.collateral),
            "lift_missing": self.problems["lift_missing"],
            "guards_per_round": len(self.kill) // max(1, scenario.rounds),
            "kill_from_return_ms": summary(self.kill),
            "kill_from_sent_ms": summary(self.kill_sent),
            "breakdown_ms": {
                "redis_xadd_vs_post_return": summary(self.publish),
                "watcher_swap_vs_post_return": summary(self.swap),
                "watcher_swap_after_xadd": summary(self.swap_after_xadd),
                "refusal_after_swap": summary(self.after_swap),
            },
            "post_killswitch_ms": summary(self.post),
            "lift_recovery_ms": summary(self.lift),
            "raw_kill_from_return_ms": [round(v, 2) for v in self.kill],
        }
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
        return row


def kill_and_lift(
    api: Api,
    pop: Population,
    procs: list[GuardProcess],
    scenario: Scenario,
    r: int,
    tally: Tally,
    published_at: Callable[[], float | None],
    active: list[int],
) -> None:
    """One round: kill the target, time each targeted guard's first refusal, check that no
    other guard was touched, lift the kill and time the recovery."""
    target, targets = scenario.target(pop, r)
    reason = f"{scenario.name} round {r}"
    kill = timed_change(
        procs,
        targets,
        expect="revoked",
        before="allowed",
        timeout=5.0,
        request=lambda: post_kill(api, target, reason),
        published_at=published_at,
    )
    revocation_id = kill["answer"]["id"]
    active.append(revocation_id)
    tally.add_kill(kill)
    if scenario.kind != "all":
        others = probe_others(procs, targets)
        tally.collateral.update({k: v for k, v in others.items() if k != "allowed"})
    lift = timed_change(
        procs,
        targets,
        expect="allowed",
        before="revoked",
        timeout=10.0,
        request=lambda: post_lift(api, revocation_id),
    )
    active.remove(revocation_id)
    tally.lift += lift["from_return_ms"]
    tally.problems["lift_missing"] += lift["missing"]


def run_propagation(
    api: Api,
    pop: Population,
    procs: list[GuardProcess],
    scenarios: list[Scenario],
    published_at: Callable[[], float | None],
    active: list[int],
) -> list[dict[str, Any]]:
    """Every scenario's rounds; ``active`` holds the kills to lift if it stops half-way."""
    rows = []
    for scenario in scenarios:
        tally = Tally()
        for r in range(scenario.rounds):
            kill_and_lift(api, pop, procs, scenario, r, tally, published_at, active)
        rows.append(row := tally.row(scenario))
        k = row["kill_from_return_ms"]
        print(
            f"  {scenario.name}: p50 {k.get('p50')} ms  p99 {k.get('p99')} ms  "
            f"max {k.get('max')} ms  ({k.get('n')} refusals, {row['missing']} missing)",
            file=sys.stderr,
        )
    return rows


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

    def record(self, at, action, resource, jurisdiction, allowed, reason, details=None) -> None:
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
    cpu = pin_to_core(config["cpu"])  # before any thread starts: they inherit it
    logging.basicConfig(filename=config["log_path"], level=logging.WARNING)
    try:
        conn.send(_check_path(config, cpu))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


def reporter_factory(config: dict[str, Any]) -> tuple[Callable[[], Any], str]:
    """A way to make fresh reporters for the guard, and what they are."""
    spill = Path(config["workdir"]) / "reporter-spill.jsonl"
    try:
        from agent_passport.reporter import ActionReporter
    except ImportError:
        return ListReporter, "in-memory list-append reporter (agent_passport.reporter missing)"

    def make_reporter() -> Any:
        # Not started: record() only appends to its deque; a fresh one per 1,000-call batch
        # stands in for the delivery thread draining it (delivery is not measured here).
        return ActionReporter(config["actions_url"], config["token"], spill_path=spill)

    return make_reporter, (
        "agent_passport.reporter.ActionReporter (pointed at the running server's "
        "/api/v1/actions, delivery thread not started; replaced by a fresh one between "
        "1,000-call batches, untimed)"
    )


def checking(guard: Guard) -> Callable[[int], None]:
    """Check ``i`` of the mix with ``guard`` (a denial is an answer, not an error)."""

    def check(i: int) -> None:
        action, resource, region = CHECK_QUERIES[i % len(CHECK_QUERIES)]
        try:
            guard.check(action, resource, region)
        except ScopeDenied:
            pass

    return check


def naive_checking(config: dict[str, Any], keys: dict[str, Any], snapshot_key: str):
    """What a check costs without the guard: verify the JWT, one Redis read, a fresh Policy."""
    token, issuer = config["token"], config["issuer"]
    client = redis.Redis.from_url(config["redis_url"])

    def naive(i: int) -> None:
        action, resource, region = CHECK_QUERIES[i % len(CHECK_QUERIES)]
        claims = verify_token(token, keys, issuer=issuer, audience=AUDIENCE)
        client.hgetall(snapshot_key)
        Policy.from_claims(claims).decide(action, resource, region)

    return naive


def _check_path(config: dict[str, Any], cpu: int | None) -> dict[str, Any]:
    keys = keys_from_jwks(config["jwks"])
    channel = RevocationChannel(config["prefix"])
    watcher = RevocationWatcher(config["redis_url"], channel=channel).start()
    if not watcher.wait_until_ready(15):
        raise RuntimeError("no revocation snapshot")
    make_reporter, reporter_kind = reporter_factory(config)

    def new_guard() -> Guard:
        return Guard(
            config["token"], keys=keys, issuer=config["issuer"], audience=AUDIENCE, watcher=watcher
        )

    guard, bare = new_guard(), new_guard()
    guard.reporter = make_reporter()
    allowed = 0
    for action, resource, region in CHECK_QUERIES:  # warm the decision cache; count the mix
        try:
            guard.check(action, resource, region)
            allowed += 1
        except ScopeDenied:
            pass

    def swap_reporter() -> None:
        guard.reporter = make_reporter()

    seconds = 1.0 if config["quick"] else 4.0
    samples = 50_000 if config["quick"] else 300_000
    rows = {
        "guard_with_reporter": _measure(
            checking(guard),
            sample_calls=samples,
            batch=1000,
            seconds=seconds,
            between=swap_reporter,
        ),
        "guard_no_reporter": _measure(
            checking(bare), sample_calls=samples // 2, batch=1000, seconds=seconds / 2
        ),
        "naive": _measure(
            naive_checking(config, keys, channel.snapshot_key),
            sample_calls=500 if config["quick"] else 3000,
            batch=100,
            seconds=seconds / 2,
        ),
    }
    watcher.stop()
    n = len(CHECK_QUERIES)
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


def check_path_config(
    api: Api, service: Service, redis_url: str, prefix: str, workdir: Path, quick: bool
) -> dict[str, Any]:
    """A 50-rule passport and everything the check-path process needs to check it."""
    agent = api.create_agent({"name": "check-path", "description": "bench_killswitch"})
    token = api.issue(agent, policy_rules(), ["EU", "US"])
    return {
        "token": token,
        "jwks": requests.get(service.base_url + "/.well-known/jwks.json", timeout=10).json(),
        "issuer": service.base_url,
        "redis_url": redis_url,
        "prefix": prefix,
        "actions_url": service.base_url + "/api/v1/actions",
        "workdir": str(workdir),
        "log_path": str(workdir / "check-path.log"),
        "cpu": max(os.sched_getaffinity(0)),
        "quick": quick,
    }


def run_check_path(
    api: Api, service: Service, machine_redis: str, prefix: str, workdir: Path, quick: bool
) -> dict[str, Any]:
    config = check_path_config(api, service, machine_redis, prefix, workdir, quick)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
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
    guard, naive = result["rows"]["guard_with_reporter"], result["rows"]["naive"]
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


@contextmanager
def outage_service(
    base_env: dict[str, str], token: str, workdir: Path, reconcile_seconds: float
) -> Iterator[tuple[PrivateRedis, Service, Api]]:
    """A private redis-server and the service (gunicorn, Celery, heartbeat) on it."""
    private = PrivateRedis(workdir)
    service: Service | None = None
    try:
        private.start()
        base_url = f"http://127.0.0.1:{free_port()}"
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
        yield private, service, Api(base_url, token)
    finally:
        if service is not None:
            service.stop()
        private.stop()


def revoke_while_down(api: Api, agent_id: str, lift_ids: list[str]) -> dict[str, Any]:
    """Try to kill an agent through the API while Redis is down."""
    sent = time.time()
    try:
        response = api.session.post(
            api.base_url + "/api/v1/killswitch",
            json={"target": {"agent": agent_id}, "reason": f"{REASON} during outage"},
            timeout=30,
        )
        during = {"status": response.status_code, "body": response.text[:300]}
        if response.status_code == 201:
            lift_ids.append(response.json()["id"])
    except requests.RequestException as exc:
        during = {"status": None, "body": f"{type(exc).__name__}: {exc}"[:300]}
    during["seconds"] = round(time.time() - sent, 3)
    return during


def probe_after(
    procs: list[GuardProcess], victims: dict[int, list[int]], laters: dict[int, list[int]]
) -> Counter[str]:
    """One check of every guard after recovery, by group."""
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
    return after


def through_outage(
    procs: list[GuardProcess],
    private: PrivateRedis,
    service: Service,
    api: Api,
    pop: Population,
    reconcile_seconds: float,
) -> dict[str, Any]:
    """Revoke agent 0, kill Redis, try to revoke agent 1, restart Redis empty; the guard
    processes note what each guard did meanwhile."""
    victim, later = pop.guards_of_agent(0), pop.guards_of_agent(1)
    kill = timed_change(
        procs,
        victim,
        expect="revoked",
        before="allowed",
        timeout=5.0,
        request=lambda: post_kill(api, {"agent": pop.agents[0]}, "outage victim"),
    )
    lift_ids = [kill["answer"]["id"]]
    victims, laters = split_targets(victim, len(procs)), split_targets(later, len(procs))
    timeout = MAX_STALENESS_S + reconcile_seconds + 40
    for w, proc in enumerate(procs):
        watch = {"revoked": victims.get(w, []), "later": laters.get(w, []), "timeout": timeout}
        proc.send({"cmd": "outage", **watch})
    initial: Counter[str] = Counter()
    for proc in procs:
        initial.update(proc.recv()["initial"])
    time.sleep(0.5)
    print("  killing redis-server…", file=sys.stderr)
    offsets = service.log_offsets()
    stopped = private.kill()
    all_stale = [proc.recv(MAX_STALENESS_S + 15)["all_stale"] for proc in procs]
    during = revoke_while_down(api, pop.agents[1], lift_ids)
    print("  restarting redis-server empty…", file=sys.stderr)
    restarted = private.start()
    results = [proc.recv(timeout + 30) for proc in procs]
    after = probe_after(procs, victims, laters)
    return {
        "victim": victim,
        "later": later,
        "lift_ids": lift_ids,
        "initial": initial,
        "offsets": offsets,
        "stopped": stopped,
        "all_stale": all_stale,
        "during": during,
        "restarted": restarted,
        "results": results,
        "after": after,
    }


def outage_verdicts(o: dict[str, Any], raw: dict[str, Any], guards: int) -> dict[str, bool]:
    """Fail closed and resume in time; nothing revoked comes back."""
    live, later_allowed = o["live_guards"], o["revoke_during_outage"]["allowed_after_stale"]
    stale, resume, targets = o["fail_closed_ms"], o["resume_ms"], o["targets_ms"]
    during_ok = raw["during"]["status"] == 201
    after, victim, later = raw["after"], raw["victim"], raw["later"]
    after_ok = (
        after["revoked before: revoked"] == len(victim)
        and after["others: allowed"] == guards - len(victim) - len(later)
        and after["revoked during: revoked" if during_ok else "revoked during: allowed"]
        == len(later)
    )
    return {
        "fail_closed": bool(stale.get("n") == live and stale["max"] <= targets["fail_closed_max"]),
        "resume": bool(resume.get("n") == live and resume["max"] <= targets["resume_max"]),
        "nothing_revoked_comes_back": o["revoked_allowed_violations"] == 0
        and after_ok
        and not (during_ok and later_allowed),
    }


def outage_report(raw: dict[str, Any], service: Service, reconcile_seconds: float) -> dict:
    results, stopped, restarted = raw["results"], raw["stopped"], raw["restarted"]
    revoked: Counter[str] = Counter()
    later: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    for r in results:
        revoked.update(r["revoked_outcomes"])
        later.update(r["later_outcomes_after_stale"])
        unexpected.update(r["unexpected"])
    live = sum(r["live"] for r in results)
    stale_ms = [(t - stopped) * 1e3 for r in results for t in r["stale_at"].values()]
    resume_ms = [(t - restarted) * 1e3 for r in results for t in r["resumed_at"].values()]
    refused_ms = [(t - restarted) * 1e3 for r in results for t in r["refused_at"].values()]
    celery_log = service.logs["celery"].read_text(errors="replace").splitlines()
    return {
        "live_guards": live,
        "revoked_guards": len(raw["victim"]),
        "initial": dict(raw["initial"]),
        "reconcile_seconds": reconcile_seconds,
        "fail_closed_ms": summary(stale_ms),
        "all_stale_after_ms": [
            None if t is None else round((t - stopped) * 1e3, 1) for t in raw["all_stale"]
        ],
        "resume_ms": summary(resume_ms),
        "stale_missing": live - len(stale_ms),
        "resume_missing": live - len(resume_ms),
        "revoked_checks_during_outage": dict(revoked),
        "revoked_allowed_violations": revoked.get("allowed", 0),
        "revoke_during_outage": {
            **raw["during"],
            "guards": len(raw["later"]),
            "checks_after_stale": dict(later),
            "refused_after_restart_ms": summary(refused_ms),
            "allowed_after_stale": sum(len(r["allowed_at"]) for r in results),
        },
        "unexpected": dict(unexpected),
        "after_recovery": dict(raw["after"]),
        "reconcile_tasks_succeeded": sum(
            1
            for line in celery_log
            if "killswitch.tasks.reconcile_revocations[" in line and " succeeded " in line
        ),
        "targets_ms": {
            "fail_closed_max": (MAX_STALENESS_S + TARGET_STALE_MARGIN_S) * 1e3,
            "resume_max": (reconcile_seconds + TARGET_RESUME_MARGIN_S) * 1e3,
        },
    }


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
    with outage_service(base_env, token, workdir, reconcile_seconds) as (private, service, api):
        pop = create_population(
            api, agents=agents, per_agent=per_agent, fleets=1, tag=f"{prefix}-out"
        )
        jwks = requests.get(api.base_url + "/.well-known/jwks.json", timeout=10).json()
        config = {"jwks": jwks, "issuer": api.base_url, "redis_url": private.url, "prefix": prefix}
        with guard_processes(pop.tokens, nproc, config, workdir, "outage") as procs:
            raw = through_outage(procs, private, service, api, pop, reconcile_seconds)
        for revocation_id in raw["lift_ids"]:
            post_lift(api, revocation_id)
        report = {
            "guards": len(pop.tokens),
            "processes": nproc,
            "redis_port": private.port,
            **outage_report(raw, service, reconcile_seconds),
        }
        report["pass"] = outage_verdicts(report, raw, len(pop.tokens))
        report["service_problems"] = service.problems(until=raw["offsets"])
        after_kill = service.problems(since=raw["offsets"])
        report["service_log_lines_after_redis_kill"] = {k: len(v) for k, v in after_kill.items()}
        return report


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


PROPAGATION_COLUMNS = (
    Column("scenario", 12, left=True),
    Column("rounds", 7),
    Column("guards", 8),
    Column("p50 ms", 9, ".1f"),
    Column("p99 ms", 9, ".1f"),
    Column("max ms", 9, ".1f"),
    Column("min ms", 9, ".1f"),
    Column("POST ms", 9, ".1f"),
    Column("lift p50/max ms", 17),
    Column("miss", 6),
    Column("  result", 6, left=True),
)


def print_propagation(p: dict[str, Any]) -> None:
    print(
        f"\n1. Propagation: {p['guards']} guards in {p['processes']} processes "
        f"({p['guards_per_process']} each, one shared watcher per process, block_ms "
        f"{WATCHER_BLOCK_MS}); {p['agents']} agents x {p['per_agent']} passports, "
        f"{p['fleets']} fleets"
    )
    print(
        f"   latency from POST /api/v1/killswitch returning to each targeted guard's first "
        f"refusal; targets p99 <= {TARGET_P99_MS:g} ms, max <= {TARGET_MAX_MS:g} ms"
    )
    rows = []
    for row in p["scenarios"]:
        k, lift = row["kill_from_return_ms"], row["lift_recovery_ms"]
        lifted = f"{lift.get('p50', 0):.1f}/{lift.get('max', 0):.1f}"
        rows.append(
            [
                row["scenario"],
                row["rounds"],
                row["guards_per_round"],
                *(k.get(q, 0) for q in ("p50", "p99", "max", "min")),
                row["post_killswitch_ms"].get("p50", 0),
                lifted,
                row["missing"],
                f"  {yes(row['pass'])}",
            ]
        )
    print(table(PROPAGATION_COLUMNS, rows, indent="   "))
    for row in p["scenarios"]:
        extra = {key: row[key] for key in ("unexpected", "collateral", "bad_initial") if row[key]}
        if extra or row["lift_missing"]:
            print(f"      {row['scenario']} problems: {extra} lift_missing={row['lift_missing']}")
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
        pub, swap = b["redis_xadd_vs_post_return"], b["watcher_swap_after_xadd"]
        after = b["refusal_after_swap"]
        print(
            f"   {row['scenario']:<12} XADD {pub.get('p50', 0):>6.1f} / {pub.get('max', 0):<6.1f}"
            f"  swap after XADD {swap.get('p50', 0):>5.1f} / {swap.get('max', 0):<6.1f}"
            f"  refusal after swap {after.get('p50', 0):>5.1f} / {after.get('max', 0):.1f}"
        )
    print("   (XADD times come from stream ids: 1 ms resolution; all on one clock)")


CHECK_COLUMNS = (
    Column("path", 46, left=True),
    Column("checks/s", 12, ",.0f"),
    Column("p50 µs", 9, ".2f"),
    Column("p99 µs", 9, ".2f"),
    Column("p99.9 µs", 10, ".2f"),
)
CHECK_PATHS = {
    "guard_with_reporter": "guard.check + reporter",
    "guard_no_reporter": "guard.check, no reporter",
    "naive": "naive: verify_token + HGETALL + Policy()",
}


def print_check_path(c: dict[str, Any]) -> None:
    print(
        f"\n2. Check path: 1 thread pinned to CPU {c['cpu']}, {c['rules']}-rule passport, "
        f"{c['distinct_checks']} distinct checks ({c['allowed_in_mix']} allowed, "
        f"{c['denied_in_mix']} denied)"
    )
    print(f"   reporter: {c['reporter']}")
    rows = [
        [label, *(c["rows"][key][k] for k in ("per_s", "p50_us", "p99_us", "p999_us"))]
        for key, label in CHECK_PATHS.items()
    ]
    print(table(CHECK_COLUMNS, rows, indent="   "))
    print(
        f"   guard vs naive: {c['ratio_throughput']:.1f}x throughput, "
        f"{c['ratio_p50_latency']:.1f}x p50 latency; targets >= {TARGET_CHECKS_PER_S:,} "
        f"checks/s: {yes(c['pass']['checks_per_s'])}, >= {TARGET_RATIO:g}x: "
        f"{yes(c['pass']['ratio_vs_naive'])}"
    )
    print(f"   (per-call timings include ~{c['timer_overhead_ns']:.0f} ns of timer overhead)")


OUTAGE_COLUMNS = (
    Column("measure", 52, left=True),
    Column("p50", 9, ".2f"),
    Column("max", 9, ".2f"),
    Column("target", 10),
    Column("  result", 6, left=True),
)


def print_outage(o: dict[str, Any]) -> None:
    print(
        f"\n3. Outage: private redis-server (port {o['redis_port']}), {o['guards']} guards in "
        f"{o['processes']} processes, {o['revoked_guards']} of them belong to an agent "
        f"revoked before the outage"
    )
    f, r, t = o["fail_closed_ms"], o["resume_ms"], o["targets_ms"]
    rows = [
        [
            "Redis killed -> every live guard fails closed (s)",
            f.get("p50", 0) / 1e3,
            f.get("max", 0) / 1e3,
            f"{t['fail_closed_max'] / 1e3:.1f}s",
            f"  {yes(o['pass']['fail_closed'])}",
        ],
        [
            "Redis back (empty) -> guards resume (s)",
            r.get("p50", 0) / 1e3,
            r.get("max", 0) / 1e3,
            f"{t['resume_max'] / 1e3:.1f}s",
            f"  {yes(o['pass']['resume'])}",
        ],
    ]
    print(table(OUTAGE_COLUMNS, rows, indent="   "))
    d = o["revoke_during_outage"]
    refused = d["refused_after_restart_ms"]
    print(
        f"   agent killed via API while Redis is down (HTTP {d['status']}): "
        + (
            f"its guards refuse {refused.get('p50', 0) / 1e3:.2f} s (p50) / "
            f"{refused.get('max', 0) / 1e3:.2f} s (max) after the restart"
            if refused.get("n")
            else f"answer: {d['body'][:80]}"
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


def print_report(report: dict[str, Any]) -> None:
    info, s = report["machine"], report["settings"]
    print(f"\nKill-switch benchmark  {info['timestamp']}  commit {info['git_commit']}")
    print(
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"{info['db_engine']} {info['db_version']}, Redis {info['redis_version']}; "
        f"gunicorn gthread {s['gunicorn_workers']}x{s['gunicorn_threads']}, celery worker "
        f"--beat (concurrency 1), reconcile every {s['reconcile_seconds']:g} s"
    )
    print(f"Background load before the run: {report['background_busy_cores']} busy cores (1 s)")
    for part, show in (
        ("propagation", print_propagation),
        ("check_path", print_check_path),
        ("outage", print_outage),
    ):
        if part in report:
            show(report[part])
    lines = [line for group in report.get("service_problems", {}).values() for line in group]
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


def settings_of(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    guards = args.guards or (200 if args.quick else 1000)
    agents = max(1, guards // args.per_agent)
    rounds = (5, 2, 1) if args.quick else (30, 5, 5)
    return {
        "quick": args.quick,
        "parts": [args.only] if args.only else ["propagation", "check", "outage"],
        "redis_prefix": prefix,
        "reconcile_seconds": args.reconcile_seconds,
        "gunicorn_workers": 2,
        "gunicorn_threads": 4,
        "celery": "worker --beat --concurrency 1",
        "watcher_block_ms": WATCHER_BLOCK_MS,
        "max_staleness_s": MAX_STALENESS_S,
        "guards": agents * args.per_agent,
        "processes": args.processes,
        "agents": agents,
        "per_agent": args.per_agent,
        "fleets": args.fleets,
        "rounds": {"one_agent": rounds[0], "fleet": rounds[1], "global": rounds[2]},
        "outage_guards": (10 if args.quick else 25) * args.per_agent,
        "guard_scope": GUARD_SCOPE,
        "guard_action": GUARD_ACTION,
        "guard_process_switch_interval_s": args.switch_interval or sys.getswitchinterval(),
    }


def propagation(api: Api, s: dict[str, Any], run: Run, switch_interval: float | None) -> dict:
    """Part 1 on the running service: a population of guards, then every scenario."""
    print(f"creating {s['agents']} agents x {s['per_agent']} passports…", file=sys.stderr)
    pop = create_population(
        api, agents=s["agents"], per_agent=s["per_agent"], fleets=s["fleets"], tag=s["redis_prefix"]
    )
    jwks = requests.get(api.base_url + "/.well-known/jwks.json", timeout=10).json()
    config = {
        "jwks": jwks,
        "issuer": api.base_url,
        "redis_url": run.redis_url,
        "prefix": s["redis_prefix"],
        "switch_interval": switch_interval,
    }
    print(f"starting {s['processes']} guard processes…", file=sys.stderr)
    scenarios = [
        Scenario("one agent", "agent", s["rounds"]["one_agent"]),
        Scenario("fleet", "fleet", s["rounds"]["fleet"]),
        Scenario("global", "all", s["rounds"]["global"]),
    ]
    published_at = last_publish_ms(run.redis_url, s["redis_prefix"])
    with guard_processes(pop.tokens, s["processes"], config, run.workdir, "prop") as procs:
        active: list[int] = []
        try:
            rows = run_propagation(api, pop, procs, scenarios, published_at, active)
        finally:
            for revocation_id in active:
                post_lift(api, revocation_id, "cleanup")
    return {
        "guards": len(pop.tokens),
        "processes": s["processes"],
        "guards_per_process": [p.count for p in procs],
        "guard_load_s": [round(p.load_s, 3) for p in procs],
        "agents": len(pop.agents),
        "per_agent": s["per_agent"],
        "fleets": len(pop.fleets),
        "targets_ms": {"p99": TARGET_P99_MS, "max": TARGET_MAX_MS},
        "scenarios": rows,
        "pass": all(row["pass"] for row in rows),
    }


def on_main_service(
    report: dict[str, Any], env: dict[str, str], token: str, run: Run, args: argparse.Namespace
) -> dict[str, list[str]]:
    """Parts 1 and 2 on gunicorn + Celery + heartbeat against the machine's Redis; returns
    the service's error lines."""
    s = report["settings"]
    service = Service(env, env["PASSPORT_ISSUER"]).start(run.workdir, "main")
    try:
        service.wait_ready()
        api = Api(service.base_url, token)
        if lifted := lift_leftovers(api):
            print(f"  lifted {lifted} global kill(s) left by an earlier run", file=sys.stderr)
        if "propagation" in s["parts"]:
            report["propagation"] = propagation(api, s, run, args.switch_interval)
        if "check" in s["parts"]:
            print("measuring the check path (1 pinned core)…", file=sys.stderr)
            report["check_path"] = run_check_path(
                api, service, run.redis_url, s["redis_prefix"], run.workdir, args.quick
            )
        return {f"main {k}": v for k, v in service.problems().items()}
    finally:
        service.stop()


def service_env(run: Run, args: argparse.Namespace, db: Database, prefix: str) -> dict:
    """The service's environment, with a Celery broker queue in an empty Redis database."""
    broker_url = redis_url_with_db(run.redis_url, empty_redis_db(run.redis_url))
    run.delete_keys_at_exit(broker_url, ["_kombu*", "celery*", "unacked*", "*reply.celery.pidbox*"])
    return registry_env(
        database_url=db.url,
        redis_url=run.redis_url,
        prefix=prefix,
        issuer=f"http://127.0.0.1:{free_port()}",
        CELERY_BROKER_URL=broker_url,
        REVOCATION_RECONCILE_SECONDS=str(args.reconcile_seconds),
    )


def bench(run: Run, args: argparse.Namespace) -> int:
    started = time.monotonic()
    prefix = f"aps-bench-{secrets.token_hex(4)}"
    run.delete_keys_at_exit(run.redis_url, [f"{prefix}:*", f"{prefix}-cache:*"])
    s = settings_of(args, prefix)
    background = busy_cores(1.0)
    admin_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    db = prepare_database(admin_url, DB_NAME, args.fresh_db, run.workdir)
    env = service_env(run, args, db, prefix)
    s["celery_broker_db"] = int(env["CELERY_BROKER_URL"].rsplit("/", 1)[1])
    print(f"preparing {db.engine} database {db.name} (prefix {prefix})…", file=sys.stderr)
    token = setup_registry(env)
    manage(env, "reconcile_revocations")  # the snapshot exists before any agent starts
    report: dict[str, Any] = {
        "machine": machine_info(db, run.redis_url),
        "settings": s,
        "background_busy_cores": background,
    }
    problems: dict[str, list[str]] = {}
    if "propagation" in s["parts"] or "check" in s["parts"]:
        problems.update(on_main_service(report, env, token, run, args))
    if "outage" in s["parts"]:
        print("outage: private redis-server, service and guards…", file=sys.stderr)
        report["outage"] = run_outage(
            env,
            token,
            run.workdir,
            prefix,
            args.reconcile_seconds,
            s["outage_guards"] // args.per_agent,
            args.per_agent,
            args.processes,
        )
        outage_problems = report["outage"].pop("service_problems")
        problems.update({f"outage {k}": v for k, v in outage_problems.items()})
    report["service_problems"] = problems
    report["runtime_s"] = round(time.monotonic() - started, 1)
    verdicts = [report["propagation"]["pass"]] if "propagation" in report else []
    for part in ("check_path", "outage"):
        verdicts += list(report.get(part, {}).get("pass", {}).values())
    report["all_targets_met"] = all(verdicts)
    report["findings"] = findings(report)
    print_report(report)
    print(f"\nruntime {report['runtime_s']} s")
    write_json(report, args.output)
    return 0 if report["all_targets_met"] else 1


def main() -> int:
    args = parse_args()
    return run_bench(partial(bench, args=args), name="aps-bench-ks", keep_logs=args.keep_logs)


if __name__ == "__main__":
    sys.exit(main())
