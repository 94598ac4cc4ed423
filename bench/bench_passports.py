"""Benchmark: passport issuance and introspection over HTTP vs offline verification in the SDK.

What is measured, in one run:

1. A real server: gunicorn ``registry.wsgi`` on a free port, against PostgreSQL (a dedicated
   ``aps_bench`` database, created if missing) or a temporary SQLite file if PostgreSQL does not
   answer, plus Redis. ``migrate``, ``ensure_signing_key`` and ``create_operator`` run first
   with the same environment; the user throttle is set so it never limits (see THROTTLE_USER).
2. HTTP, with N client threads (one ``requests.Session`` each), after a warm-up:
   issuance ``POST /api/v1/passports`` (10-rule scope) for one agent (issuance locks the
   agent's row, so this serializes) and spread over N agents, then introspection
   ``POST /api/v1/passports/introspect`` of the issued tokens, at concurrency N and 1.
   Requests/s, p50/p99 latency and errors (any non-2xx answer, an inactive introspection, or
   a transport error) are reported, with the CPU used by client, gunicorn and PostgreSQL
   and by everything else on the machine (to show when other load made the numbers noisy).
3. Offline, single thread (pinned to one core): ``agent_passport.tokens.verify_token`` with keys
   from the server's JWKS, and ``Policy.decide`` on a 50-rule policy (cached, and unique
   uncached resources).
4. The ratio offline verification / online introspection (throughput and latency).

The client, gunicorn, PostgreSQL and Redis share the machine's cores, so the HTTP numbers are a
lower bound for a server on its own host. Prints a table; writes bench/results/passports.json.

    .venv/bin/python bench/bench_passports.py [--quick] [--sweep]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.rules import Policy  # noqa: E402
from agent_passport.tokens import keys_from_jwks, verify_token  # noqa: E402
from bench._server import (  # noqa: E402
    delete_keys,
    free_port,
    gunicorn_command,
    machine_basics,
    machine_cpu_seconds,
    percentile,
    policy_rules,
    prepare_database,
    problems_in,
    process_cpu,
    start_logged,
    stop_group,
    timer_overhead_ns,
    wait_healthy,
    wait_until_quiet,
)
from bench._server import setup_registry as setup_operator  # noqa: E402
from registry.devserver import ensure_redis  # noqa: E402

RESULTS_PATH = BASE_DIR / "bench" / "results" / "passports.json"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_DB_NAME = "aps_bench"
CACHE_PREFIX = "aps-bench-cache"
# DRF's throttle keeps every request of the window in one cached list, read and rewritten on
# each request, so a huge per-hour rate makes every request slower as the list grows (≈4 ms of
# CPU at 100k entries). A one-second window never limits and keeps that list short.
THROTTLE_USER = "100000000/second"
NOISY_CORES = 0.3  # busy cores outside the bench above which the report warns
AUDIENCE = "agent-passport"

# Chosen with --sweep and A/B runs on the 2-core bench host (c=8): gthread 3x2 was as fast as
# 2x4 and 4x2 for introspection and 5-35% faster for issuance; sync 2x1 and 3x1 trailed. Other
# sessions' load made those runs noisy; --sweep records a fresh comparison in the JSON.
DEFAULT_WORKERS = 3
DEFAULT_THREADS = 2
SWEEP_CONFIGS: tuple[tuple[int, int], ...] = ((2, 1), (2, 4), (3, 1), (3, 2), (4, 2))

ISSUE_SCOPE = [
    "tool:shell:exec",
    "tool:browser:*",
    "fs:read:/srv/data/**",
    "fs:write:/srv/out/*",
    "!fs:write:/srv/out/secrets*",
    "net:connect:api.example.com:443",
    "net:connect:*.internal.example.com:443",
    "data:read:customers/*",
    "!data:read:customers/vip-*",
    "gpu:use",
]
ISSUE_JURISDICTION = ["EU", "US-CA"]


# --- small helpers --------------------------------------------------------------------------


@dataclass
class CpuSnapshot:
    """CPU seconds so far: client process, gunicorn master+workers, the bench database's
    PostgreSQL backends (by process title), and the whole machine."""

    client: float
    gunicorn: dict[str, float]
    postgres: dict[str, float]
    machine: float | None

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        gunicorn: dict[str, float] = {}
        postgres: dict[str, float] = {}
        try:
            children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
            for pid in [str(server_pid), *children]:
                gunicorn[pid] = process_cpu(pid)
        except OSError:
            pass
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                title = (proc / "cmdline").read_bytes()
                if title.startswith(b"postgres: ") and f" {BENCH_DB_NAME} ".encode() in title:
                    postgres[proc.name] = process_cpu(proc.name)
            except OSError:
                continue  # the process ended meanwhile
        return cls(time.process_time(), gunicorn, postgres, machine_cpu_seconds())

    def since(self, before: CpuSnapshot) -> dict[str, float | None]:
        def grown(now: dict[str, float], then: dict[str, float]) -> float | None:
            return sum(cpu - then.get(pid, 0.0) for pid, cpu in now.items()) if now else None

        machine = None
        if self.machine is not None and before.machine is not None:
            machine = self.machine - before.machine
        return {
            "client": self.client - before.client,
            "gunicorn": grown(self.gunicorn, before.gunicorn),
            "postgres": grown(self.postgres, before.postgres),
            "machine": machine,
        }


def busy_cores(seconds: float) -> float | None:
    """Machine-wide busy cores over ``seconds`` while the bench is idle: background load."""
    before = machine_cpu_seconds()
    time.sleep(seconds)
    after = machine_cpu_seconds()
    return None if before is None or after is None else round((after - before) / seconds, 2)


# --- environment: database, redis, server ---------------------------------------------------


@dataclass
class Backend:
    database_url: str
    db_engine: str
    db_version: str
    redis_url: str
    redis_process: subprocess.Popen | None = None


def prepare_backend(database_url: str, redis_url: str, fresh: bool, workdir: Path) -> Backend:
    """Point at a dedicated PostgreSQL database (created if missing) or fall back to SQLite."""
    db = prepare_database(database_url, BENCH_DB_NAME, fresh, workdir)
    redis_url, redis_process = ensure_redis(redis_url)
    return Backend(db.url, db.engine, db.version, redis_url, redis_process)


SERVER_ENV_OVERRIDES = (
    "CACHE_KEY_PREFIX",
    "REVOCATION_REDIS_PREFIX",
    "THROTTLE_USER",
    "DB_CONN_MAX_AGE",
    "PASSPORT_ISSUER",
    "PASSPORT_AUDIENCE",
    "LOG_LEVEL",
    "DEBUG",
)


def server_env(backend: Backend, base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=backend.database_url,
        REDIS_URL=backend.redis_url,
        CACHE_KEY_PREFIX=CACHE_PREFIX,
        REVOCATION_REDIS_PREFIX="aps-bench",
        THROTTLE_USER=THROTTLE_USER,
        # Keep each worker thread's PostgreSQL connection for the whole run (instead of the
        # default 60 s), so the per-phase CPU accounting of its backend process is complete.
        DB_CONN_MAX_AGE="3600",
        PASSPORT_ISSUER=base_url,
        PASSPORT_AUDIENCE=AUDIENCE,
        LOG_LEVEL="WARNING",
        DEBUG="false",
    )
    return env


def setup_registry(env: dict[str, str]) -> str:
    """Migrate, make sure a signing key exists, and return a fresh operator API token.

    Also clears the bench's cache keys (throttle histories left by earlier runs)."""
    delete_keys(env["REDIS_URL"], [f"{CACHE_PREFIX}:*"])
    return setup_operator(env, operator="benchop")


