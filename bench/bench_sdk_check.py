"""Benchmark: the TypeScript SDK next to the Python SDK, in the same run on the same machine.

1. **Check throughput.** ``Guard.check`` on the same 50-rule passport (``policy_rules``) and the
   same 20-check mix as bench_killswitch.py, one core each (the Python thread and its watcher
   pinned with ``sched_setaffinity``, Node with ``taskset``), a private redis-server stamped
   every 0.2 s, a reporter stand-in that appends to a list (delivery is not measured). Versus
   the naive path in each language: the Policy built again for every check (no index, no cache).
2. **Propagation to a TypeScript guard.** The real service (gunicorn + Celery with beat +
   ``revocation_heartbeat``, PostgreSQL, the machine's Redis under a prefix of this run) and one
   Node agent (sdk/typescript/test/live_agent.ts: a Guard with its reporter). Latency = the
   moment the agent's guard first refuses (its ``Date.now()``) minus the moment
   ``POST /api/v1/killswitch`` was sent, returned (negative: the kill is published before the
   answer is written), and the stream entry's XADD (Redis to the TypeScript guard alone); same
   machine, same clock; each kill is lifted. Target as for Python: p99 <= 100 ms.
3. **Conformance.** Vector files, vectors and passes of the TypeScript runner.

    .venv/bin/python bench/bench_sdk_check.py [--quick] [--only check|propagation]

Needs ``cd sdk/typescript && npm ci && npm run build`` first. Writes bench/results/sdk_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from agent_passport.errors import ScopeDenied  # noqa: E402
from agent_passport.guard import Guard  # noqa: E402
from agent_passport.protocol import TOKEN_TYPE, RevocationChannel  # noqa: E402
from agent_passport.rules import Policy  # noqa: E402
from agent_passport.tokens import public_key_to_jwk  # noqa: E402
from agent_passport.watcher import RevocationWatcher  # noqa: E402
from bench.bench_killswitch import CHECK_QUERIES, ListReporter, _measure  # noqa: E402
from bench.harness.machine import busy_cores, machine_basics  # noqa: E402
from bench.harness.report import write_json  # noqa: E402
from bench.harness.servers import (  # noqa: E402
    Api,
    PrivateRedis,
    Service,
    delete_keys,
    manage,
    prepare_database,
    setup_registry,
    stop_all_children,
)
from bench.harness.stats import percentile  # noqa: E402
from bench.harness.workload import policy_rules  # noqa: E402
from registry.devserver import free_port  # noqa: E402

SDK_DIR = BASE_DIR / "sdk" / "typescript"
RESULTS = BASE_DIR / "bench" / "results" / "sdk_check.json"
ISSUER = "https://bench.invalid"
PREFIX = "aps-bench-ts"
DB_NAME = "aps_bench_sdk_ts"
TARGET_P99_MS = 100.0
# Guard refusal (or allowance again, for a lift) measured from: the kill request being sent,
# its answer, and the stream entry's XADD (the id's time: Redis -> TypeScript guard alone).
TIMINGS = ("kill_from_sent_ms", "kill_from_return_ms", "kill_after_xadd_ms", "lift_from_return_ms")


# --- 1. check throughput -------------------------------------------------------------------


def signed_passport(
    scope: list[str] | None = None,
    *,
    jurisdiction: tuple[str, ...] = ("EU", "US"),
    prefix: str = PREFIX,
) -> tuple[str, dict[str, Any]]:
    """A passport (the 50-rule policy unless ``scope`` is given) signed by a key of this run,
    and the JWKS that verifies it."""
    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "bench-agent",
        "aud": "agent-passport",
        "jti": "bench-passport",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "scope": policy_rules() if scope is None else scope,
        "jurisdiction": list(jurisdiction),
        "rev": RevocationChannel(prefix).as_claim(),
    }
    headers = {"typ": TOKEN_TYPE, "kid": "bench"}
    token = jwt.encode(claims, key, algorithm="EdDSA", headers=headers)
    return token, {"keys": [public_key_to_jwk("bench", key.public_key())]}


def stamp_forever(client: redis.Redis, stop: threading.Event, prefix: str = PREFIX) -> None:
    """The registry's heartbeat stamp (epoch 0, Redis TIME), every 0.2 s."""
    channel = RevocationChannel(prefix)
    client.hset(channel.snapshot_key, mapping={"_epoch": 0, "_generation": "bench"})
    while not stop.is_set():
        seconds, micros = client.time()
        client.hset(
            channel.heartbeat_key, mapping={"epoch": 0, "at": seconds * 1000 + micros // 1000}
        )
        stop.wait(0.2)


def python_checks(token: str, jwks: dict, redis_url: str, cpu: int, quick: bool) -> dict:
    """Run on a thread pinned to ``cpu`` (its watcher thread inherits the pin)."""
    os.sched_setaffinity(0, {cpu})
    from agent_passport.tokens import keys_from_jwks

    watcher = RevocationWatcher(redis_url, channel=RevocationChannel(PREFIX)).start()
    watcher.wait_until_ready(15)
    guard = Guard(token, keys=keys_from_jwks(jwks), issuer=ISSUER, watcher=watcher)
    guard.reporter = ListReporter()
    queries = CHECK_QUERIES

    def check(i: int) -> None:
        action, resource, region = queries[i % len(queries)]
        try:
            guard.check(action, resource, region)
        except ScopeDenied:
            pass

    def swap_reporter() -> None:
        guard.reporter = ListReporter()

    def naive(i: int) -> None:
        action, resource, region = queries[i % len(queries)]
        Policy.from_claims(guard.claims).decide(action, resource, region)

    seconds, samples = (1.0, 50_000) if quick else (4.0, 300_000)
    for i in range(len(queries)):
        check(i)  # warm the decision cache, as the TypeScript side does
    rows = {
        "guard_with_reporter": _measure(
            check, sample_calls=samples, batch=1000, seconds=seconds, between=swap_reporter
        ),
        "naive_policy_per_check": _measure(
            naive, sample_calls=max(1000, samples // 100), batch=100, seconds=seconds / 2
        ),
    }
    watcher.stop()
    return {"python": sys.version.split()[0], "rules": len(guard.policy.rules), "rows": rows}


def typescript_checks(token: str, jwks: dict, redis_url: str, cpu: int, quick: bool) -> dict:
    config = {
        "token": token,
        "jwks": jwks,
        "issuer": ISSUER,
        "redis_url": redis_url,
        "prefix": PREFIX,
        "queries": CHECK_QUERIES,
        "seconds": 1.0 if quick else 4.0,
        "sample_calls": 50_000 if quick else 300_000,
    }
    command = ["node", str(SDK_DIR / "dist" / "bench" / "check.js")]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(command, input=json.dumps(config), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the TypeScript bench failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def run_checks(workdir: Path, quick: bool) -> dict[str, Any]:
    server = PrivateRedis(workdir)
    server.start()
    client = redis.Redis.from_url(server.url)
    stop = threading.Event()
    stamper = threading.Thread(target=stamp_forever, args=(client, stop), daemon=True)
    stamper.start()
    cpu = max(os.sched_getaffinity(0))
    token, jwks = signed_passport()
    try:
        results: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: results.update(python=python_checks(token, jwks, server.url, cpu, quick))
        )
        worker.start()
        worker.join()
        results["typescript"] = typescript_checks(token, jwks, server.url, cpu, quick)
    finally:
        stop.set()
        stamper.join(2)
        server.stop()
    results["cpu"] = cpu
    results["check_mix"] = len(CHECK_QUERIES)
    return results


# --- 2. propagation -------------------------------------------------------------------------


def run_propagation(workdir: Path, rounds: int) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    db = prepare_database(admin_url, DB_NAME, True, workdir)
    base_url = f"http://127.0.0.1:{free_port()}"
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"{PREFIX}-{os.getpid()}"
    env = {
        **os.environ,
        "DATABASE_URL": db.url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CACHE_KEY_PREFIX": f"{prefix}-cache",
        "REVOCATION_REDIS_PREFIX": prefix,
        "PASSPORT_ISSUER": base_url,
        "THROTTLE_USER": "100000000/second",
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
    }
    api = Api(base_url, setup_registry(env))
    manage(env, "reconcile_revocations")
    service = Service(env, base_url).start(workdir, "ts")
    agent_process = None
    try:
        service.wait_ready()
        agent = api.post("/api/v1/agents", {"name": "ts-bench", "fleet": "ts"}, 201)
        body = {"agent": agent["id"], "scope": ["tool:python:run"], "jurisdiction": ["GLOBAL"]}
        token = api.post("/api/v1/passports", body, 201)["token"]
        agent_process = subprocess.Popen(
            ["node", str(SDK_DIR / "dist" / "test" / "live_agent.js")],
            env={
                **os.environ,
                "APS_TOKEN": token,
                "APS_REGISTRY": base_url,
                "APS_REDIS": redis_url,
                "APS_ACTION": "tool:python:run",
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its warnings ("passport … stopped") on every kill
            text=True,
        )

        def next_line(expected: str) -> float:
            outcome, at_ms, _epoch = agent_process.stdout.readline().split()
            if outcome != expected:
                raise RuntimeError(f"the TypeScript agent said {outcome}, not {expected}")
            return float(at_ms)

        next_line("allowed")
        stream = redis.Redis.from_url(redis_url, decode_responses=True)
        stream_key = RevocationChannel(prefix).stream_key
        timings: dict[str, list[float]] = {name: [] for name in TIMINGS}
        for _ in range(rounds):
            target = {"target": {"agent": agent["id"]}, "reason": "bench"}
            sent = time.time() * 1000
            killed = api.post("/api/v1/killswitch", target, 201)
            returned = time.time() * 1000
            refused = next_line("PassportRevoked")
            xadd = float(stream.xrevrange(stream_key, count=1)[0][0].split("-")[0])
            timings["kill_from_return_ms"].append(refused - returned)
            timings["kill_from_sent_ms"].append(refused - sent)
            timings["kill_after_xadd_ms"].append(refused - xadd)
            api.post(f"/api/v1/killswitch/{killed['id']}/lift", {}, 200)
            returned = time.time() * 1000
            timings["lift_from_return_ms"].append(next_line("allowed") - returned)
        agent_process.stdin.close()
        agent_process.wait(30)
    finally:
        if agent_process is not None and agent_process.poll() is None:
            agent_process.kill()
        for process in service.processes.values():
            process.terminate()
        stop_all_children()
        delete_keys(redis_url, [f"{prefix}*"])  # the machine's Redis keeps nothing of the run
    rows = {name: stats(values) for name, values in timings.items()}
    return {
        "database": db.engine,
        "rounds": rounds,
        **rows,
        "target_p99_ms": TARGET_P99_MS,
        "pass": rows["kill_from_sent_ms"]["p99"] <= TARGET_P99_MS,
    }


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "min": round(ordered[0], 2),
        "p50": round(percentile(ordered, 50), 2),
        "p99": round(percentile(ordered, 99), 2),
        "max": round(ordered[-1], 2),
    }


# --- 3. conformance -------------------------------------------------------------------------


def run_conformance() -> list[dict[str, Any]]:
    script = (
        "import('./dist/test/conformance.js').then(m => m.runAll()).then(results => console.log("
        "JSON.stringify(results.map(r => ({file: r.file, kind: r.kind, vectors: r.vectors, "
        "passed: r.passed})))))"
    )
    done = subprocess.run(
        ["node", "-e", script], cwd=SDK_DIR, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


# --- report ---------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    checks = report.get("checks")
    if checks:
        print(f"\ncheck throughput, one core (cpu {checks['cpu']}), 50-rule passport, 20-check mix")
        print(f"{'SDK':<12}{'path':<26}{'checks/s':>12}{'p50 µs':>10}{'p99 µs':>10}")
        for sdk in ("python", "typescript"):
            for path, row in checks[sdk]["rows"].items():
                line = f"{sdk:<12}{path:<26}{row['per_s']:>12,.0f}"
                print(f"{line}{row['p50_us']:>10.2f}{row['p99_us']:>10.2f}")
    propagation = report.get("propagation")
    if propagation:
        print(f"\npropagation to a TypeScript guard ({propagation['rounds']} kills, ms)")
        for name in TIMINGS:
            row = propagation[name]
            print(f"  {name:<22} p50 {row['p50']:>7}  p99 {row['p99']:>7}  max {row['max']:>7}")
        verdict = "PASS" if propagation["pass"] else "FAIL"
        print(f"  target p99 <= {TARGET_P99_MS} ms (from the request being sent): {verdict}")
    conformance = report.get("conformance")
    if conformance is not None:
        vectors = sum(r["vectors"] for r in conformance)
        passed = sum(r["passed"] for r in conformance)
        print(f"\nconformance (TypeScript): {len(conformance)} files, {passed}/{vectors} passed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["check", "propagation"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="aps-bench-ts-"))
    report: dict[str, Any] = {"machine": machine_basics(), "busy_cores_before": busy_cores(1.0)}
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    report["machine"]["node"] = node.stdout.strip()
    try:
        if args.only in (None, "check"):
            report["checks"] = run_checks(workdir, args.quick)
        if args.only in (None, "propagation"):
            report["propagation"] = run_propagation(workdir, 10 if args.quick else 50)
        report["conformance"] = run_conformance()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["busy_cores_after"] = busy_cores(1.0)
    print_report(report)
    write_json(report, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