@dataclass
class GunicornConfig:
    workers: int
    threads: int

    @property
    def worker_class(self) -> str:
        return "gthread" if self.threads > 1 else "sync"

    def describe(self) -> str:
        return f"{self.worker_class} workers={self.workers} threads={self.threads}"


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str
    log_path: Path

    def problems(self) -> list[str]:
        """Error lines the server wrote (tracebacks, ERROR logs, worker timeouts)."""
        return problems_in(self.log_path)


@contextmanager
def running_server(
    config: GunicornConfig, env: dict[str, str], port: int, workdir: Path
) -> Iterator[Server]:
    log_path = workdir / f"gunicorn-{config.workers}x{config.threads}.log"
    args = gunicorn_command(port, config.workers, config.threads, config.worker_class)
    # a session of its own: Ctrl-C reaches only the bench, which stops the server
    process = start_logged(args, env, log_path)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_healthy(process, server.base_url, log_path, timeout=30)
        yield server
    finally:
        stop_group(process)


# --- HTTP load --------------------------------------------------------------------------------


@dataclass
class HttpResult:
    name: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_cores: dict[str, float | None]
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)


# (session, sequence number) -> error description or None if the answer was right
RequestFn = Callable[[requests.Session, int], str | None]


def run_load(
    name: str,
    request: RequestFn,
    *,
    token: str,
    concurrency: int,
    duration: float,
    server_pid: int,
) -> HttpResult:
    """Run ``request`` in a closed loop on ``concurrency`` threads for ``duration`` seconds."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: Counter[str] = Counter()
    samples: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(slot: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        mine = latencies[slot]
        sequence = slot
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            start = time.perf_counter()
            try:
                problem = request(session, sequence)
            except (requests.RequestException, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - start
            sequence += concurrency
            if problem is None:
                mine.append(elapsed)
                continue
            with lock:
                errors[problem.split(":", 1)[0]] += 1
                if len(samples) < 5:
                    samples.append(problem[:300])
        session.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    cpu_before = CpuSnapshot.take(server_pid)
    started = time.perf_counter()
    deadline[0] = started + duration
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    cpu = CpuSnapshot.take(server_pid).since(cpu_before)
    known = [cpu["client"], cpu["gunicorn"], cpu["postgres"]]
    if cpu["machine"] is not None:
        cpu["other"] = max(0.0, cpu["machine"] - sum(v or 0.0 for v in known))
    values = sorted(v for per_thread in latencies for v in per_thread)
    total_errors = sum(errors.values())
    return HttpResult(
        name=name,
        concurrency=concurrency,
        duration_s=round(wall, 3),
        requests=len(values) + total_errors,
        errors=total_errors,
        rps=round(len(values) / wall, 1),
        p50_ms=round(percentile(values, 50) * 1e3, 2),
        p99_ms=round(percentile(values, 99) * 1e3, 2),
        mean_ms=round(sum(values) / len(values) * 1e3, 2) if values else 0.0,
        cpu_cores={k: None if v is None else round(v / wall, 2) for k, v in cpu.items()},
        error_kinds=dict(errors),
        error_samples=samples,
    )


def describe_bad_answer(response: requests.Response) -> str:
    return f"HTTP {response.status_code}: {response.text[:200]}"


def issuance_request(base_url: str, agents: list[str], tokens: list[str]) -> RequestFn:
    url = base_url + "/api/v1/passports"

    def request(session: requests.Session, sequence: int) -> str | None:
        body = {
            "agent": agents[sequence % len(agents)],
            "scope": ISSUE_SCOPE,
            "jurisdiction": ISSUE_JURISDICTION,
            "ttl_seconds": 3600,
        }
        response = session.post(url, json=body, timeout=30)
        if response.status_code != 201:
            return describe_bad_answer(response)
        if len(tokens) < 20_000:
            tokens.append(response.json()["token"])  # list.append is atomic under the GIL
        return None

    return request


def introspection_request(base_url: str, tokens: list[str]) -> RequestFn:
    url = base_url + "/api/v1/passports/introspect"

    def request(session: requests.Session, sequence: int) -> str | None:
        response = session.post(url, json={"token": tokens[sequence % len(tokens)]}, timeout=30)
        if response.status_code != 200:
            return describe_bad_answer(response)
        answer = response.json()
        if answer.get("active") is not True:
            return f"inactive: {answer.get('reason')} {answer.get('detail')}"
        return None

    return request


def create_agents(base_url: str, token: str, count: int) -> list[str]:
    headers = {"Authorization": f"Token {token}"}
    ids = []
    for i in range(count):
        body = {"name": f"bench-agent-{i}", "fleet": "bench", "description": "bench_passports"}
        response = requests.post(
            base_url + "/api/v1/agents", json=body, headers=headers, timeout=10
        )
        if response.status_code != 201:
            raise RuntimeError(f"creating an agent failed: {describe_bad_answer(response)}")
        ids.append(response.json()["id"])
    return ids


# --- offline (in-process) measurements -----------------------------------------------------


@dataclass
class OfflineResult:
    name: str
    operations: int
    ops_per_s: float
    p50_us: float
    p99_us: float
    note: str = ""


def measure(
    name: str, operation: Callable[[int], object], seconds: float, note: str = ""
) -> OfflineResult:
    """Call ``operation(i)`` for ``seconds``: timed per call for percentiles, then untimed
    in bulk for the throughput (so timer overhead does not count against sub-µs operations)."""
    now = time.perf_counter_ns
    timings: list[int] = []
    end = now() + int(seconds / 2 * 1e9)
    i = 0
    while True:
        start = now()
        operation(i)
        stop = now()
        timings.append(stop - start)
        i += 1
        if stop >= end:
            break
    timings.sort()
    # Bulk pass in chunks of 256 calls, continuing the sequence so "unique" stays unique.
    done = 0
    started = now()
    end = started + int(seconds / 2 * 1e9)
    while now() < end:
        for j in range(i, i + 256):
            operation(j)
        i += 256
        done += 256
    elapsed = (now() - started) / 1e9
    return OfflineResult(
        name=name,
        operations=len(timings) + done,
        ops_per_s=round(done / elapsed, 1),
        p50_us=round(percentile([float(t) for t in timings], 50) / 1e3, 2),
        p99_us=round(percentile([float(t) for t in timings], 99) / 1e3, 2),
        note=note,
    )


def run_offline(
    tokens: list[str], keys: dict[str, Any], issuer: str, seconds: float
) -> list[OfflineResult]:
    results = [
        measure(
            "verify_token (SDK, offline)",
            lambda i: verify_token(tokens[i % len(tokens)], keys, issuer=issuer, audience=AUDIENCE),
            seconds,
            f"{len(tokens)} distinct tokens, keys from JWKS",
        )
    ]
    signed, _, signature = tokens[0].rpartition(".")
    raw_signature = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    raw_key = keys[jwt.get_unverified_header(tokens[0])["kid"]]
    results.append(
        measure(
            "  of which: raw Ed25519 verify",
            lambda i: raw_key.verify(raw_signature, signed.encode()),
            seconds / 2,
            "cryptography only: the floor for any verifier",
        )
    )
    policy = Policy(policy_rules(), ["EU", "US"])
    queries = (
        [("fs:read", f"/srv/data/team{i % 12}/q{i % 7}/file.csv", "DE") for i in range(32)]
        + [("net:connect", f"svc{i % 10}.internal.example.com:443", "US-CA") for i in range(16)]
        + [("tool:shell", "run", "FR"), ("data:read", "tenant3/orders", "NL")] * 8
    )
    for action, resource, region in queries:  # warm the decision cache
        policy.decide(action, resource, region)
    results.append(
        measure(
            "Policy.decide, 50 rules, cached",
            lambda i: policy.decide(*queries[i % len(queries)]),
            seconds,
            f"{len(queries)} repeating queries",
        )
    )
    fresh = Policy(policy_rules(), ["EU", "US"])
    results.append(
        measure(
            "Policy.decide, 50 rules, uncached",
            lambda i: fresh.decide("fs:read", f"/srv/data/team{i % 12}/u{i}/file.csv", "DE"),
            seconds,
            "unique resource per call (cache miss)",
        )
    )
    return results


# --- orchestration ------------------------------------------------------------------------------


@dataclass
class Settings:
    duration: float
    warmup: float
    sequential_duration: float
    offline_seconds: float
    concurrency: int
    agents: int


def http_phases(
    server: Server, token: str, agent_ids: list[str], s: Settings
) -> tuple[list[HttpResult], list[str]]:
    """Warm-up, issuance for one agent (and for several, if there are), then introspection of
    the issued tokens at full concurrency and sequentially. Returns the results and tokens."""
    tokens: list[str] = []
    load: dict[str, Any] = {"token": token, "server_pid": server.process.pid}
    issue = issuance_request(server.base_url, agent_ids[:1], tokens)
    run_load("warm-up", issue, concurrency=s.concurrency, duration=s.warmup, **load)
    results = [
        run_load("issue, 1 agent", issue, concurrency=s.concurrency, duration=s.duration, **load)
    ]
    if len(agent_ids) > 1:
        spread = issuance_request(server.base_url, agent_ids, tokens)
        name = f"issue, {len(agent_ids)} agents"
        results.append(
            run_load(name, spread, concurrency=s.concurrency, duration=s.duration, **load)
        )
    if not tokens:
        raise RuntimeError(f"no passport was issued: {results[0].error_samples}")
    introspect = introspection_request(server.base_url, tokens)
    run_load("warm-up", introspect, concurrency=s.concurrency, duration=s.warmup, **load)
    results.append(
        run_load("introspect", introspect, concurrency=s.concurrency, duration=s.duration, **load)
    )
    results.append(
        run_load("introspect", introspect, concurrency=1, duration=s.sequential_duration, **load)
    )
    return results, tokens


def sweep(env: dict[str, str], token: str, workdir: Path, s: Settings) -> list[dict[str, Any]]:
    """Short issuance + introspection runs per gunicorn config, in two rounds (forward, then
    backward, so drift in background load hits every config alike); keeps each one's best."""
    quick = Settings(
        duration=min(s.duration, 5),
        warmup=1.5,
        sequential_duration=0.5,
        offline_seconds=0,
        concurrency=s.concurrency,
        agents=s.agents,
    )
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for workers, threads in [*SWEEP_CONFIGS, *reversed(SWEEP_CONFIGS)]:
        config = GunicornConfig(workers, threads)
        with running_server(config, env, free_port(), workdir) as server:
            agents = create_agents(server.base_url, token, 1)
            results, _ = http_phases(server, token, agents, quick)
            problems = len(server.problems())
        issue = results[0]
        introspect = next(r for r in results if r.name == "introspect")
        other = max(r.cpu_cores.get("other") or 0.0 for r in results)
        print(
            f"  sweep {config.describe():<32} issue {issue.rps:>7} req/s   "
            f"introspect {introspect.rps:>7} req/s   errors {issue.errors + introspect.errors}"
            f"   server log errors {problems}   other load {other:.2f} cores",
            file=sys.stderr,
        )
        row = best.setdefault(
            (workers, threads),
            {"config": config.describe(), "workers": workers, "threads": threads, "runs": []},
        )
        row["runs"].append(
            {"issue_rps": issue.rps, "introspect_rps": introspect.rps, "other_cores": other}
        )
        row["issue_rps"] = max(run["issue_rps"] for run in row["runs"])
        row["introspect_rps"] = max(run["introspect_rps"] for run in row["runs"])
        row["errors"] = row.get("errors", 0) + issue.errors + introspect.errors + problems
    return list(best.values())


def machine_info(backend: Backend, config: GunicornConfig, s: Settings) -> dict[str, Any]:
    return {
        **machine_basics(),
        "db_engine": backend.db_engine,
        "db_version": backend.db_version,
        "db_name": BENCH_DB_NAME if backend.db_engine == "postgresql" else "temporary sqlite file",
        "redis_url": backend.redis_url,
        "gunicorn": {
            "workers": config.workers,
            "threads": config.threads,
            "worker_class": config.worker_class,
        },
        "client": {
            "library": f"requests {requests.__version__}",
            "concurrency": s.concurrency,
            "agents_second_issue_phase": s.agents,
            "note": "client threads share the same cores as gunicorn, PostgreSQL and Redis",
        },
        "settings": asdict(s),
    }


def cores_used(row: dict[str, Any]) -> str:
    cores = row["cpu_cores"]
    return "".join(
        f"{'?' if cores.get(k) is None else format(cores[k], '.2f'):>9}"
        for k in ("client", "gunicorn", "postgres", "other")
    )


def print_report(report: dict[str, Any]) -> None:
    info = report["machine"]
    print()
    print(f"Agent Passport Registry benchmark  {info['timestamp']}  commit {info['git_commit']}")
    print(
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"{info['db_engine']} {info['db_version']}, gunicorn "
        f"{info['gunicorn']['worker_class']} {info['gunicorn']['workers']} workers x "
        f"{info['gunicorn']['threads']} threads"
    )
    print(
        f"HTTP client: {info['client']['library']}, {info['client']['concurrency']} threads; "
        f"client, server, PostgreSQL and Redis share the {info['cpu_count']} cores"
    )
    print()
    header = (
        f"{'HTTP (through gunicorn)':<24}{'conc':>5}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'errors':>7}{'requests':>9}{'client':>9}{'gunicorn':>9}{'postgres':>9}{'other':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in report["http"]:
        print(
            f"{row['name']:<24}{row['concurrency']:>5}{row['rps']:>8.1f}{row['p50_ms']:>8.2f}"
            f"{row['p99_ms']:>8.2f}{row['errors']:>7}{row['requests']:>9}{cores_used(row)}"
        )
    print(
        "(client..other: CPU cores in use during the phase; 'other' is the rest of the machine:"
        " Redis and anything not part of the bench)"
    )
    print()
    header = f"{'Offline (1 thread, 1 core)':<34}{'ops/s':>12}{'p50 µs':>9}{'p99 µs':>9}  note"
    print(header)
    print("-" * len(header))
    for row in report["offline"]:
        print(
            f"{row['name']:<34}{row['ops_per_s']:>12,.0f}{row['p50_us']:>9.2f}"
            f"{row['p99_us']:>9.2f}  {row['note']}"
        )
    print(f"(per-call timings include ~{report['timer_overhead_ns']:.0f} ns of timer overhead)")
    print()
    cmp = report["comparison"]
    print("Offline SDK verification vs online introspection over HTTP")
    print(
        f"  throughput: {cmp['offline_verify_per_s']:,.0f}/s on 1 core vs "
        f"{cmp['introspect_rps']:,.0f} req/s on the whole machine (c={cmp['concurrency']})  "
        f"-> {cmp['throughput_ratio']:.1f}x"
    )
    print(
        f"  latency p50: {cmp['offline_p50_us']:.1f} µs vs {cmp['introspect_p50_ms_c1']:.2f} ms "
        f"(c=1) -> {cmp['latency_ratio_p50_c1']:.0f}x, vs {cmp['introspect_p50_ms']:.2f} ms "
        f"(c={cmp['concurrency']}) -> {cmp['latency_ratio_p50']:.0f}x"
    )
    print(
        f"  latency p99: {cmp['offline_p99_us']:.1f} µs vs {cmp['introspect_p99_ms']:.2f} ms "
        f"(c={cmp['concurrency']}) -> {cmp['latency_ratio_p99']:.0f}x"
    )
    if "gunicorn_sweep" in report:
        print()
        print(f"gunicorn sweep (best of 2 short runs each, c={info['client']['concurrency']}):")
        for row in report["gunicorn_sweep"]:
            print(
                f"  {row['config']:<34} issue {row['issue_rps']:>7.1f} req/s   "
                f"introspect {row['introspect_rps']:>7.1f} req/s   errors {row['errors']}"
            )
    background = report["background_busy_cores"]
    during = max((row["cpu_cores"].get("other") or 0.0) for row in report["http"])
    samples = [background["before"], background["after_http"], during]
    noisy = max(v or 0.0 for v in samples) > NOISY_CORES
    noisy_offline = (background["during_offline"] or 0.0) > NOISY_CORES
    print()
    print(
        f"Load outside the bench (busy cores): {background['before']} before, up to "
        f"{during:.2f} during the HTTP phases, {background['after_http']} after them, "
        f"{background['during_offline']} during the offline ones"
    )
    if noisy or noisy_offline:
        which = " and ".join(
            name for name, flag in (("HTTP", noisy), ("offline", noisy_offline)) if flag
        )
        print(f"  <- the machine was not quiet: {which} numbers are noisy")
    problems = report["server_problems"]
    if problems["count"]:
        print(f"Server log: {problems['count']} error lines, first ones:")
        for line in problems["first"]:
            print(f"  {line}")
    else:
        print("Server log: no errors or tracebacks")
    for row in report["http"]:
        if row["errors"]:
            print(f"Errors in {row['name']} (c={row['concurrency']}): {row['error_kinds']}")
            for sample in row["error_samples"]:
                print(f"  {sample}")


def comparison(http: list[HttpResult], offline: list[OfflineResult]) -> dict[str, Any]:
    verify = offline[0]
    introspect = next(r for r in http if r.name == "introspect" and r.concurrency > 1)
    sequential = next(r for r in http if r.name == "introspect" and r.concurrency == 1)

    def ratio(a: float, b: float) -> float:
        return round(a / b, 1) if b else 0.0

    return {
        "offline_verify_per_s": verify.ops_per_s,
        "offline_p50_us": verify.p50_us,
        "offline_p99_us": verify.p99_us,
        "introspect_rps": introspect.rps,
        "concurrency": introspect.concurrency,
        "introspect_p50_ms": introspect.p50_ms,
        "introspect_p99_ms": introspect.p99_ms,
        "introspect_p50_ms_c1": sequential.p50_ms,
        "throughput_ratio": ratio(verify.ops_per_s, introspect.rps),
        "latency_ratio_p50": ratio(introspect.p50_ms * 1e3, verify.p50_us),
        "latency_ratio_p99": ratio(introspect.p99_ms * 1e3, verify.p99_us),
        "latency_ratio_p50_c1": ratio(sequential.p50_ms * 1e3, verify.p50_us),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (under ~20 s)")
    parser.add_argument("--sweep", action="store_true", help="try several gunicorn configs first")
    parser.add_argument("--duration", type=float, help="seconds per HTTP phase at concurrency")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--agents",
        type=int,
        help="agents for the second issuance phase (default: one per client thread; 1 skips it)",
    )
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--fresh-db", action="store_true", help="drop and recreate aps_bench")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="SECONDS",
        help="first wait up to this long for other load on the machine to stop "
        "(default 20, or 0 with --quick)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    s = Settings(
        duration=args.duration or (2.5 if args.quick else 18.0),
        warmup=1.0 if args.quick else 3.0,
        sequential_duration=1.0 if args.quick else 8.0,
        offline_seconds=0.6 if args.quick else 4.0,
        concurrency=args.concurrency,
        agents=args.agents or args.concurrency,
    )
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 20.0)
    background_before = wait_until_quiet(wait, NOISY_CORES, 0.5, busy_cores)
    workdir = Path(tempfile.mkdtemp(prefix="aps-bench-"))
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    backend = prepare_backend(
        database_url, os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), args.fresh_db, workdir
    )
    try:
        port = free_port()
        env = server_env(backend, f"http://127.0.0.1:{port}")
        print(f"preparing {backend.db_engine} database and operator…", file=sys.stderr)
        try:
            api_token = setup_registry(env)
        except RuntimeError as exc:
            if backend.db_engine != "postgresql":
                raise
            # Migrations edited in place leave an old bench schema behind: start it afresh.
            print(f"{exc}\nrecreating the {BENCH_DB_NAME} database…", file=sys.stderr)
            prepare_database(database_url, BENCH_DB_NAME, True, workdir)
            api_token = setup_registry(env)
        report: dict[str, Any] = {}
        config = GunicornConfig(args.workers, args.threads)
        if args.sweep:
            report["gunicorn_sweep"] = rows = sweep(env, api_token, workdir, s)
            best = max(rows, key=lambda r: r["issue_rps"] + r["introspect_rps"])
            config = GunicornConfig(best["workers"], best["threads"])
            print(f"  best: {config.describe()}", file=sys.stderr)
        print(f"running gunicorn {config.describe()} on port {port}…", file=sys.stderr)
        with running_server(config, env, port, workdir) as server:
            agent_ids = create_agents(server.base_url, api_token, s.agents)
            http, tokens = http_phases(server, api_token, agent_ids, s)
            jwks = requests.get(server.base_url + "/.well-known/jwks.json", timeout=10).json()
            problems = server.problems()
        background_after = busy_cores(0.5)
        print("measuring offline verification and decisions…", file=sys.stderr)
        keys = keys_from_jwks(jwks)
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        except (AttributeError, OSError):
            pass
        machine_before, own_before, started = (
            machine_cpu_seconds(),
            time.process_time(),
            time.perf_counter(),
        )
        offline = run_offline(tokens[:2000], keys, env["PASSPORT_ISSUER"], s.offline_seconds)
        machine_after, own = machine_cpu_seconds(), time.process_time() - own_before
        background_offline = None
        if machine_before is not None and machine_after is not None:
            foreign = max(0.0, machine_after - machine_before - own)
            background_offline = round(foreign / (time.perf_counter() - started), 2)
        report.update(
            machine=machine_info(backend, config, s),
            server_env={name: env[name] for name in SERVER_ENV_OVERRIDES},
            http=[asdict(r) for r in http],
            offline=[asdict(r) for r in offline],
            timer_overhead_ns=timer_overhead_ns(),
            comparison=comparison(http, offline),
            server_problems={"count": len(problems), "first": problems[:10]},
            background_busy_cores={
                "before": background_before,
                "after_http": background_after,
                "during_offline": background_offline,
            },
        )
        print_report(report)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON: {args.output}")
        return 1 if problems or any(r.errors for r in http) else 0
    finally:
        if backend.redis_process is not None:
            backend.redis_process.terminate()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
